"""The cycle benchmark's own stack on loopback (``benchmarks/_cycle_stack.py`` drives it).

* Redis for the broker, result backend, lease and state, without persistence, on free ports:
  one ``redis-server`` (``--redis plain``, the default), or a master, its replica and three
  Sentinels (``--redis sentinel``, :class:`pacing.cli.redis_ha.SentinelSet`, the topology of
  ``pacing up --ha``), which every client then reaches through the Sentinels;
* a throwaway PostgreSQL database (``pacing_bench_<random>``) on the server named by
  ``PACING_BENCH_POSTGRES_URL``, migrated to head and dropped at the end;
* the simulator as a subprocess, restarted for each target count on the same port, so the
  settings (and with them the Celery client in this process) stay the same for the whole run;
* one ``celery worker`` whose prefork pool has W processes, started fresh for every run.

Every subprocess runs in its own process group (:class:`pacing.cli.localstack.LocalStack`, one per
role so each can be stopped alone); :meth:`BenchStack.close` stops them all and leaves nothing
behind, after Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import celery
import psycopg
import redis
import requests
from psycopg import sql
from sqlalchemy.engine import make_url

from pacing.cli.localstack import (
    SIMULATOR_TOKEN,
    LocalStack,
    Process,
    import_simulator_targets,
    redis_answers,
    redis_server_binary,
    redis_server_command,
)
from pacing.cli.redis_ha import SentinelSet
from pacing.cluster.connection import redis_client
from pacing.cluster.keys import Keys
from pacing.settings import ENV_PREFIX, Settings, load_settings
from tests.reliability.harness import children, free_port

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
POSTGRES_URL_VARIABLE = "PACING_BENCH_POSTGRES_URL"  # read before BenchStack clears PACING_*
NODE = "bench-node"  # the node name every tick carries, the baseline's too: one lease holder
KEY_PREFIX = "bench"
PERIOD_SECONDS = 2.0
START_TIMEOUT_SECONDS = 180.0  # a 100,000-target world and a Celery pool start slowly on 2 cores
IDLE_TIMEOUT_SECONDS = 30.0  # a worker still busy after this is stopped anyway
#: Kept when the cluster state is cleared between target counts: seq and epoch only grow, so
#: the history's UNIQUE(seq) never sees a number twice and every run starts with a new lease.
KEPT_KEYS = ("seq", "epoch")
REDIS_MODES = ("plain", "sentinel")
SENTINELS = 3
MASTER_NAME = "bench"
_LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


def postgres_conninfo(url: str) -> str:
    """psycopg's connection string for a SQLAlchemy URL (``postgresql+psycopg://…``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class ThrowawayDatabase:
    """A database of its own on a PostgreSQL server: created empty, dropped at the end."""

    server_url: str
    name: str

    @classmethod
    def create(cls, server_url: str, name: str) -> ThrowawayDatabase:
        with _admin(server_url) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return cls(server_url, name)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (``PACING_DATABASE_URL``)."""
        parsed = make_url(self.server_url).set(database=self.name)
        return parsed.render_as_string(hide_password=False)

    @property
    def conninfo(self) -> str:
        return postgres_conninfo(self.url)

    def drop(self) -> None:
        # FORCE: a connection some crashed process left open must not keep the database alive
        with _admin(self.server_url) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(postgres_conninfo(server_url), autocommit=True, connect_timeout=10)


class BenchStack:
    """Redis, simulator and Celery worker of one benchmark run; see the module docstring.

    ``redis_mode``: ``"plain"`` (one redis-server) or ``"sentinel"`` (:data:`REDIS_MODES`)."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str,
        shard_size: int | None,
        redis_mode: str = "plain",
    ) -> None:
        if redis_mode not in REDIS_MODES:
            raise ValueError(f"redis_mode must be one of {', '.join(REDIS_MODES)}")
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.keys = Keys(KEY_PREFIX)
        self.simulator_port = free_port()
        self.simulator_url = f"http://127.0.0.1:{self.simulator_port}"
        self.redis_mode = redis_mode
        # plain: the server's port; sentinel: master, replica, then one per Sentinel
        self.redis_ports = distinct_free_ports(1 if redis_mode == "plain" else 2 + SENTINELS)
        values = {
            "environment": "development",
            **self._redis_values(),
            "database_url": database_url,
            "stat_server_primary_url": f"{self.simulator_url}/statserver/primary",
            "stat_server_backup_url": f"{self.simulator_url}/statserver/backup",
            "engagement_url": f"{self.simulator_url}/engagement",
            "engagement_token": SIMULATOR_TOKEN,
            "key_prefix": KEY_PREFIX,
            "log_level": "WARNING",
            "refresh_period_seconds": str(PERIOD_SECONDS),
        }
        if shard_size is not None:
            values["shard_size"] = str(shard_size)
        # This process (the baseline and the Celery client, whose tasks.app reads the settings
        # from the environment when imported) runs with exactly the workers' settings: no
        # PACING_* variable of the caller's shell, no PACING_CONFIG_FILE.
        for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[name]
        os.environ.update({f"{ENV_PREFIX}{name.upper()}": value for name, value in values.items()})
        self.settings: Settings = load_settings()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._servers = LocalStack(self.settings, workdir)
        self._simulators = LocalStack(self.settings, workdir)
        self._workers = LocalStack(self.settings, workdir)
        self.simulator: Process | None = None
        self.worker: Process | None = None
        # the service's own client, as the workers make it: through the Sentinels in that mode
        self.redis: redis.Redis = redis_client(self.settings)
        self.app: Any = None

    def _redis_values(self) -> dict[str, str]:
        """The settings that point every process at this run's Redis (the settings refuse a
        broker URL beside Sentinels)."""
        if self.redis_mode == "plain":
            return {"broker_url": f"redis://127.0.0.1:{self.redis_ports[0]}/0"}
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.redis_ports[2:])
        return {"redis_sentinels": sentinels, "redis_master_name": MASTER_NAME}

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start Redis (one server, or the Sentinel set) and connect the Celery client that
        sends the ticks."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server was not found; install it to run the benchmark.")
        if self.redis_mode == "sentinel":
            # returns once the replica is in sync and every Sentinel knows the others;
            # LocalStack.stop stops it after the processes
            master, replica, *sentinels = self.redis_ports
            self._servers.redis_ha = SentinelSet.start(
                self.workdir / "redis-ha",
                master_port=master,
                replica_port=replica,
                sentinel_ports=sentinels,
                master_name=MASTER_NAME,
                binary=binary,
            )
        else:
            data = self.workdir / "redis"
            data.mkdir(parents=True, exist_ok=True)
            port = self.redis_ports[0]
            server = self._servers.spawn(
                "redis", redis_server_command(binary, port=port, data_dir=data), self.env
            )
            self._wait(lambda: redis_answers(self.settings.broker_url), server, "redis-server")
        self.app = self._celery_client()

    @staticmethod
    def _celery_client() -> Any:
        # not at the top: tasks.app reads the settings when imported, so only after __init__
        from tasks.app import app  # noqa: PLC0415

        return app

    def close(self) -> None:
        """Stop the worker, the simulator and Redis (in that order) and wait for them."""
        self.stop_workers()
        self.stop_simulator()
        if self.app is not None:
            self.app.close()
        self.redis.close()
        self._servers.stop()

    def start_simulator(self, targets: int) -> int:
        """(Re)start the simulator with ``targets`` targets; returns how many were imported."""
        self.stop_simulator()
        self.simulator = self._simulators.spawn(
            f"simulator-{targets}",
            [
                sys.executable,
                "-m",
                "pacing.simulator",
                "--targets",
                str(targets),
                "--port",
                str(self.simulator_port),
                "--host",
                "127.0.0.1",
                "--log-level",
                "WARNING",
            ],
            self.env,
        )
        self._wait(self._simulator_answers, self.simulator, "the simulator")
        return import_simulator_targets(self.settings, self.simulator_url)

    def stop_simulator(self) -> None:
        self._simulators.stop()
        self.simulator = None

    def start_workers(self, processes: int, *, label: str) -> None:
        """A fresh ``celery worker`` whose prefork pool has ``processes`` processes."""
        self.stop_workers()
        self.worker = self._workers.spawn(
            f"worker-{label}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "-n",
                "bench@%h",
                f"--concurrency={processes}",
                "--pool=prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=WARNING",
            ],
            self.env,
        )
        self._wait(self._worker_answers, self.worker, "the Celery worker")

    def wait_idle(self) -> None:
        """Wait until the worker runs no task. Call it before :meth:`stop_workers` on the normal
        path: the SIGTERM reaches the pool processes too (the whole process group), and one
        still finishing a task (the audit write the benchmark just saw commit) would die in it."""
        deadline = time.monotonic() + IDLE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            active = self.app.control.inspect(timeout=0.5).active()
            if not active or not any(active.values()):
                return
            time.sleep(0.1)

    def stop_workers(self) -> None:
        self._workers.stop()
        self.worker = None

    def _wait(self, check: Callable[[], bool], process: Process, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with status {process.popen.returncode}; see {process.log_path}."
                )
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"{what} did not answer within {START_TIMEOUT_SECONDS:g} s; see {process.log_path}."
        )

    def _simulator_answers(self) -> bool:
        try:
            return requests.get(f"{self.simulator_url}/sim/metrics", timeout=1).ok
        except requests.RequestException:
            return False

    def _worker_answers(self) -> bool:
        return bool(self.app.control.ping(timeout=0.5))

    # --- the cluster's state in Redis -----------------------------------------------------

    def reset_cluster_state(self) -> None:
        """Forget the lease, per-target state, snapshot and counters of the previous run."""
        kept = {f"{KEY_PREFIX}:{name}" for name in KEPT_KEYS}
        keys = cast(list[bytes], list(self.redis.scan_iter(match=f"{KEY_PREFIX}:*")))
        stale = [key for key in keys if key.decode() not in kept]
        if stale:
            self.redis.delete(*stale)

    def counters(self) -> dict[str, int]:
        """The cluster-wide counters (cycles published, overruns, …) since the last reset."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.keys.counters))
        return {key.decode(): int(value) for key, value in raw.items()}

    def control(self, body: dict[str, Any]) -> None:
        """``POST /sim/control`` (faults, added latency)."""
        response = requests.post(f"{self.simulator_url}/sim/control", json=body, timeout=10)
        response.raise_for_status()

    # --- observation ----------------------------------------------------------------------

    def peak_rss_mb(self) -> dict[str, float | None]:
        """VmHWM of the worker's main process, each pool process and the simulator, in MB."""
        peaks: dict[str, float | None] = {}
        if self.worker is not None:
            main = self.worker.popen.pid
            peaks["worker main"] = _vm_hwm_mb(main)
            for index, child in enumerate(sorted(children(main)), 1):
                peaks[f"pool process {index}"] = _vm_hwm_mb(child)
        if self.simulator is not None:
            peaks["simulator"] = _vm_hwm_mb(self.simulator.popen.pid)
        return peaks


