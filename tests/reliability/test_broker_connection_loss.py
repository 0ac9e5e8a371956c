"""A worker survives what follows a broker connection loss: the restore, the acknowledgement, and
the registration of its pool with the new connection's event loop.

The restore and the acknowledgement: on a connection error Celery 5.7's consumer collects the
broker connection (its transport is detached), then closes it. When the loss was read on another
socket (the remote-control mailbox's pub/sub connection) while the consumer's BRPOP was in flight,
the first close of the task channel stops at that BRPOP; the second one, from ``close()``, restores
the channel's unacknowledged messages through the detached transport, and a task that ends after
the loss is acknowledged through that dead channel. kombu 5.7 raises AttributeError on both, which
stops the worker; ``tasks.patches`` makes them connection errors, which Celery handles
(``_closed_channels_raise_connection_errors``).

The registration: a pool process whose exit the worker has seen on its sentinel but which cannot
be reaped yet stays in the pool, unwatched, until the next reaping. A consumer that reconnects in
between watches every pool process again and hands that process's ``None`` sentinel to the event
loop, where kombu 5.7 raises ValueError('file descriptor is None'), which Celery does not catch;
``tasks.patches`` makes it the error Celery skips (``_untracked_pool_processes_are_skipped``).

The tests build exactly those orders instead of restarting Redis and hoping. The first: a task
holds its message, the consumer's BRPOP is blocked in Redis, the pub/sub connection is killed,
Redis is stopped while the consumer closes, started again, and only then the task ends. The
second: a pool process closes its sentinel and lives on (as a process does between closing its
files and becoming reapable), the worker sees it and stops watching it, and Redis restarts. The
control experiments run the same steps against a worker without the patch and watch it die.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from pacing.cli.localstack import LocalStack, Process
from tests.reliability.harness import OwnRedis
from tests.support import start_worker_process, wait_for

pytestmark = pytest.mark.integration

QUEUE = "pacing"  # tasks.app: task_default_queue
WAIT_SECONDS = 60.0  # each step is one event of a local worker; generous for a busy machine
STOPPED = b"Unrecoverable error"  # celery.worker: the worker stops (a warm shutdown follows)
HELD_TASK_SUCCEEDED = re.compile(rb"probe\.finish_after_loss\[[^\]]+\] succeeded")
UNWATCHED_TASK_SUCCEEDED = re.compile(rb"probe\.close_sentinel_and_hold\[[^\]]+\] succeeded")
# celery.concurrency.asynpool.iterate_file_descriptors_safely skipping the unwatched process
SKIPPED_NONE_SENTINEL = b"Encountered error when accessing fd None"

PROBE_APP = """
# the service's app (its settings and tasks.app's conversion), and tasks the test drives by files
import os
import signal
import sys
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


@app.task(name="probe.close_sentinel_and_hold")
def close_sentinel_and_hold() -> None:
    # The pool watches this process's sentinel, a pipe whose write end only this process holds
    # (billiard's Popen._launch keeps it in a local of the frame that forked us). Closing it makes
    # the worker see this process exit while it cannot reap it, as when a process has closed its
    # files at exit and is not a zombie yet. Acknowledged early: the connection loss leaves it be.
    frame = sys._getframe()
    while not (frame.f_code.co_name == "_launch" and "child_w" in frame.f_locals):
        frame = frame.f_back
    sentinel = frame.f_locals["child_w"]
    (GATES / "sentinel").write_text(str(os.fstat(sentinel).st_ino))
    os.close(sentinel)
    while not (GATES / "release").exists():
        time.sleep(0.05)


@app.task(name="probe.canary")
def canary(name: str) -> None:
    (GATES / name).touch()
"""

WITHOUT_CONNPARAMS_PATCH = (
    PROBE_APP
    + """
# the control experiment: kombu's own _connparams, without the conversion of tasks.patches
from kombu.transport import redis as kombu_redis

kombu_redis.Channel._connparams = kombu_redis.Channel._connparams.__wrapped__
"""
)

WITHOUT_POOL_PATCH = (
    PROBE_APP
    + """
# the control experiment: Celery's own iterate_file_descriptors_safely, without tasks.patches
from celery.concurrency import asynpool

