"""A worker survives the restore and the acknowledgement that follow a broker connection loss.

On a connection error Celery 5.7's consumer collects the broker connection (its transport is
detached), then closes it. When the loss was read on another socket (the remote-control mailbox's
pub/sub connection) while the consumer's BRPOP was in flight, the first close of the task channel
stops at that BRPOP; the second one, from ``close()``, restores the channel's unacknowledged
messages through the detached transport, and a task that ends after the loss is acknowledged
through that dead channel. kombu 5.7 raises AttributeError on both, which stops the worker;
``tasks.app`` makes them connection errors, which Celery handles (tasks/app.py,
``_closed_channels_raise_connection_errors``).

The test builds exactly that order instead of restarting Redis and hoping: a task holds its
message, the consumer's BRPOP is blocked in Redis, the pub/sub connection is killed, Redis is
stopped while the consumer closes, started again, and only then the task ends. The control
experiment runs the same steps against a worker with kombu's own code and watches it die.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from pacing.localstack import LocalStack, Process
from tests.reliability.harness import OwnRedis
from tests.support import start_worker_process, wait_for

pytestmark = pytest.mark.integration

QUEUE = "pacing"  # tasks.app: task_default_queue
WAIT_SECONDS = 60.0  # each step is one event of a local worker; generous for a busy machine
STOPPED = b"Unrecoverable error"  # celery.worker: the worker stops (a warm shutdown follows)
HELD_TASK_SUCCEEDED = re.compile(rb"probe\.finish_after_loss\[[^\]]+\] succeeded")

PROBE_APP = """
# the service's app (its settings and tasks.app's conversion), and tasks the test drives by files
import os
import signal
import time
from pathlib import Path

from tasks import app

GATES = Path(os.environ["PROBE_GATES"])
# kombu re-sends the consumer's BRPOP every polling_interval; a long one keeps it in flight while
# the test works, as it is in flight whenever a connection loss is read on another socket first
app.conf.broker_transport_options = {**app.conf.broker_transport_options, "polling_interval": 60}


@app.task(name="probe.finish_after_loss", acks_late=True)
def finish_after_loss() -> None:
    # The consumer cancels (SIGTERMs) running acks_late tasks on a connection loss; ignoring it
    # stands for a task that ends in the instant between the loss and the cancel.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        (GATES / "started").touch()
        while not (GATES / "release").exists():
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.task(name="probe.canary")
def canary(name: str) -> None:
    (GATES / name).touch()
"""

UNPATCHED_APP = (
    PROBE_APP
    + """
# the control experiment: kombu's own _connparams, without the conversion of tasks.app
from kombu.transport import redis as kombu_redis

