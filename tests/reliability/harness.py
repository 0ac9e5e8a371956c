"""Fault-injection harness: a real pacing cluster, real faults, and what the receiver saw.

It starts, all on loopback and owned by the harness:

* its own ``redis-server`` on a free port (append-only file on, so a restart keeps the data, as a
  production Redis would) — broker, result backend, lease, seq and state;
* its own PostgreSQL cluster (``initdb`` under a temporary directory, free port) — the history;
* the built-in simulator in this process — Stat Server pair, engagement receiver and its log;
* K nodes, each a ``celery worker`` and a ``celery beat`` with its own node name, every one in
  its own process group (:class:`pacing.cli.localstack.LocalStack`).

Each fault function injects one fault, heals it, and returns a :class:`FaultResult` with the
figures the runner prints (``benchmarks/faults.py``) and the reliability tests assert
(``tests/reliability/test_faults.py``): seconds to the next publish, longest gap between
publishes, duplicates at the receiver, publishes from a deposed leader, audit rows lost or
written twice, processes left behind. Timings are measured, never asserted tightly here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis
import requests

from pacing.cli.localstack import LocalStack, Process, import_simulator_targets
from pacing.cluster.keys import Keys
from pacing.history.migrate import upgrade_to_head
from pacing.settings import Settings, load_settings
from pacing.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS

PERIOD_SECONDS = 1.0
TARGETS = 300
SHARD_SIZE = 100
KEY_PREFIX = "pacing-rel"
QUEUE = "pacing"  # tasks.app: task_default_queue
STEADY_PUBLISHES = 3  # publishes in a row that count as "pacing again"
START_TIMEOUT_SECONDS = 180.0  # a loaded 2-core CI machine starts 4 Celery processes slowly
RECOVERY_TIMEOUT_SECONDS = 120.0
AUDIT_TIMEOUT_SECONDS = 180.0  # after a long database outage the sweep re-sends 20 per tick
_WORKER_LOST = re.compile(rb"WorkerLostError")


# --- results ---------------------------------------------------------------------------------


@dataclass
class FaultResult:
    """What one fault did to the cluster, as the receiver and the history saw it."""

    fault: str
    recovered: bool = False
    #: seconds from ``measured_from`` to the next publish the receiver accepted (None: never)
    next_publish_seconds: float | None = None
    measured_from: str = "fault"
    longest_gap_seconds: float = 0.0
    published: int = 0  # publishes accepted in the fault's window
    duplicates: int = 0  # seqs the receiver accepted more than once
    deposed_publishes: int = 0  # accepted after a newer epoch had taken the lease
    regressions: int = 0  # accepted with a seq at or below one accepted before it
    ended_term_publishes: int = 0  # accepted from a term after another term had published
    audit_lost: int = 0  # accepted seqs without a cycle row (or with a decision-row shortfall)
    audit_duplicated: int = 0  # cycle rows or decision rows written more than once
    processes_left: int = 0  # processes of killed or stopped groups still alive afterwards
    max_queue_length: int = 0  # messages waiting in the broker queue, highest seen
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Publish:
    seq: int
    epoch: int
    kind: str
    targets: int
    received_at: float
    leader: str = ""  # the node that published (the term is (epoch, leader))


# --- owned servers ---------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout:g} s")


class OwnRedis:
    """A ``redis-server`` of our own on a free loopback port, restartable with its data."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; install it to run the fault suite.")
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.start()

    def start(self) -> None:
        log = (self.dir / "redis.log").open("ab")
        self.popen = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--maxmemory-policy",
                "noeviction",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pids.append(self.popen.pid)
        _wait(self.answers, timeout=20, what="redis-server start")

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis finishes its append-only file and exits (a clean restart)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.popen = None


