"""Helpers shared by the integration tests: private Redis databases and PostgreSQL databases, and
``celery worker`` subprocesses."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
import redis
import requests

from pacing.cli.localstack import LocalStack, Process
from pacing.cluster.connection import redis_client
from pacing.cluster.keys import Keys
from pacing.settings import Settings, load_settings
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS

REDIS_HOST = os.environ.get("PACING_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("PACING_TEST_REDIS_PORT", "6379"))
POSTGRES_ADMIN_DSN = os.environ.get(
    "PACING_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
# databases 0 and 1 are left to people; each test run leases its own from the rest
_REDIS_TEST_DBS = range(2, 16)
_LEASE_SECONDS = 3600


#: Settings of a node under test whose HTTP clients talk to servers on loopback (the scripted
#: stub, the simulator): connect and read timeouts far above any scheduling delay, so a test never
#: fails because a busy machine scheduled the server's thread late (tests/http_stub.py). The
#: settings keep connect + read below two refresh periods, and a cycle's tasks expire at its
#: deadline (two periods), so the period is long as well. No test waits for it: tests start cycles
#: by hand (there is no beat) or move their clocks by hand.
LOOPBACK_NODE_SETTINGS: dict[str, float] = {
    "refresh_period_seconds": 1.25 * LOOPBACK_TIMEOUT_SECONDS,
    "http_connect_timeout_seconds": LOOPBACK_TIMEOUT_SECONDS,
    "http_read_timeout_seconds": LOOPBACK_TIMEOUT_SECONDS,
}


def unavailable(message: str) -> NoReturn:
    """Skip a test that needs a tool this machine lacks, for the reasons the README's
    Development section lists; under CI (``CI`` set) fail instead: ``.ci/run`` installs every
    tool, so there a missing one is a broken set-up, never a check that silently stops running."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def cycle_wait_seconds(settings: Settings | None = None) -> float:
    """How long a test waits for a cycle it started by hand to reach the receiver: a cycle
    publishes by its deadline or never, and its tick is taken within a refresh period
    (``settings``: the in-process stack's, from the environment, when not given)."""
    settings = settings or load_settings()
    return settings.cycle_deadline + settings.refresh_period_seconds


def published_seqs(simulator_url: str) -> list[int]:
    """The seqs the simulator's receiver accepted, in order."""
    response = requests.get(
        f"{simulator_url}/sim/published", params={"after": 0}, timeout=LOOPBACK_TIMEOUT_SECONDS
    )
    response.raise_for_status()
    return [int(p["seq"]) for p in response.json()["published"]]


def run_cycle_by_hand(simulator_url: str) -> int:
    """Send one beat tick to the in-process worker; return the seq of the cycle it published,
    once that cycle has finished (its event and last-cycle figures written, its in-flight marker
    cleared, so the next tick starts a cycle). Its publish task may still be logging its last
    lines."""
    from tasks.cycle import refresh  # the tasks read the settings from the environment

    settings = load_settings()
    before = max(published_seqs(simulator_url), default=0)
    refresh.delay(settings.node_name)
    wait_for(
        lambda: max(published_seqs(simulator_url), default=0) > before,
        timeout=cycle_wait_seconds(settings),
        message="no new cycle reached the simulator",
    )
    seq = max(published_seqs(simulator_url))
    client = redis_client(settings)
    keys = Keys(settings.key_prefix)

    def finished() -> bool:
        # its figures are written, then its in-flight marker cleared (pacing.cycle.publish._finish)
        in_flight = (client.get(keys.inflight) or b"").decode()
        written = int(client.hget(keys.last_cycle, "seq") or 0) >= seq
        return written and not in_flight.endswith(f":{seq}")

    try:
        wait_for(
            finished,
            timeout=cycle_wait_seconds(settings),
            message=f"cycle {seq} was published but never finished",
        )
    finally:
        client.close()
    return seq


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@contextlib.contextmanager
def leased_redis_db() -> Iterator[int]:
    """A Redis database number no other test run uses while this one holds it; flushed after."""
    registry = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    token = uuid.uuid4().hex
    try:
        for db in _REDIS_TEST_DBS:
            if registry.set(f"pacing-test:db-lease:{db}", token, nx=True, ex=_LEASE_SECONDS):
                client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
                client.flushdb()
                try:
                    yield db
                finally:
                    client.flushdb()
                    client.close()
                    if registry.get(f"pacing-test:db-lease:{db}") == token.encode():
                        registry.delete(f"pacing-test:db-lease:{db}")
                return
        raise RuntimeError("every Redis test database is leased; wait for other test runs")
    finally:
        registry.close()


@contextlib.contextmanager
def throwaway_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for this run; yields its SQLAlchemy URL, dropped after."""
    name = f"pacing_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], bool], *, timeout: float, message: str, interval: float = 0.1
) -> None:
    """Poll ``check`` until true; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s: {message}")


def start_worker_process(
    workdir: Path,
    *,
    app_module: str,
    broker_url: str,
    name: str,
    pool: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> tuple[LocalStack, Process]:
    """A ``celery worker`` subprocess of ``app_module`` (importable from ``workdir`` or the
    project) on ``broker_url`` with the ``pool`` options, returned once it is ready; ``env`` adds
    to the environment. Stop it with the returned stack's ``stop()``."""
    settings = load_settings({"broker_url": broker_url})
    stack = LocalStack(settings=settings, workdir=workdir)
    process = stack.spawn(
        "worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app_module,
            "worker",
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            *pool,
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        {
            **os.environ,
            "PACING_NODE_NAME": name,
            "PACING_BROKER_URL": broker_url,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(workdir), str(Path.cwd())]),
            **(env or {}),
        },
    )
    try:
        wait_for(
            lambda: b"ready." in process.log_path.read_bytes(),
            timeout=120,
            interval=0.5,
            message="the worker did not start",
        )
    except BaseException:
        stack.stop()
        raise
    return stack, process