def distinct_free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on loopback (the kernel may hand one out twice in a row)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None


def log_problems(
    logs: Path, patterns: Sequence[str] = ("worker-*.log", "simulator-*.log")
) -> dict[str, dict[str, Any]]:
    """Per log matching ``patterns`` (the cycle benchmark's worker and simulator logs) with
    WARNING, ERROR, CRITICAL or Traceback lines: how many, and the first three."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted({path for pattern in patterns for path in logs.glob(pattern)}):
        lines = [
            line.strip()
            for line in path.read_text(errors="replace").splitlines()
            if _LOG_PROBLEM.search(line)
        ]
        if lines:
            found[path.name] = {"lines": len(lines), "first": lines[:3]}
    return found


def describe_machine(stack: BenchStack, history: psycopg.Connection[Any]) -> dict[str, Any]:
    """CPU, cores, memory, versions, load and the code under test, for the report's header."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    server_version = history.execute("SHOW server_version").fetchone()
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(memory.group(1)) / 1024**2, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": _first_value(server_version),
        "redis": stack.redis.info("server")["redis_version"] + _topology(stack.redis_mode),
        "celery": celery.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "code": code_version(),
    }


def _topology(redis_mode: str) -> str:
    return " via Sentinel (master, replica, 3 Sentinels)" if redis_mode == "sentinel" else ""


def _first_value(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def code_version() -> str:
    """``<commit>`` plus how many files differ from it: others change the code while we measure."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = len(status.splitlines())
    return f"{commit} + {changed} uncommitted files" if changed else commit
