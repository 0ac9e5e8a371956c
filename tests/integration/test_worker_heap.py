"""A ``celery worker``'s pool processes run with the collector settings of pacing.runtime, and a
worker a test runs inside its own process leaves that process's collector alone."""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pacing.localstack import LocalStack
from pacing.runtime import GC_THRESHOLDS
from pacing.settings import load_settings
from tests.support import leased_redis_db, redis_url, wait_for

pytestmark = pytest.mark.integration

PROBE_APP = """
# the service's app and one more task, which reports the collector state of the process it runs in
import gc
import os

from tasks import app


@app.task(name="probe.collector")
def collector() -> dict:
    return {
        "pid": os.getpid(),
        "thresholds": list(gc.get_threshold()),
        "frozen": gc.get_freeze_count(),
    }
"""


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Celery, int]]:
    """A prefork ``celery worker`` of the service's app with the probe task, on a Redis database
    of this test alone, and a client of it."""
    with leased_redis_db() as db:
        url = redis_url(db)
        settings = load_settings({"broker_url": url})
        stack = LocalStack(settings=settings, workdir=tmp_path)
        (tmp_path / "probe_tasks.py").write_text(PROBE_APP)
        env = {
            **os.environ,
            "PACING_NODE_NAME": "heap-test",
            "PACING_BROKER_URL": url,
            "PACING_RESULT_BACKEND": url,  # where the client below reads the probe's answer
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path.cwd())]),
        }
        process = stack.spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "probe_tasks",
                "worker",
                "-n",
                f"heap-test-{uuid.uuid4().hex[:6]}@%h",
                "--pool=prefork",
                "--concurrency=1",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            env,
        )
        client = Celery("probe", broker=url, backend=url)
        client.conf.update(task_serializer="json", accept_content=["json"])
        try:
            wait_for(
                lambda: b"ready." in process.log_path.read_bytes(),
                timeout=120,
                interval=0.5,
                message="the worker did not start",
            )
            yield client, process.popen.pid
        finally:
            client.close()
            stack.stop()


def test_a_worker_pool_process_collects_rarely_and_skips_its_start_up_heap(
    worker: tuple[Celery, int],
) -> None:
    # given
    client, worker_pid = worker

    # when
    state: dict[str, Any] = client.send_task("probe.collector", queue="pacing").get(timeout=60)

    # then: the task ran in a pool process, whose collector has the service's settings and
    # leaves alone the objects it had when it started
    assert state["pid"] != worker_pid
    assert tuple(state["thresholds"]) == GC_THRESHOLDS
    assert state["frozen"] > 10_000


def test_the_in_process_test_worker_leaves_this_process_collector_alone(
    celery_session_worker: Any,
) -> None:
    # a frozen test process would never collect fixtures that became cyclic garbage
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() != GC_THRESHOLDS