class OwnPostgres:
    """A PostgreSQL cluster of our own (``initdb`` in a temporary directory), stoppable at will."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        initdb = shutil.which("initdb") or _pg_binary("initdb")
        pg_ctl = shutil.which("pg_ctl") or _pg_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError(
                "initdb/pg_ctl not found; install PostgreSQL to run the fault suite."
            )
        self.pg_ctl = pg_ctl
        # not under ``workdir``: a private temporary directory is closed to the postgres account
        self.root = Path(tempfile.mkdtemp(prefix="pacing-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        # PostgreSQL refuses to run as root: run it as the postgres account then.
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        auth = ["--auth=trust"]
        if password:  # a real password check (SCRAM), so a wrong or missing one is refused
            pwfile = self.root / "pwfile"
            pwfile.write_text(password)
            if self._as:
                shutil.chown(pwfile, user="postgres")
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        subprocess.run(
            [*self._as, initdb, "-D", str(self.data), "-U", "postgres", *auth, "-N"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        user = f"postgres:{password}" if password else "postgres"
        self.url = f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/postgres"
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        if password:
            self.dsn += f" password={password}"
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as, self.pg_ctl, "-D", str(self.data), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Fast shutdown: every open connection is cut, new ones are refused."""
        self._ctl("-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._ctl("-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _pg_binary(name: str) -> str | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


# --- /proc helpers ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def live_members(pgids: set[int]) -> list[int]:
    """Processes (not zombies) whose process group is one of ``pgids``."""
    found = []
    for pid in _all_pids():
        info = _stat(pid)
        if info is not None and info[2] in pgids and info[0] != "Z":
            found.append(pid)
    return found


def children(pid: int) -> list[int]:
    return [p for p in _all_pids() if (info := _stat(p)) is not None and info[1] == pid]


# --- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """Credentials the cluster runs with, so a test can search every output for them."""

    redis_password: str
    postgres_password: str
    client_secret: str  # OAuth2 client credentials against the simulator's token endpoint
    engagement_token: str  # configured too, though OAuth takes precedence
    flower_password: str

    def all(self) -> list[str]:
        return [
            self.redis_password,
            self.postgres_password,
            self.client_secret,
            self.engagement_token,
            self.flower_password,
        ]


@dataclass
class Node:
    name: str
    worker: Process
    beat: Process

    @property
    def processes(self) -> list[Process]:
        return [self.worker, self.beat]


class Cluster:
    """Simulator + K nodes on our own Redis and PostgreSQL; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 2,
        targets: int = TARGETS,
        secrets: Secrets | None = None,
    ) -> None:
        self.workdir = workdir
        self.secrets = secrets
        self.node_names = [f"node-{chr(ord('a') + i)}" for i in range(nodes)]
        self._exit = contextlib.ExitStack()
        self.nodes: dict[str, Node] = {}
        self.processes_left_after_close: int | None = None
        self._spawns = 0
        try:
            self._start(workdir, targets)
        except BaseException:
            self._exit.close()
            raise

    def _start_redis(self, workdir: Path) -> dict[str, str]:
        """Start the cluster's Redis; returns the settings that point the nodes at it."""
        secrets = self.secrets
        self.redis_server = OwnRedis(workdir, password=secrets and secrets.redis_password)
        self._exit.callback(self.redis_server.stop)
        return {"broker_url": self.redis_server.url}

    def _redis_client(self) -> redis.Redis:
        """The harness's own client (lease poller, queue length, cycle events)."""
        return redis.Redis.from_url(
            self.redis_server.url,
            socket_timeout=LOOPBACK_TIMEOUT_SECONDS,
            socket_connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        )

    def _start(self, workdir: Path, targets: int) -> None:
        secrets = self.secrets
        redis_values = self._start_redis(workdir)
        self.postgres = OwnPostgres(workdir, password=secrets and secrets.postgres_password)
        self._exit.callback(self.postgres.destroy)
        simulator_config = SimulatorConfig(
            targets=targets, seed=5, port=0, refresh_period_seconds=PERIOD_SECONDS
        )
        if secrets is not None:  # OAuth only: the static token is not accepted
            simulator_config = dataclasses.replace(
                simulator_config, token=None, client_secret=secrets.client_secret
            )
        self.simulator: RunningSimulator = start_simulator(simulator_config)
        self._exit.callback(self.simulator.stop)
        # a client that gave up (the "slow" faults) breaks the server's write: that is the
        # fault at work, so keep socketserver's traceback for it out of the output
        server = self.simulator._server
        default_handler = server.handle_error

        def handle_error(request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):
                default_handler(request, client_address)

        server.handle_error = handle_error  # type: ignore[method-assign]
        self.values = {
            "environment": "development",
            **redis_values,
            "key_prefix": KEY_PREFIX,
            "database_url": self.postgres.url,
            "stat_server_primary_url": self.simulator.stat_server_primary_url,
            "stat_server_backup_url": self.simulator.stat_server_backup_url,
            "engagement_url": self.simulator.engagement_url,
            "engagement_token": "sim-token",
            "refresh_period_seconds": str(PERIOD_SECONDS),
            "shard_size": str(SHARD_SIZE),
            "log_level": "INFO",
        }
        if secrets is not None:
            self.values.update(
                {
                    "engagement_token": secrets.engagement_token,
                    "auth_url": self.simulator.auth_url,
                    "client_id": "pacing",
                    "client_secret": secrets.client_secret,
                    "flower_basic_auth": f"admin:{secrets.flower_password}",
                }
            )
        # the nodes' settings alone, as the nodes see them (their environment has no other
        # PACING_ variable), not mixed with the ones the test session puts in os.environ
        outside = {k: v for k, v in os.environ.items() if k.startswith("PACING_")}
        for name in outside:
            del os.environ[name]
        try:
            self.settings: Settings = load_settings(self.values)
        finally:
            os.environ.update(outside)
        upgrade_to_head(self.postgres.url)
        self.target_count = import_simulator_targets(self.settings, self.simulator.base_url)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PACING_")},
            **{f"PACING_{k.upper()}": v for k, v in self.values.items()},
            "PYTHONUNBUFFERED": "1",
        }
        self.stack = LocalStack(settings=self.settings, workdir=workdir)
        self._exit.callback(self.stack.stop)
        self.redis = self._redis_client()
        self._exit.callback(self.redis.close)
        self.http = requests.Session()
        self._exit.callback(self.http.close)
        self.lease_log: list[tuple[float, int, str]] = []  # (first seen, epoch, node)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="lease-poller", daemon=True)
        self._queue_max = 0
        self._queue_lock = threading.Lock()
        for name in self.node_names:
            self.start_node(name)
        self._poller.start()

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> int:
        """Stop everything; return how many processes of ours are still alive afterwards."""
        self._stop_polling.set()
        self._poller.join(timeout=5)
        for node in self.nodes.values():  # a stopped group cannot act on SIGTERM
            for process in node.processes:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.popen.pid, signal.SIGCONT)
        pgids = {p.popen.pid for p in self.stack.processes}
        redis_pids = set(self.redis_server.pids)
        postmaster = self.postgres.postmaster_pid()
        self._exit.close()
        # a SIGKILLed pool child may take a moment to be reaped
        with contextlib.suppress(TimeoutError):
            _wait(lambda: not live_members(pgids | redis_pids), timeout=10, what="exit")
        left = live_members(pgids | redis_pids)
        if postmaster is not None and (info := _stat(postmaster)) is not None and info[0] != "Z":
            left.append(postmaster)
        self.left_pids = left
        self.processes_left_after_close = len(left)
        return len(left)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_node(self, name: str) -> Node:
        self._spawns += 1
        env = {**self.env, "PACING_NODE_NAME": name}
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        worker = self.stack.spawn(
            f"{name}-worker",
            [
                *celery,
                "worker",
                "-n",
                f"{name}-{self._spawns}@%h",
                "--concurrency=2",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
        )
        beat = self.stack.spawn(
            f"{name}-beat",
            [
                *celery,
                "beat",
                "--loglevel=INFO",
                "-s",
                str(self.workdir / f"beat-{name}-{self._spawns}"),
            ],
            env,
        )
        node = Node(name, worker, beat)
        self.nodes[name] = node
        return node

    def start_flower(self) -> str:
        """Flower on loopback with the settings' basic auth; returns its base URL."""
        port = free_port()
        password = self.secrets.flower_password if self.secrets else "flower"
        self.stack.spawn(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                f"--basic-auth=admin:{password}",
            ],
            self.env,
        )
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                response = self.http.get(f"{base}/healthcheck", timeout=LOOPBACK_TIMEOUT_SECONDS)
                return response.status_code in (200, 401)
            except requests.RequestException:
                return False

        _wait(answers, timeout=START_TIMEOUT_SECONDS, what="Flower")
        return base

    def node_alive(self, name: str) -> bool:
        node = self.nodes[name]
        return all(p.popen.poll() is None for p in node.processes)

    def nodes_alive(self) -> dict[str, Any]:
        """``nodes_alive`` for a fault's details, and, when a process of a node has exited, its
        exit status and the end of its log (the cluster's directory is gone after the run)."""
        dead = {
            process.name: {
                "returncode": process.popen.returncode,
                "log_tail": _tail(process.log_path),
            }
            for node in self.nodes.values()
            for process in node.processes
            if process.popen.poll() is not None
        }
        return {"nodes_alive": not dead, **({"dead_processes": dead} if dead else {})}

    def signal_node(self, name: str, signum: int) -> list[int]:
        """Send ``signum`` to the whole process groups of ``name``'s worker and beat."""
        pgids = []
        for process in self.nodes[name].processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signum)
            pgids.append(process.popen.pid)
        if signum == signal.SIGKILL:
            for process in self.nodes[name].processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.popen.wait(timeout=10)
        return pgids

    # --- observation ------------------------------------------------------------------------

    def _poll(self) -> None:
        lease_key = f"{KEY_PREFIX}:lease"
        while not self._stop_polling.wait(0.05):
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.get(lease_key)
                pipe.llen(QUEUE)
                holder, queued = pipe.execute()
            except redis.RedisError:
                continue
            with self._queue_lock:
                self._queue_max = max(self._queue_max, int(queued))
            if holder:
                epoch_text, _, node = holder.decode().partition(":")
                epoch = int(epoch_text)
                # every new holder value is a new lease generation (after Redis lost its data
                # the epochs start again at 1, so "larger epoch" would not be enough)
                if not self.lease_log or self.lease_log[-1][1:] != (epoch, node):
                    self.lease_log.append((time.time(), epoch, node))

    def take_queue_max(self) -> int:
        with self._queue_lock:
            value, self._queue_max = self._queue_max, 0
        return value

    def leader(self) -> tuple[int, str] | None:
        raw = self.redis.get(f"{KEY_PREFIX}:lease")
        if not raw:
            return None
        epoch, _, node = raw.decode().partition(":")
        return int(epoch), node

    def published(self, after: int = 0) -> list[Publish]:
        response = self.http.get(
            f"{self.simulator.base_url}/sim/published",
            params={"after": after},
            timeout=LOOPBACK_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        return [
            Publish(
                p["seq"], p["epoch"], p["kind"], p["targets"], p["received_at"], p.get("leader", "")
            )
            for p in response.json()["published"]
        ]

    def control(self, body: Mapping[str, Any]) -> None:
        response = self.http.post(
            f"{self.simulator.base_url}/sim/control", json=body, timeout=LOOPBACK_TIMEOUT_SECONDS
        )
        response.raise_for_status()

    def cycle_events(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The cycle events (one per finished cycle) whose cycle started at ``since`` or later.

        Each carries its cycle's timeline in Unix seconds (``started_at``: the tick;
        ``shards_started_at`` / ``shards_finished_at``: the first shard began, the last one
        finished, so every shard's Stat Server fetch lies between them) and
        ``shards_unanswered``, the shards no Stat Server gateway answered.
        """
        out = []
        for _, fields in self.redis.xrange(f"{KEY_PREFIX}:cycle_events"):
            event: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
            event["seq"] = int(event["seq"])
            event["targets"] = int(event["targets"])
            event["shards_unanswered"] = int(event.get("shards_unanswered", 0))
            for name in ("started_at", "shards_started_at", "shards_finished_at"):
                event[name] = float(event[name])
            event["reasons"] = orjson.loads(event["reasons"])
            event["channels"] = orjson.loads(event["channels"])
            if event["started_at"] >= since:
                out.append(event)
        return out

    def wait_for_cycle(
        self, wanted: Callable[[dict[str, Any]], bool], *, what: str
    ) -> dict[str, Any]:
        """The first finished cycle for which ``wanted(event)`` holds, once there is one."""
        found: list[dict[str, Any]] = []

        def there() -> bool:
            found[:] = [event for event in self.cycle_events() if wanted(event)]
            return bool(found)

        _wait(there, timeout=RECOVERY_TIMEOUT_SECONDS, what=what)
        return found[0]

    def worker_lost_count(self) -> int:
        total = 0
        for process in self.stack.processes:
            if process.name.endswith("-worker") and process.log_path.exists():
                total += len(_WORKER_LOST.findall(process.log_path.read_bytes()))
        return total

    # --- waiting ----------------------------------------------------------------------------

    def wait_for_publishes(
        self, count: int, *, after_time: float, timeout: float, epoch_above: int = -1
    ) -> list[Publish]:
        """Wait until ``count`` publishes received after ``after_time`` (of a newer epoch)."""
        found: list[Publish] = []

        def enough() -> bool:
            nonlocal found
            found = [
                p for p in self.published() if p.received_at > after_time and p.epoch > epoch_above
            ]
            return len(found) >= count

        _wait(enough, timeout=timeout, what=f"{count} publishes", interval=0.1)
        return found

    def heal(self) -> None:
        """Clear every fault, restart dead nodes, wake stopped ones, wait for steady pacing."""
        self.control({"clear": True})
        for name, node in list(self.nodes.items()):
            for process in node.processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGCONT)
            if not self.node_alive(name):
                self.signal_node(name, signal.SIGKILL)
                self.start_node(name)
        self.wait_for_publishes(
            STEADY_PUBLISHES, after_time=time.time(), timeout=RECOVERY_TIMEOUT_SECONDS
        )

    # --- the audit --------------------------------------------------------------------------

    def audit(self, seqs: list[int], *, timeout: float = AUDIT_TIMEOUT_SECONDS) -> tuple[int, int]:
        """(lost, duplicated) audit rows for the accepted ``seqs``, once the history caught up.

        Lost: no cycle row with a published status, or fewer decision rows than the cycle
        published (all targets for a full snapshot, the changed ones for a delta). Duplicated:
        more rows than that (UNIQUE constraints make it impossible; counted anyway).
        """
        wanted = set(seqs)
        if not wanted:
            return 0, 0

        def rows() -> dict[int, tuple[str, str, int, int, int]]:
            try:
                with psycopg.connect(
                    self.postgres.dsn, connect_timeout=int(LOOPBACK_TIMEOUT_SECONDS)
                ) as conn:
                    result = conn.execute(
                        "SELECT c.seq, c.publish_status, c.payload_kind, c.target_count, "
                        "c.changed_count, (SELECT count(*) FROM decisions d WHERE d.seq = c.seq) "
                        "FROM cycles c WHERE c.seq = ANY(%s)",
                        (sorted(wanted),),
                    ).fetchall()
            except psycopg.OperationalError:
                return {}
            return {int(r[0]): (r[1], r[2], r[3], r[4], r[5]) for r in result}

        with contextlib.suppress(TimeoutError):
            _wait(lambda: set(rows()) >= wanted, timeout=timeout, what="audit", interval=0.5)
        found = rows()
        lost = duplicated = 0
        for seq in wanted:
            row = found.get(seq)
            if row is None or row[0] not in ("published", "in_doubt"):
                lost += 1
                continue
            _, kind, target_count, changed_count, decisions = row
            expected = target_count if kind == "full" else changed_count
            if decisions < expected:
                lost += 1
            elif decisions > expected:
                duplicated += 1
        return lost, duplicated


# --- measuring one fault -----------------------------------------------------------------------


def _finish(
    cluster: Cluster,
    result: FaultResult,
    *,
    window_start: float,
    reference: float,
    epoch_above: int = -1,
    killed_pgids: list[int] | None = None,
) -> FaultResult:
    """Wait for steady pacing after ``reference``, then fill in the invariants of the window."""
    try:
        after = cluster.wait_for_publishes(
            STEADY_PUBLISHES,
            after_time=reference,
            timeout=RECOVERY_TIMEOUT_SECONDS,
            epoch_above=epoch_above,
        )
        result.recovered = True
        result.next_publish_seconds = round(after[0].received_at - reference, 2)
    except TimeoutError:
        result.recovered = False
    window = [p for p in cluster.published() if p.received_at >= window_start]
    result.published = len(window)
    seqs = [p.seq for p in window]
    result.duplicates = len(seqs) - len(set(seqs))
    times = [window_start] + [p.received_at for p in window]
    result.longest_gap_seconds = round(
        max((b - a for a, b in itertools.pairwise(times)), default=0.0), 2
    )
    result.deposed_publishes = deposed_publishes(window, cluster.lease_log)
    result.regressions, result.ended_term_publishes = receiver_view(window)
    result.audit_lost, result.audit_duplicated = cluster.audit(seqs)
    if killed_pgids:
        result.processes_left = len(live_members(set(killed_pgids)))
    result.max_queue_length = cluster.take_queue_max()
    fence = cluster.published(after=10**12)  # nothing: only to keep the session warm
    del fence
    return result


def receiver_view(window: list[Publish]) -> tuple[int, int]:
    """(regressions, ended-term publishes) among ``window``, in the order the receiver took them.

    A regression: a seq at or below one accepted before it. An ended-term publish: one whose
    term (epoch, leader) had published before another term did — two leaders interleaved, A A B
    A. Neither needs the epochs to be ordered, so a term Redis numbered wrongly still counts.
    """
    regressions = ended = 0
    highest: int | None = None
    finished: set[tuple[int, str]] = set()
    current: tuple[int, str] | None = None
    for publish in window:
        if highest is not None and publish.seq <= highest:
            regressions += 1
        highest = publish.seq if highest is None else max(highest, publish.seq)
        term = (publish.epoch, publish.leader)
        if term != current:
            if current is not None:
                finished.add(current)
            current = term
        if term in finished:
            ended += 1
    return regressions, ended


def deposed_publishes(window: list[Publish], lease_log: list[tuple[float, int, str]]) -> int:
    """Publishes accepted after the poller had seen a newer epoch take the lease.

    The poller sees a takeover at most one poll (50 ms) late, so a publish counted here arrived
    after the takeover for certain. (A cycle that claimed the fence just before the takeover
    and whose POST lands just after is a race of a few milliseconds; the receiver's seq fence
    still keeps the order.)
    """
    count = 0
    for publish in window:
        before = [entry for entry in lease_log if entry[0] < publish.received_at]
        # the generation this publish belongs to: the last one of its epoch seen before it
        own = [i for i, (_, epoch, _) in enumerate(before) if epoch == publish.epoch]
        if own and own[-1] < len(before) - 1:
            count += 1
    return count


# --- the faults ---------------------------------------------------------------------------------


def fault_sigkill_master(cluster: Cluster, **_: Any) -> FaultResult:
    """SIGKILL the leader's beat and worker (whole process groups)."""
    result = FaultResult("sigkill_master", measured_from="kill")
    cluster.take_queue_max()
    epoch, node = _current_leader(cluster)
    window_start = time.time()
    killed_at = time.time()
    pgids = cluster.signal_node(node, signal.SIGKILL)
    _finish(
        cluster,
        result,
        window_start=window_start,
        reference=killed_at,
        epoch_above=epoch,
        killed_pgids=pgids,
    )
    new = [p for p in cluster.published() if p.epoch > epoch]
    result.details.update(
        killed=node,
        old_epoch=epoch,
        new_epoch=new[0].epoch if new else None,
        first_new_kind=new[0].kind if new else None,
        bound_seconds=cluster.settings.lease_ttl + 2 * PERIOD_SECONDS,
    )
    result.recovered = result.recovered and bool(new) and new[0].kind == "full"
    return result


def fault_sigstop_master(cluster: Cluster, *, outage_seconds: float, **_: Any) -> FaultResult:
    """SIGSTOP the leader for longer than the lease, then SIGCONT it."""
    result = FaultResult("sigstop_master", measured_from="stop")
    cluster.take_queue_max()
    epoch, node = _current_leader(cluster)
    window_start = time.time()
    pause = max(2 * cluster.settings.lease_ttl, min(outage_seconds, 20.0))
    stopped_at = time.time()
    cluster.signal_node(node, signal.SIGSTOP)
    try:
        with contextlib.suppress(TimeoutError):
            cluster.wait_for_publishes(
                1, after_time=stopped_at, timeout=pause + 30, epoch_above=epoch
            )
        time.sleep(max(0.0, stopped_at + pause - time.time()))
        # what the stopped node finds when it runs again (it cannot change the lease meanwhile)
        holder = cluster.leader()
    finally:
        cluster.signal_node(node, signal.SIGCONT)
    resumed_at = time.time()
    # the old leader runs again: watch it for several periods (a duration, not a wait: what is
    # watched for, a publish of its old epoch, must not happen)
    time.sleep(5 * PERIOD_SECONDS)
    _finish(cluster, result, window_start=window_start, reference=stopped_at, epoch_above=epoch)
    late_old = [p for p in cluster.published() if p.received_at > resumed_at and p.epoch <= epoch]
    result.deposed_publishes += len(late_old)
    result.details.update(
        stopped=node,
        paused_seconds=round(resumed_at - stopped_at, 1),
        old_epoch=epoch,
        leader_at_resume=holder,
        leader_after=cluster.leader(),
        # whoever leads later (a busy machine may move the lease again), the node came back to
        # a lease another node held at a newer epoch: its ticks find it a standby, its old
        # cycle is fenced
        old_node_is_standby=holder is not None and holder[1] != node and holder[0] > epoch,
    )
    result.recovered = result.recovered and result.details["old_node_is_standby"]
    return result


def fault_sigkill_worker_in_shard(cluster: Cluster, **_: Any) -> FaultResult:
    """SIGKILL pool processes while they run ``pace_shard`` (the Stat Server answers slowly)."""
    result = FaultResult("sigkill_worker_in_shard", measured_from="kill")
    cluster.take_queue_max()
    window_start = time.time()
    # shards then spend ~0.4 s each in the Stat Server call, inside the 0.6 s read timeout
    cluster.control({"latency_ms": 400})
    time.sleep(2 * PERIOD_SECONDS)
    lost_before = cluster.worker_lost_count()
    killed_pids: list[int] = []
    kills = 0
    deadline = time.monotonic() + 60
    killed_at = time.time()
    while time.monotonic() < deadline:
        node = cluster.nodes[random.choice(cluster.node_names)]
        pool = children(node.worker.popen.pid)
        time.sleep(random.uniform(0.1, 0.5))
        killed_at = time.time()
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed_pids.append(pid)
        kills += 1
        # Celery logs a lost job when it reaps the killed child and starts a new one; once the
        # pool is whole again without such a line, no job was running: kill again
        _wait(
            lambda node=node, pool=pool: (
                cluster.worker_lost_count() > lost_before
                or _pool_replaced(node.worker.popen.pid, pool)
            ),
            timeout=RECOVERY_TIMEOUT_SECONDS,
            what="the worker to replace its killed pool processes",
        )
        if cluster.worker_lost_count() > lost_before:
            break
    cluster.control({"latency_ms": 0})
    _finish(cluster, result, window_start=window_start, reference=killed_at)
    result.processes_left = sum(
        1 for pid in killed_pids if (info := _stat(pid)) is not None and info[0] != "Z"
    )
    result.details.update(
        kill_rounds=kills,
        tasks_lost_mid_run=cluster.worker_lost_count() - lost_before,
        statuses=_statuses(cluster, window_start),
    )
    result.recovered = result.recovered and all(cluster.node_alive(n) for n in cluster.node_names)
    return result


def _pool_replaced(worker_pid: int, killed: list[int]) -> bool:
    """The worker has as many pool processes as before and none of the killed ones."""
    now = children(worker_pid)
    return len(now) >= len(killed) and not set(now) & set(killed)


def fault_restart_redis(cluster: Cluster, **_: Any) -> FaultResult:
    """Stop Redis (SIGTERM, data kept in its append-only file), keep it down 3 s, start it."""
    result = FaultResult("restart_redis", measured_from="restart")
    cluster.take_queue_max()
    window_start = time.time()
    epoch_before = (cluster.leader() or (0, ""))[0]
    # slow statistics keep shards in flight, so the workers hold unacknowledged messages when
    # Redis goes away (the case that killed celery 5.7 workers, see tasks/patches.py)
    cluster.control({"latency_ms": 400})
    time.sleep(2 * PERIOD_SECONDS)
    cluster.redis_server.stop()
    time.sleep(3.0)
    cluster.redis_server.start()
    restarted_at = time.time()
    cluster.control({"latency_ms": 0})
    _finish(cluster, result, window_start=window_start, reference=restarted_at)
    result.details.update(
        epoch_before=epoch_before,
        leader_after=cluster.leader(),
        **cluster.nodes_alive(),
    )
    result.recovered = result.recovered and result.details["nodes_alive"]
    return result


def fault_restart_redis_data_lost(cluster: Cluster, **_: Any) -> FaultResult:
    """Restart Redis with its data gone (no persistence): seq, lease and state start again.

    The receiver still holds the last seq, so the counter must jump past it; the audit
    records staged in Redis at that moment are lost with it (counted, see the details).
    """
    result = FaultResult("restart_redis_data_lost", measured_from="restart")
    cluster.take_queue_max()
    window_start = time.time()
    last_seq_before = max((p.seq for p in cluster.published()), default=0)
    # the audit records that can go with the data: those staged and not yet written now, and
    # those of the cycles that publish before Redis stops
    read_at = time.time()
    staged = int(cluster.redis.zcard(Keys(KEY_PREFIX).audit_pending))
    cluster.redis_server.stop()
    published_before_stop = [p for p in cluster.published() if p.received_at > read_at]
    for path in cluster.redis_server.dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != "redis.log":
            path.unlink()
    cluster.redis_server.start()
    restarted_at = time.time()
    _finish(cluster, result, window_start=window_start, reference=restarted_at)
    after = [p for p in cluster.published() if p.received_at > restarted_at]
    result.details.update(
        last_seq_before=last_seq_before,
        audit_at_risk=staged + len(published_before_stop),
        first_seq_after=after[0].seq if after else None,
        first_kind_after=after[0].kind if after else None,
        **cluster.nodes_alive(),
    )
    result.recovered = (
        result.recovered
        and result.details["nodes_alive"]
        and bool(after)
        and after[0].kind == "full"
    )
    return result


def _shards_per_cycle(cluster: Cluster) -> int:
    return -(-cluster.target_count // SHARD_SIZE)


def _stale(event: Mapping[str, Any]) -> int:
    return int(event["reasons"].get("stale", 0))


def fault_stat_primary_down(cluster: Cluster, *, outage_seconds: float, **_: Any) -> FaultResult:
    """The Stat Server primary resets every connection; the backup must serve in the same cycle.

    What the design guarantees: a shard a gateway answers is paced on that answer, so no cycle
    whose shards were all answered carries a stale row. (A shard neither gateway answers in time,
    as a busy machine may make the backup, keeps its last good statistics.)
    """
    result = FaultResult("stat_primary_down", measured_from="fault")
    cluster.take_queue_max()
    window_start = time.time()
    cluster.control({"stat_server": {"primary": "down"}})
    down_at = time.time()
    time.sleep(outage_seconds)
    cluster.control({"stat_server": {"primary": "up"}})
    _finish(cluster, result, window_start=window_start, reference=window_start)
    # the cycles whose every fetch found the primary down
    during = [e for e in cluster.cycle_events(window_start) if e["shards_started_at"] >= down_at]
    answered = [e for e in during if e["shards_unanswered"] == 0]
    stale = [e["seq"] for e in answered if _stale(e) > 0]
    result.details.update(
        cycles=len(during), cycles_answered=len(answered), cycles_with_stale_rows=len(stale)
    )
    result.recovered = result.recovered and not stale and len(answered) > 0
    return result


def fault_stat_both_down(cluster: Cluster, *, outage_seconds: float, **_: Any) -> FaultResult:
    """Both Stat Servers down: last good statistics until stats_max_age, then budget 0 / stale;
    after the heal, the first cycle whose shards the gateways answer carries no stale rows.

    Cycles are placed against the events that decide their rows, the moments their shards
    fetched (not their ticks): every fetch that starts after the fault is applied fails, every
    one that ends before the heal is sent failed, and every one that starts after the heal is
    applied is answered unless both gateways miss the client's timeouts. Each target's last good
    statistics are at least as young as the first shard of the last fully answered cycle before
    the fault (``fresh_since``).
    """
    result = FaultResult("stat_both_down", measured_from="restore")
    cluster.take_queue_max()
    max_age = cluster.settings.stats_max_age
    outage = max(outage_seconds, max_age + 6 * PERIOD_SECONDS)
    shards = _shards_per_cycle(cluster)
    window_start = time.time()
    fresh = cluster.wait_for_cycle(
        lambda e: e["shards_started_at"] >= window_start and e["shards_unanswered"] == 0,
        what="a cycle whose every shard a Stat Server answered",
    )
    fresh_since = fresh["shards_started_at"]
    cluster.control({"stat_server": {"primary": "down", "backup": "down"}})
    down_at = time.time()
    time.sleep(outage)  # the outage's length: a duration of the scenario, not a wait
    heal_sent_at = time.time()
    cluster.control({"stat_server": {"primary": "up", "backup": "up"}})
    up_at = time.time()
    _finish(cluster, result, window_start=window_start, reference=up_at)
    first_healed = cluster.wait_for_cycle(
        lambda e: e["shards_started_at"] >= up_at and e["shards_unanswered"] == 0,
        what="a cycle after the heal whose every shard a Stat Server answered",
    )
    events = [e for e in cluster.cycle_events(window_start) if e["shards_started_at"] > 0]
    # every fetch of these cycles began after the fault and ended before the heal was sent
    during = [
        e
        for e in events
        if e["shards_started_at"] >= down_at and e["shards_finished_at"] < heal_sent_at
    ]
    # … on statistics at most stats_max_age old: each target keeps its last good ones
    early = [e for e in during if e["shards_finished_at"] <= fresh_since + max_age]
    # … more than stats_max_age after the last answer (which came before the fault)
    late = [e for e in during if e["shards_started_at"] > down_at + max_age]
    all_stale = [e for e in during if _stale(e) == e["targets"]]
    zero_budget = all(
        sum(c["proactive_budget"] for c in e["channels"].values()) == 0 for e in all_stale
    )
    first_all_stale = min((e["shards_started_at"] - down_at for e in all_stale), default=None)
    # after the heal: stale rows only from shards no gateway answered
    healed = [e for e in events if e["shards_started_at"] >= up_at]
    result.details.update(
        outage_seconds=outage,
        stats_max_age=max_age,
        cycles_during=len(during),
        first_all_stale_after_seconds=None
        if first_all_stale is None
        else round(first_all_stale, 2),
        early_cycles_kept_statistics=[_stale(e) == 0 for e in early],
        unanswered_during=all(e["shards_unanswered"] == shards for e in during),
        late_cycles_all_stale=bool(late) and all(e in all_stale for e in late),
        stale_budget_zero=zero_budget,
        healed_cycles=len(healed),
        first_healed_seq=first_healed["seq"],
        healed_without_stale=_stale(first_healed) == 0
        and all(_stale(e) == 0 for e in healed if e["shards_unanswered"] == 0),
    )
    result.recovered = (
        result.recovered
        and result.details["late_cycles_all_stale"]
        and zero_budget
        and result.details["healed_without_stale"]
    )
    return result


def _period_messages(cluster: Cluster) -> int:
    """The most messages one period sends: a refresh per node, the shards, the chord body, the
    audit and a presolve."""
    return len(cluster.node_names) + _shards_per_cycle(cluster) + 3


def _queue_drains(cluster: Cluster) -> bool:
    """True once the broker queue holds no more than one period's messages."""
    try:
        _wait(
            lambda: int(cluster.redis.llen(QUEUE)) <= _period_messages(cluster),
            timeout=RECOVERY_TIMEOUT_SECONDS,
            what="the broker queue to drain",
        )
    except TimeoutError:
        return False
    return True


def _engagement_fault(mode: str) -> Callable[..., FaultResult]:
    def fault(cluster: Cluster, *, outage_seconds: float, **_: Any) -> FaultResult:
        result = FaultResult(f"engagement_{mode}", measured_from="restore")
        cluster.take_queue_max()
        queued_before = int(cluster.redis.llen(QUEUE))
        window_start = time.time()
        cluster.control({"engagement": {"mode": mode}})
        fault_on = time.time()  # every publish received from here on met the fault
        time.sleep(outage_seconds)  # the outage's length: a duration of the scenario, not a wait
        # Taken before the heal is sent: a publish the receiver accepts in the moment between
        # the heal and its answer is after the outage, not during it (read after the answer,
        # a full snapshot landing then was counted "during" and the delta that followed it
        # taken for the first publish after the outage).
        heal_sent_at = time.time()
        cluster.control({"engagement": {"mode": "ok"}})
        _finish(cluster, result, window_start=window_start, reference=heal_sent_at)
        published = cluster.published()
        after = [p for p in published if p.received_at > heal_sent_at]
        during = [p for p in published if fault_on < p.received_at <= heal_sent_at]
        result.details.update(
            first_kind_after=after[0].kind if after else None,
            published_during=len(during),
            kinds_during=sorted({p.kind for p in during}),
            **cluster.nodes_alive(),
        )
        # After an outage the receiver gets a full snapshot: a failed publish makes the next
        # cycle send one, and a cycle starts only once the previous one has finished or passed
        # its deadline (where its attempts end), so the first cycle the receiver accepts after
        # the heal merged after one whose publish had failed.
        # While deltas are refused (409), the full snapshots that follow each refusal get in.
        ok = result.details["nodes_alive"] and bool(after)
        if mode == "reject_delta":
            ok = ok and result.details["kinds_during"] == ["full"]
        else:
            ok = ok and after[0].kind == "full"
        # no pile-up: the queue never held more than the beats and cycles could send in the
        # window (nothing is sent again and again), and once the endpoint is healthy it drains
        # by itself to what one period sends
        periods = math.ceil((time.time() - window_start) / PERIOD_SECONDS) + 1
        result.details["queue_bound"] = queued_before + periods * _period_messages(cluster)
        result.details["queue_drained"] = _queue_drains(cluster)
        result.recovered = result.recovered and ok and result.details["queue_drained"]
        return result

    fault.__doc__ = f"The engagement endpoint in mode {mode!r} for the outage, then healthy."
    return fault


def fault_postgres_down(cluster: Cluster, *, outage_seconds: float, **_: Any) -> FaultResult:
    """Stop PostgreSQL (fast shutdown) for the outage: publishing goes on, the audit catches up."""
    result = FaultResult("postgres_down", measured_from="fault")
    cluster.take_queue_max()
    window_start = time.time()
    cluster.postgres.stop()
    try:
        time.sleep(outage_seconds)
        during = [p for p in cluster.published() if p.received_at > window_start]
    finally:
        cluster.postgres.start()
    _finish(cluster, result, window_start=window_start, reference=window_start)
    result.details.update(published_while_down=len(during))
    result.recovered = result.recovered and len(during) > 0
    return result


def fault_malformed_statistics(cluster: Cluster, *, outage_seconds: float, **_: Any) -> FaultResult:
    """Malformed, stale and missing rows for some targets: error rows, the rest paced."""
    result = FaultResult("malformed_statistics", measured_from="fault")
    cluster.take_queue_max()
    ids = [
        t["id"]
        for t in cluster.http.get(f"{cluster.simulator.base_url}/sim/targets").json()["targets"]
    ][:9]
    modes = ["malformed", "stale", "missing"]
    window_start = time.time()
    cluster.control({"corrupt": {tid: modes[i % 3] for i, tid in enumerate(ids)}})
    time.sleep(max(outage_seconds, 4 * PERIOD_SECONDS))
    cluster.control({"clear": True})
    _finish(cluster, result, window_start=window_start, reference=window_start)
    events = list(cluster.cycle_events(window_start + PERIOD_SECONDS))
    flagged = [
        e["reasons"].get("error", 0)
        + e["reasons"].get("stale", 0)
        + e["reasons"].get("unknown_target", 0)
        for e in events
    ]
    result.details.update(cycles=len(events), max_error_rows=max(flagged, default=0))
    result.recovered = result.recovered and max(flagged, default=0) >= len(ids)
    return result


def _current_leader(cluster: Cluster) -> tuple[int, str]:
    holder: tuple[int, str] | None = None

    def found() -> bool:
        nonlocal holder
        holder = cluster.leader()
        return holder is not None

    _wait(found, timeout=RECOVERY_TIMEOUT_SECONDS, what="a leader")
    assert holder is not None
    return holder


def _statuses(cluster: Cluster, since: float) -> dict[str, int]:
    with psycopg.connect(
        cluster.postgres.dsn, connect_timeout=int(LOOPBACK_TIMEOUT_SECONDS)
    ) as conn:
        rows = conn.execute(
            "SELECT publish_status, count(*) FROM cycles "
            "WHERE started_at >= to_timestamp(%s) GROUP BY publish_status",
            (since,),
        ).fetchall()
    return {str(status): int(count) for status, count in rows}


FAULTS: dict[str, Callable[..., FaultResult]] = {
    "sigkill_master": fault_sigkill_master,
    "sigstop_master": fault_sigstop_master,
    "sigkill_worker_in_shard": fault_sigkill_worker_in_shard,
    "restart_redis": fault_restart_redis,
    "restart_redis_data_lost": fault_restart_redis_data_lost,
    "stat_primary_down": fault_stat_primary_down,
    "stat_both_down": fault_stat_both_down,
    "engagement_down": _engagement_fault("down"),
    "engagement_slow": _engagement_fault("slow"),
    "engagement_error_500": _engagement_fault("error_500"),
    "engagement_reject_delta": _engagement_fault("reject_delta"),
    "postgres_down": fault_postgres_down,
    "malformed_statistics": fault_malformed_statistics,
}


def run_fault(cluster: Cluster, name: str, *, outage_seconds: float) -> FaultResult:
    """Heal the cluster, then inject fault ``name`` and measure it."""
    cluster.heal()
    return FAULTS[name](cluster, outage_seconds=outage_seconds)


#: A dying Celery worker's last traceback runs past 40 lines; the log record that introduced it
#: (which tells "Couldn't ack" from "Unrecoverable error") comes before that.
LOG_TAIL_LINES = 150


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@contextlib.contextmanager
def running_cluster(
    workdir: Path | None = None, *, cluster_class: type[Cluster] | None = None, **kwargs: Any
) -> Iterator[Cluster]:
    """A started cluster that is always torn down; its first publishes already arrived."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacing-rel-")))
        cluster = (cluster_class or Cluster)(workdir, **kwargs)
        stack.callback(cluster.close)
        cluster.wait_for_publishes(STEADY_PUBLISHES, after_time=0.0, timeout=START_TIMEOUT_SECONDS)
        yield cluster
