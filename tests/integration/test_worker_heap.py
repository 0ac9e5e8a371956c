"""A ``celery worker``'s pool processes run with the collector settings of pacing.runtime, and a
worker a test runs inside its own process leaves that process's collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pacing.runtime import GC_THRESHOLDS
from tests.support import leased_redis_db, redis_url, start_worker_process

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
        (tmp_path / "probe_tasks.py").write_text(PROBE_APP)
        stack, process = start_worker_process(
            tmp_path,
            app_module="probe_tasks",
            broker_url=url,
            name="heap-test",
            pool=["--pool=prefork", "--concurrency=1"],
            # where the client below reads the probe's answer
            env={"PACING_RESULT_BACKEND": url},
        )
        client = Celery("probe", broker=url, backend=url)
        client.conf.update(task_serializer="json", accept_content=["json"])
        try:
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
