"""Pins what producers and consumers on different releases rely on: task names, JSON-only
serialisation, result expiry, the beat schedule and the delivery options of the cycle's tasks.
Also that the domain package ``pacing`` never imports Celery."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from pacing.errors import HistoryUnavailable
from pacing.settings import load_settings

REPOSITORY = Path(__file__).resolve().parents[2]

TASK_NAMES = {
    "pacing.refresh",
    "pacing.pace_shard",
    "pacing.publish_cycle",
    "pacing.record_cycle",
    "pacing.record_leadership",
    "pacing.purge_history",
    "pacing.presolve_operating_points",
    "pacing.repair_lost_audits",
}


@pytest.fixture(scope="module")
def app() -> Any:
    from tasks import app as celery_app

    return celery_app


def test_the_task_names_are_pinned(app: Any) -> None:
    # given the app with the tasks module imported
    # when (pytest-celery adds shared test tasks of its own; they are not ours)
    ours = {name for name, task in app.tasks.items() if task.__module__.startswith("tasks.")}

    # then
    assert ours == TASK_NAMES
    assert {name for name in app.tasks if name.startswith("pacing.")} == TASK_NAMES


def test_each_task_function_carries_its_pinned_name() -> None:
    # given
    from tasks import cycle

    # when
    names = {
        cycle.refresh.name,
        cycle.pace_shard.name,
        cycle.publish_cycle.name,
        cycle.record_cycle.name,
        cycle.record_leadership.name,
        cycle.purge_history.name,
        cycle.repair_lost_audits.name,
        cycle.presolve_operating_points.name,
    }

    # then
    assert names == TASK_NAMES


def test_serialisation_is_json_only(app: Any) -> None:
    # given / when
    conf = app.conf

    # then
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"


def test_results_expire_in_minutes_not_a_day(app: Any) -> None:
    # given
    from tasks.services import settings

    # when
    expires = app.conf.result_expires
    seconds = expires.total_seconds() if isinstance(expires, timedelta) else float(expires)

    # then results outlive a cycle with a wide margin, but not Celery's default day
    assert settings.cycle_deadline * 10 <= seconds <= 3600


def test_the_beat_schedule_ticks_refresh_every_period_with_the_node_name(app: Any) -> None:
    # given
    from tasks.services import settings

    # when
    entry = app.conf.beat_schedule["pacing-refresh"]

    # then
    assert entry["task"] == "pacing.refresh"
    assert entry["schedule"] == timedelta(seconds=settings.refresh_period_seconds)
    assert entry["options"]["expires"] == settings.refresh_period_seconds
    assert entry["args"] == (settings.node_name,)
    assert entry["args"] == ("test-node",)  # the suite's PACING_NODE_NAME


def test_the_beat_schedule_follows_the_settings() -> None:
    # given
    from tasks.app import celery_config

    settings = load_settings({"node_name": "beat-7", "refresh_period_seconds": 0.5})

    # when
    config = celery_config(settings)

    # then
    entry = config["beat_schedule"]["pacing-refresh"]
    assert entry["schedule"] == timedelta(seconds=0.5)
    assert entry["options"]["expires"] == 0.5
    assert entry["args"] == ("beat-7",)
    assert config["beat_schedule"]["pacing-purge-history"]["task"] == "pacing.purge_history"
    assert config["beat_schedule"]["pacing-purge-history"]["schedule"] == timedelta(days=1)
    assert config["beat_schedule_filename"].endswith("celerybeat-schedule-beat-7")


def test_pace_shard_is_acknowledged_late_and_rejected_on_worker_loss(app: Any) -> None:
    # given / when
    task = app.tasks["pacing.pace_shard"]

    # then a chord header must keep its result and survive a worker's death
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert not task.ignore_result


def test_record_cycle_retries_only_on_transient_history_errors(app: Any) -> None:
    # given / when
    task = app.tasks["pacing.record_cycle"]

    # then
    assert task.acks_late is True
    assert HistoryUnavailable in task.autoretry_for
    assert set(task.autoretry_for) <= {HistoryUnavailable, redis.exceptions.ConnectionError}
    assert task.ignore_result is True


def test_refresh_and_publish_ignore_their_results(app: Any) -> None:
    # given / when / then
    assert app.tasks["pacing.refresh"].ignore_result is True
    assert app.tasks["pacing.publish_cycle"].ignore_result is True


def test_celery_does_not_hijack_the_root_logger(app: Any) -> None:
    # given / when / then
    assert app.conf.worker_hijack_root_logger is False


def test_the_pacing_package_never_imports_celery() -> None:
    # given a fresh interpreter
    code = (
        "import pacing.cli, pacing.cycle.in_process, pacing.services; import sys; "
        "assert 'celery' not in sys.modules, 'celery was imported'"
    )

    # when
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # then
    assert completed.returncode == 0, completed.stderr
