"""Flower against a running node: ``celery -A tasks flower`` as an operator starts it.

A worker, a beat and Flower run as real processes on a private Redis database, with the
simulator on loopback and a SQLite history; everything is checked through Flower's HTTP API.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.flower_stack import (
    CYCLE_TASKS,
    FLOWER_PASSWORD,
    NODE,
    SIMULATOR_TOKEN,
    FlowerStack,
    running_flower_stack,
)
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration

#: What Flower must show as each cycle task's arguments: the argsrepr summaries of tasks.cycle.
ARGUMENT_SUMMARIES = {
    # beat sends its schedule entry's args after a JSON round trip, hence a list
    "pacing.refresh": (re.compile(rf"\['{NODE}'\]"), re.compile(r"\{\}")),
    "pacing.pace_shard": (
        re.compile(r"\(seq=\d+, shard=\d+, targets=\d+\)"),
        re.compile(r"\{'epoch': \d+\}"),
    ),
    "pacing.publish_cycle": (
        re.compile(r"\(seq=\d+, epoch=\d+, shards=\d+\)"),
        re.compile(r"\{\}"),
    ),
    "pacing.record_cycle": (re.compile(r"\(\d+,\)"), re.compile(r"\{\}")),
}
MAX_SUMMARY_CHARACTERS = 80


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerStack]:
    with running_flower_stack(tmp_path_factory.mktemp("flower")) as running:
        running.wait_for_cycle_tasks()
        yield running


def test_flower_lists_every_task_of_a_cycle_as_succeeded_with_runtime(
    flower: FlowerStack,
) -> None:
    # when: the cycles of the running node are listed through the API, with the credentials
    tasks = flower.tasks(state="SUCCESS")

    # then: each task of a cycle is there by name, ran on the node's worker and has a runtime
    for name in CYCLE_TASKS:
        runs = [task for task in tasks.values() if task["name"] == name]
        assert runs, f"{name} is not listed with state SUCCESS"
        assert all(task["state"] == "SUCCESS" for task in runs)
        assert all(task["worker"].startswith(f"{NODE}@") for task in runs)
        assert all(task["runtime"] is not None and task["runtime"] >= 0 for task in runs)
    # ... and the three shards of a cycle all succeeded (Flower may have joined in the middle of
    # the first cycle it saw, so wait for a whole one)
    wait_for(
        lambda: {0, 1, 2} in succeeded_shards_per_cycle(flower).values(),
        timeout=60,
        interval=0.5,
        message="no cycle had all three shards listed with state SUCCESS",
    )


def succeeded_shards_per_cycle(flower: FlowerStack) -> dict[int, set[int]]:
    shards: dict[int, set[int]] = {}
    for task in flower.tasks(state="SUCCESS", taskname="pacing.pace_shard").values():
        found = re.fullmatch(r"\(seq=(\d+), shard=(\d+), targets=\d+\)", task["args"])
        assert found is not None, task["args"]
        shards.setdefault(int(found[1]), set()).add(int(found[2]))
    return shards


def test_flower_shows_short_secret_free_argument_summaries(flower: FlowerStack) -> None:
    # when
    tasks = [t for t in flower.tasks().values() if t["name"] in ARGUMENT_SUMMARIES]

    # then: every cycle task shows the summary of tasks.cycle, never a target list or a token
    assert {t["name"] for t in tasks} == set(ARGUMENT_SUMMARIES)
    for task in tasks:
        args_pattern, kwargs_pattern = ARGUMENT_SUMMARIES[task["name"]]
        assert args_pattern.fullmatch(task["args"]), (task["name"], task["args"])
        assert kwargs_pattern.fullmatch(task["kwargs"]), (task["name"], task["kwargs"])
        shown = task["args"] + task["kwargs"]
        assert len(shown) <= MAX_SUMMARY_CHARACTERS
        assert SIMULATOR_TOKEN not in shown
        assert FLOWER_PASSWORD not in shown
    # ... and a shard's result (its rows) is cut short too
    results = [t["result"] for t in tasks if t["name"] == "pacing.pace_shard" and t["result"]]
    assert results
    assert all(len(result) <= 2 * MAX_SUMMARY_CHARACTERS for result in results)


def test_flower_api_answers_401_without_or_with_wrong_credentials(flower: FlowerStack) -> None:
    for path in ("/api/tasks", "/api/workers", "/api/task/types", "/tasks"):
        # when: no credentials
        anonymous = requests.get(flower.base_url + path, timeout=LOOPBACK_TIMEOUT_SECONDS)
        # ... or a wrong password
        wrong = requests.get(
            flower.base_url + path, auth=(flower.auth[0], "wrong"), timeout=LOOPBACK_TIMEOUT_SECONDS
        )

        # then
        assert anonymous.status_code == 401, path
        assert wrong.status_code == 401, path
    # ... and the page asks a browser for basic auth
    page = requests.get(flower.base_url + "/tasks", timeout=LOOPBACK_TIMEOUT_SECONDS)
    assert page.headers["WWW-Authenticate"].startswith("Basic")
    # ... while the credentials from PACING_FLOWER_BASIC_AUTH open the same pages
    for path in ("/api/workers", "/tasks"):
        assert (
            requests.get(
                flower.base_url + path, auth=flower.auth, timeout=LOOPBACK_TIMEOUT_SECONDS
            ).status_code
            == 200
        )


def test_flower_refuses_to_start_without_credentials_outside_development(
    tmp_path: Path,
) -> None:
    # given: production settings that are otherwise complete, and no Flower credentials at all
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "PACING_FLOWER"))}
    env.update(
        {
            "PACING_ENVIRONMENT": "production",
            "PACING_ENGAGEMENT_URL": "https://engagement.example.com/api",
            "PACING_ENGAGEMENT_TOKEN": "production-token",
            "PACING_STAT_SERVER_PRIMARY_URL": "https://stat-a.example.com",
            "PACING_STAT_SERVER_BACKUP_URL": "https://stat-b.example.com",
            "PACING_DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
        }
    )

    # when
    finished = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={free_port()}"],
        cwd=tmp_path,  # any directory: the config comes with the package
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # then: it stops with one sentence that says how to fix it
    assert finished.returncode != 0
    message = finished.stderr.strip().splitlines()[-1]
    assert message == (
        "Error: Flower needs credentials outside development mode; set "
        "PACING_FLOWER_BASIC_AUTH=user:password (or pass --basic-auth to Flower)."
    )
    assert "Visit me at" not in finished.stderr + finished.stdout
