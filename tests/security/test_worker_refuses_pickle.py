"""A real ``celery worker`` process refuses a pickled message instead of unpickling it.

Unpickling runs code chosen by whoever can write to the broker. The message below creates a
canary file when unpickled; the worker must consume it, log the refusal and leave no file.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Producer

from pacing.cli.localstack import LocalStack
from tests.support import leased_redis_db, redis_url, start_worker_process, wait_for

pytestmark = pytest.mark.integration

QUEUE = "pacing"  # tasks.app: task_default_queue
REFUSAL = b"Refusing to deserialize untrusted content of type pickle"  # kombu's ContentDisallowed


class CreatesFile:
    """Unpickling this object opens (creates) ``path``: proof that the pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


UNSAFE_APP = """
# the service's app with the protection removed: the control experiment of this test
from tasks import app

app.conf.accept_content = ["json", "pickle"]
"""


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis database of this test alone: the suite's in-process worker must not take the
    pickled message off the shared queue before the worker under test sees it."""
    with leased_redis_db() as db:
        yield redis_url(db)


def start_worker(tmp_path: Path, app_module: str, broker_url: str) -> tuple[LocalStack, Path]:
    """A worker of the run's settings on ``broker_url``, and its log."""
    (tmp_path / "unsafe_tasks.py").write_text(UNSAFE_APP)
    stack, process = start_worker_process(
        tmp_path,
        app_module=app_module,
        broker_url=broker_url,
        name="pickle-test",
        pool=["--pool=solo"],
        # Celery itself refuses to accept pickle as root; the control experiment insists
        env={"C_FORCE_ROOT": "1"},
    )
    return stack, process.log_path


@pytest.fixture
def worker(tmp_path: Path, broker_url: str) -> Iterator[Path]:
    stack, log = start_worker(tmp_path, "tasks", broker_url)
    try:
        yield log
    finally:
        stack.stop()


def put_pickled_message(canary: Path, broker_url: str) -> None:
    """A pickled pacing.refresh message that creates ``canary`` when it is unpickled."""
    with Connection(broker_url) as connection:
        Producer(connection).publish(
            pickle.dumps(CreatesFile(canary)),
            routing_key=QUEUE,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={
                "lang": "py",
                "task": "pacing.refresh",
                "id": str(uuid.uuid4()),
                "argsrepr": "()",
                "kwargsrepr": "{}",
            },
        )


def test_a_pickled_message_is_rejected_not_executed(
    worker: Path, tmp_path: Path, broker_url: str
) -> None:
    # given
    canary = tmp_path / "pickle-was-executed"
    client = redis.Redis.from_url(broker_url)

    # when: a pickled message is put on the worker's queue
    put_pickled_message(canary, broker_url)

    # then: the worker takes the message off the queue and refuses to deserialize it
    wait_for(
        lambda: REFUSAL in worker.read_bytes() and client.llen(QUEUE) == 0,
        timeout=60,
        interval=0.2,
        message="the worker did not consume and refuse the pickled message",
    )
    log = worker.read_bytes()
    assert not canary.exists(), "the worker unpickled the message"
    assert b"pacing.refresh[" not in log, "the task ran"
    client.close()


def test_control_a_worker_that_accepts_pickle_would_execute_it(
    tmp_path: Path, broker_url: str
) -> None:
    # given: the same worker with "pickle" added to accept_content
    stack, _ = start_worker(tmp_path, "unsafe_tasks", broker_url)
    canary = tmp_path / "pickle-was-executed"
    try:
        # when
        put_pickled_message(canary, broker_url)

        # then: the canary appears, so the test above would fail without the protection
        wait_for(canary.exists, timeout=60, interval=0.2, message="the pickle was not executed")
    finally:
        stack.stop()