asynpool.iterate_file_descriptors_safely = asynpool.iterate_file_descriptors_safely.__wrapped__
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

    def stopped_and_exited(self, control: str) -> bytes:
        """Wait until the worker of the control experiment ``control`` stops with an unrecoverable
        error and, once its held task is released (a warm shutdown waits for it), exits; its log."""
        wait_for(
            lambda: STOPPED in self.log(),
            timeout=WAIT_SECONDS,
            message=f"the worker without {control} survived",
        )
        (self.gates / "release").touch()
        wait_for(
            lambda: self.worker.popen.poll() is not None,
            timeout=WAIT_SECONDS,
            message=f"the worker without {control} did not exit",
        )
        return self.log()

    def end_the_held_task_and_run_another(self, held_task_succeeded: re.Pattern[bytes]) -> None:
        """Release the held task, wait until it has succeeded, then until a new task has run."""
        (self.gates / "release").touch()
        self.wait_for_log(
            lambda log: held_task_succeeded.search(log) is not None, "the held task did not end"
        )
        canary = f"canary-{uuid.uuid4().hex[:8]}"
        self.send("probe.canary", canary)
        wait_for(
            (self.gates / canary).exists,
            timeout=WAIT_SECONDS,
            message="the worker took no new task",
        )

    def send(self, task: str, *args: str) -> None:
        self.sender.send_task(task, args=args, queue=QUEUE)

    def worker_fds_on_pipe(self, inode: str) -> int:
        """How many file descriptors of the worker's main process are on the pipe ``inode``."""
        fd_dir = Path(f"/proc/{self.worker.popen.pid}/fd")
        count = 0
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):  # closed while we look
                count += os.readlink(fd) == f"pipe:[{inode}]"
        return count


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
    scene.end_the_held_task_and_run_another(HELD_TASK_SUCCEEDED)

    # then: the worker outlived the restore and the acknowledgement on the dead connection, and
    # took a new task
    assert scene.worker.popen.poll() is None
    log = scene.log()
    assert b"Restoring 1 unacknowledged message(s)" in log, "no restore at the close: no race"
    assert b"Couldn't ack" in log, "the acknowledgement did not meet the dead connection: no race"
    assert STOPPED not in log


def test_control_a_worker_without_the_conversion_dies_of_the_same_order(tmp_path: Path) -> None:
    # given: the same worker with kombu's own _connparams
    with running_scene(tmp_path, WITHOUT_CONNPARAMS_PATCH) as scene:
        # when
        lose_the_connection_while_a_task_holds_a_message(scene)

        # then: it stops with an unrecoverable error, and exits once its running task has ended
        # (a warm shutdown), so the test above would fail without the conversion
        log = scene.stopped_and_exited("the conversion")
        assert b"Unrecoverable error: AttributeError" in log


def leave_an_unwatched_process_in_the_pool(scene: Scene) -> None:
    """The state of the second race: a pool process whose exit the worker has seen on its
    sentinel, which it stopped watching but could not reap, so it is still in the pool."""
    scene.send("probe.close_sentinel_and_hold")
    wait_for(
        (scene.gates / "sentinel").exists,
        timeout=WAIT_SECONDS,
        message="the task did not close its sentinel",
    )
    inode = (scene.gates / "sentinel").read_text()
    # the pool holds the sentinel and a duplicate it watches; it closes the duplicate when it
    # stops watching (celery.concurrency.asynpool.AsynPool._untrack_child_process)
    wait_for(
        lambda: scene.worker_fds_on_pipe(inode) == 1,
        timeout=WAIT_SECONDS,
        message="the worker did not stop watching the process",
    )


def restart_redis(scene: Scene) -> None:
    """Stop Redis until the worker has lost its connection, then start it again."""
    scene.redis_server.stop()
    scene.wait_for_log(
        lambda log: b"Connection to broker lost" in log,
        "the worker did not see the connection loss",
    )
    scene.redis_server.start()


def test_a_reconnect_while_the_pool_holds_an_unwatched_process_leaves_the_worker_running(
    scene: Scene,
) -> None:
    # given: a process the pool stopped watching but still holds
    leave_an_unwatched_process_in_the_pool(scene)

    # when: Redis restarts, so the consumer reconnects and registers the pool with its new loop
    restart_redis(scene)
    scene.wait_for_log(
        lambda log: SKIPPED_NONE_SENTINEL in log, "the registration did not meet the process"
    )

    # then: the worker goes on: the held task ends, and a new task runs
    scene.end_the_held_task_and_run_another(UNWATCHED_TASK_SUCCEEDED)
    assert scene.worker.popen.poll() is None
    assert STOPPED not in scene.log()


def test_control_a_worker_without_the_skip_dies_of_the_reconnect(tmp_path: Path) -> None:
    # given: the same worker with Celery's own iterate_file_descriptors_safely
    with running_scene(tmp_path, WITHOUT_POOL_PATCH) as scene:
        leave_an_unwatched_process_in_the_pool(scene)

        # when
        restart_redis(scene)

        # then: it stops with the error seen in the fault suite, so the test above would fail
        # without the skip
        log = scene.stopped_and_exited("the skip")
        assert b"Unrecoverable error: ValueError('file descriptor is None')" in log
