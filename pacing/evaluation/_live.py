"""The live stack's world in virtual time: what ``pacing up`` runs, without the wall clock.

``pacing up`` serves :meth:`World.synthetic` (1,000 targets, seed 7) and imports its targets
with the algorithm an operator would choose
(:func:`pacing.cli.localstack.simulator_target_configs`).
:func:`live_world_snapshots` paces the same world with the service's own cycle
(:class:`ServiceLoop`) and reads the simulator's per-target metrics — what ``GET
/sim/metrics?per_target=1`` answers — every simulated minute, so that :mod:`pacing.quality`
reports it exactly as ``benchmarks/live.py`` reports the live stack. A wipe of the service's
Redis mid-run plays a Redis restart without persistence.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacing.cli.localstack import simulator_target_configs
from pacing.evaluation._service_loop import (
    DEFAULT_CYCLE_LATENCY_SECONDS,
    EPOCH,
    ServiceLoop,
    VirtualClock,
    private_redis,
)
from pacing.simulator.targets import generate_targets
from pacing.simulator.world import World

__all__ = ["LiveWorldResult", "LiveWorldRun", "live_world_snapshots"]


@dataclass(frozen=True, slots=True)
class LiveWorldRun:
    """What to simulate: the targets and seed of ``pacing up``, for ``minutes``."""

    targets: int = 1000
    seed: int = 7
    #: the seed of the world's dynamics (arrivals, acceptances, handle times); None: ``seed``,
    #: as ``pacing up`` has it. Other values replay the same targets with other luck.
    dynamics_seed: int | None = None
    minutes: float = 20.0
    wipe_at_minute: float | None = None
    minute_seconds: float = 60.0
    refresh_period_seconds: float = 2.0
    cycle_latency_seconds: float = DEFAULT_CYCLE_LATENCY_SECONDS
    #: when the service's first cycle starts, after the world did (a live stack's processes
    #: take seconds to start; the live benchmark reports when its first publish landed)
    first_tick_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class LiveWorldResult:
    """The readings of a run and each target's abandonment goal (a fraction)."""

    readings: list[dict[str, Any]]
    goals: dict[str, float]


def live_world_snapshots(run: LiveWorldRun) -> LiveWorldResult:
    """The simulator's metrics (``per_target``) at the start and after every simulated minute.

    Each reading is the JSON of ``/sim/metrics?per_target=1``, whose ``generated_at`` is the
    simulated time; the first is taken at the start. Goals are those ``pacing up`` imports.
    """
    clock = VirtualClock(EPOCH)
    world = World(
        generate_targets(run.targets, seed=run.seed),
        seed=run.seed if run.dynamics_seed is None else run.dynamics_seed,
        clock=clock,
        max_catch_up_seconds=1e9,
    )
    configs = simulator_target_configs(world.targets_listing())
    snapshots: list[dict[str, Any]] = []

    def observe(at: float) -> None:
        snapshots.append(world.metrics(per_target=True, now=at))

    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="pacing-live-") as work:
        loop = ServiceLoop(
            world,
            clock,
            configs,
            redis_url=redis_url,
            workdir=Path(work),
            settings={"refresh_period_seconds": run.refresh_period_seconds},
            cycle_latency_seconds=run.cycle_latency_seconds,
        )
        try:
            events = {}
            if run.wipe_at_minute is not None:
                events[EPOCH + run.wipe_at_minute * run.minute_seconds] = loop.wipe_state
            loop.run(
                run.minutes * run.minute_seconds,
                every=run.minute_seconds,
                observe=observe,
                start=EPOCH,
                first_tick=EPOCH + run.first_tick_seconds,
                events=events,
            )
        finally:
            loop.close()
    goals = {config.target_id: config.goal_percent / 100.0 for config in configs}
    return LiveWorldResult(readings=snapshots, goals=goals)