kombu_redis.Channel._connparams = kombu_redis.Channel._connparams.__wrapped__
"""
)


@dataclass
class Scene:
    """A ``celery worker`` of a probe app on a redis-server of the test's own, a client of that
    Redis, and the directory of files through which the test drives the probe tasks."""

    redis_server: OwnRedis
    client: redis.Redis
    sender: Celery
    worker: Process
    gates: Path

    def log(self) -> bytes:
        return self.worker.log_path.read_bytes()

    def wait_for_log(self, condition: Callable[[bytes], bool], message: str) -> None:
        """Wait until ``condition`` holds for the worker's log; fail at once if the worker stopped,
        with the error that stopped it."""
        wait_for(
            lambda: condition(log := self.log()) or STOPPED in log,
            timeout=WAIT_SECONDS,
            message=message,
        )
        log = self.log()
        assert STOPPED not in log, log[log.index(STOPPED) :].splitlines()[0].decode()

    def send(self, task: str, *args: str) -> None:
        self.sender.send_task(task, args=args, queue=QUEUE)


@contextlib.contextmanager
def running_scene(tmp_path: Path, app_source: str) -> Iterator[Scene]:
    """A prefork worker with one process of the app ``app_source`` on a new redis-server."""
    gates = tmp_path / "gates"
    gates.mkdir()
    (tmp_path / "probe_tasks.py").write_text(app_source)
    redis_server = OwnRedis(tmp_path)
    stack: LocalStack | None = None
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    sender = Celery("probe-sender", broker=redis_server.url)
    sender.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    try:
        stack, worker = start_worker_process(
            tmp_path,
            app_module="probe_tasks",
            broker_url=redis_server.url,
            name="connection-loss",
            pool=["--pool=prefork", "--concurrency=1"],
            env={"PROBE_GATES": str(gates)},
        )
        yield Scene(redis_server, client, sender, worker, gates)
    finally:
        (gates / "release").touch()  # lets a warm shutdown end the held task
        sender.close()
        client.close()
        if stack is not None:
            stack.stop()
        redis_server.stop()


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    with running_scene(tmp_path, PROBE_APP) as running:
        yield running


def lose_the_connection_while_a_task_holds_a_message(scene: Scene) -> None:
    """The order of the race: a message unacknowledged, the BRPOP in flight, the loss read on the
    pub/sub socket, Redis gone while the consumer closes the connection."""
    scene.send("probe.finish_after_loss")
    wait_for(
        (scene.gates / "started").exists,
        timeout=WAIT_SECONDS,
        message="the task did not start",
    )
    wait_for(
        lambda: any(c["cmd"] == "brpop" and "b" in c["flags"] for c in scene.client.client_list()),
        timeout=WAIT_SECONDS,
        message="the consumer's BRPOP is not blocked in Redis",
    )
    scene.client.client_kill_filter(_type="pubsub")
    scene.wait_for_log(
        lambda log: b"Connection to broker lost" in log,
        "the worker did not see the connection loss",
    )
    scene.redis_server.stop()


def test_a_task_acknowledged_after_the_connection_was_lost_leaves_the_worker_running(
    scene: Scene,
) -> None:
    # given: the connection lost while a task held its message, Redis gone during the close
    lose_the_connection_while_a_task_holds_a_message(scene)
    scene.wait_for_log(lambda log: b"Cannot connect to" in log, "the worker did not retry")

    # when: Redis is back, the worker reconnects, and only then the task ends and is acknowledged
    scene.redis_server.start()
    scene.wait_for_log(
        lambda log: log.count(b"Connected to redis") >= 2, "the worker did not reconnect"
    )
    (scene.gates / "release").touch()
    scene.wait_for_log(
        lambda log: HELD_TASK_SUCCEEDED.search(log) is not None, "the held task did not end"
    )

    # then: the worker outlived the restore and the acknowledgement on the dead connection, and
    # takes new tasks
    canary = f"canary-{uuid.uuid4().hex[:8]}"
    scene.send("probe.canary", canary)
    wait_for(
        (scene.gates / canary).exists,
        timeout=WAIT_SECONDS,
        message="the worker took no task after the connection loss",
    )
    assert scene.worker.popen.poll() is None
    log = scene.log()
    assert b"Restoring 1 unacknowledged message(s)" in log, "no restore at the close: no race"
    assert b"Couldn't ack" in log, "the acknowledgement did not meet the dead connection: no race"
    assert STOPPED not in log


def test_control_a_worker_without_the_conversion_dies_of_the_same_order(tmp_path: Path) -> None:
    # given: the same worker with kombu's own _connparams
    with running_scene(tmp_path, UNPATCHED_APP) as scene:
        # when
        lose_the_connection_while_a_task_holds_a_message(scene)

        # then: it stops with an unrecoverable error, and exits once its running task has ended
        # (a warm shutdown), so the test above would fail without the conversion
        wait_for(
            lambda: STOPPED in scene.log(),
            timeout=WAIT_SECONDS,
            message="the worker without the conversion survived",
        )
        (scene.gates / "release").touch()
        wait_for(
            lambda: scene.worker.popen.poll() is not None,
            timeout=WAIT_SECONDS,
            message="the worker without the conversion did not exit",
        )
        assert b"Unrecoverable error: AttributeError" in scene.log()
