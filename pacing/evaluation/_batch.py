"""One batch of evaluation rows on the simulator's world, in virtual time (algorithm.md §8).

Every row (a scenario and a seed) is one target of :class:`pacing.simulator.world.World`, the
model ``pacing simulate`` serves live; rows of a batch share a refresh period and are stepped
together. Who decides the invitations depends on the scenario's pacer:

- ``PACED``: the pacing service itself, its whole per-cycle path (:class:`ServiceLoop`): the
  Stat Server rows and the engagement feedback it would get over HTTP, with the same delays,
  its state in Redis, full and delta publishes;
- ``PROGRESSIVE``: the naive baseline of §3, reading the same world directly;
- ``POISSON``: nobody. Visitors arrive as a Poisson stream at λ* with exponential handle
  times, the self-check against Erlang-A.

Each kind runs in a world of its own, so the baselines cannot disturb the service's world.
Rows of one world share its random stream: a row's draws depend on the rows beside it, but a
batch gives the same result every time it is run.

Every row is measured twice: over its first 15 minutes (the cold start, from an empty state)
and after its warm-up; the 15-minute windows after a step change are kept for §8's check.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pacing import algorithms
from pacing.algorithms._erlang import erlang_a
from pacing.algorithms._operating_points import operating_point
from pacing.algorithms._state import StateColumn
from pacing.domain import Objective, TargetConfig
from pacing.evaluation._scenario import Pacer, Scenario, Stress
from pacing.evaluation._service_loop import EPOCH, ServiceLoop, VirtualClock, private_redis
from pacing.simulator.targets import TargetSpec
from pacing.simulator.world import World

__all__ = [
    "COLD_START_SECONDS",
    "WINDOW_SECONDS",
    "RowResult",
    "erlang_reference",
    "self_check_rate",
    "simulate_batch",
]

#: Width of the windows of the step-change check (§8: "the 15-minute abandonment").
WINDOW_SECONDS = 900.0
#: The cold start every row reports on its own: its first 15 minutes from an empty state.
COLD_START_SECONDS = 900.0
#: One cycle in this many has stale (or malformed) statistics in the feed-fault scenarios.
FEED_FAULT_EVERY = 10
#: The baseline's estimate of p: a Beta prior worth this many resolved invitations at 0.25.
_BASELINE_PRIOR = (5.0, 20.0)
#: The step of the world (simulated seconds), as in ``pacing simulate``.
_STEP_SECONDS = 0.1

Progress = Callable[[float], None]


@dataclass(slots=True)
class Window:
    """Counts of one row over one stretch of simulated time."""

    accepted: list[float] = field(default_factory=lambda: [0.0, 0.0])  # proactive, reactive
    abandoned: list[float] = field(default_factory=lambda: [0.0, 0.0])
    invitations: float = 0.0
    busy_seconds: float = 0.0
    staffed_seconds: float = 0.0


@dataclass(slots=True)
class RowResult:
    """What one row measured: after its warm-up, and over its cold start (counts, not ratios)."""

    scenario: str
    seed: int
    accepted: list[float] = field(default_factory=lambda: [0.0, 0.0])  # by class
    abandoned: list[float] = field(default_factory=lambda: [0.0, 0.0])
    reactive_offered: float = 0.0
    reactive_refused: float = 0.0
    invitations: float = 0.0
    busy_seconds: float = 0.0
    staffed_seconds: float = 0.0
    reactive_state_seconds: float = 0.0
    measured_seconds: float = 0.0
    final_trim: float = math.nan
    cold_start: Window = field(default_factory=Window)
    window_accepted: list[float] = field(default_factory=list)  # all classes, by 15-min window
    window_abandoned: list[float] = field(default_factory=list)
    budget_errors: int = 0  # cycles whose budget exceeded max_budget or was refused as invalid


def self_check_rate(scenario: Scenario) -> float:
    """λ* of the scenario's goal from Erlang-A (per second): the self-check's Poisson rate."""
    point = operating_point(
        np.array([float(scenario.slots)]),
        np.array([scenario.handle_time / scenario.patience]),
        np.array([scenario.goal]),
        busy_factor=np.array([scenario.objective is Objective.BUSY_FACTOR]),
    )
    return float(point.load[0]) / scenario.handle_time


def erlang_reference(scenario: Scenario) -> tuple[float, float]:
    """(P_ab, occupancy) of unpaced Poisson traffic at the scenario's goal (Erlang-A, §8)."""
    ratio = scenario.handle_time / scenario.patience
    busy = scenario.objective is Objective.BUSY_FACTOR
    point = operating_point(
        np.array([float(scenario.slots)]),
        np.array([ratio]),
        np.array([scenario.goal]),
        busy_factor=np.array([busy]),
    )
    state = erlang_a(np.array([float(scenario.slots)]), point.load, np.array([ratio]))
    return float(state.abandon_probability[0]), float(state.occupancy[0])


def _row_id(index: int) -> str:
    return f"row-{index:05d}"


def _spec(scenario: Scenario, index: int) -> TargetSpec:
    poisson = scenario.pacer is Pacer.POISSON
    reactive_rate = 0.0
    if poisson:
        reactive_rate = self_check_rate(scenario)
    elif scenario.reactive_share > 0:
        reactive_rate = scenario.reactive_share * self_check_rate(scenario)
    return TargetSpec(
        target_id=_row_id(index),
        channel="chat",
        slots=scenario.slots,
        not_ready=0,
        accept_probability=scenario.accept_probability,
        resolution_delay_seconds=scenario.resolve_delay,
        handle_mean_seconds=scenario.handle_time,
        handle_cv=1.0 if poisson else scenario.handle_cv,
        patience_seconds=scenario.patience,
        reactive_rate_per_second=reactive_rate,
        exponential_handle=poisson,  # Erlang-A's assumption
    )


def _config(scenario: Scenario, index: int) -> TargetConfig:
    return TargetConfig(
        _row_id(index),
        algorithm=scenario.algorithm,
        objective=scenario.objective,
        goal_percent=scenario.goal_percent,
        proactive_ratio=scenario.proactive_ratio,
        max_budget=scenario.max_budget,
    )


def _seed(rows: Sequence[tuple[Scenario, int]]) -> int:
    digest = hashlib.sha256(repr([(s.name, seed) for s, seed in rows]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class _Group:
    """The rows of one pacer in their own world."""

    def __init__(
        self, rows: Sequence[tuple[int, Scenario, int]], clock: VirtualClock, seed: int
    ) -> None:
        self.rows = list(rows)
        self.scenarios = [scenario for _, scenario, _ in rows]
        specs = [_spec(scenario, index) for index, scenario, _ in rows]
        self.ids = [spec.target_id for spec in specs]
        # catch-up is never needed: the batch steps the world itself, tick by tick
        self.world = World(specs, seed=seed, clock=clock, max_catch_up_seconds=1e9)
        self.caps = np.array([scenario.max_budget for scenario in self.scenarios])
        self.budget_errors = np.zeros(len(rows), dtype=np.int64)

    def column(self, values: Callable[[Scenario], float]) -> NDArray[np.float64]:
        return np.array([values(scenario) for scenario in self.scenarios], dtype=np.float64)


def simulate_batch(
    rows: Sequence[tuple[Scenario, int]],
    progress: Progress | None = None,
    *,
    service_settings: Mapping[str, object] | None = None,
) -> list[RowResult]:
    """Simulate ``rows`` (one refresh period) as one batch; results in the order of ``rows``."""
    periods = {scenario.refresh_period for scenario, _ in rows}
    if len(periods) > 1:
        raise ValueError("Every row of a batch must share one refresh period.")
    if not rows:
        return []
    period = periods.pop()
    clock = VirtualClock(EPOCH)
    seed = _seed(rows)
    indexed = [(index, scenario, row_seed) for index, (scenario, row_seed) in enumerate(rows)]
    groups = {
        pacer: _Group([row for row in indexed if row[1].pacer is pacer], clock, seed + rank)
        for rank, pacer in enumerate(Pacer)
        if any(row[1].pacer is pacer for row in indexed)
    }
    with tempfile.TemporaryDirectory(prefix="pacing-eval-") as workdir:
        if Pacer.PACED in groups:
            with private_redis() as redis_url:
                paced = groups[Pacer.PACED]
                loop = ServiceLoop(
                    paced.world,
                    clock,
                    [_config(scenario, index) for index, scenario, _ in paced.rows],
                    redis_url=redis_url,
                    workdir=Path(workdir),
                    settings={"refresh_period_seconds": period, **dict(service_settings or {})},
                )
                try:
                    results = _simulate(groups, loop, period, seed, progress)
                finally:
                    loop.close()
        else:
            results = _simulate(groups, None, period, seed, progress)
    by_index = dict(results)
    return [by_index[index] for index in range(len(rows))]


def _simulate(
    groups: Mapping[Pacer, _Group],
    loop: ServiceLoop | None,
    period: float,
    seed: int,
    progress: Progress | None,
) -> list[tuple[int, RowResult]]:
    horizon = max(s.hours for group in groups.values() for s in group.scenarios) * 3600.0
    marks = _marks(groups, horizon)
    snapshots: dict[Pacer, dict[float, dict[str, NDArray[np.float64]]]] = {
        pacer: {} for pacer in groups
    }
    faults = np.random.default_rng(seed)  # the feed faults' own stream, apart from the worlds'
    for group in groups.values():
        _whole_run_faults(group)
    stepped: set[tuple[Pacer, int]] = set()
    ticks = math.ceil(horizon / period)
    report_every = max(ticks // 50, 1)
    next_mark = 0
    for k in range(ticks + 1):
        at = min(k * period, horizon)
        while next_mark < len(marks) and marks[next_mark] <= at:
            for pacer, group in groups.items():
                snapshots[pacer][marks[next_mark]] = group.world.counters(
                    now=EPOCH + marks[next_mark]
                )
            next_mark += 1
        if k == ticks:
            break
        for pacer, group in groups.items():
            _step_changes(pacer, group, at, stepped)
            if pacer is Pacer.PACED and loop is not None:
                _feed_faults(group, faults)
                loop.tick(EPOCH + at)
                _check_budgets(group)
            elif pacer is Pacer.PROGRESSIVE:
                _pace_progressive(group, EPOCH + at, period)
            else:
                group.world.advance(EPOCH + at)
        if progress is not None and k % report_every == 0:
            progress(at / horizon)
    trims = _final_trims(loop, groups.get(Pacer.PACED))
    # a publish the receiver refused as invalid carried every paced row's budget
    invalid = int(str(loop.app.fence_json()["rejected_invalid"])) if loop is not None else 0
    results: list[tuple[int, RowResult]] = []
    for pacer, group in groups.items():
        for position, (index, scenario, row_seed) in enumerate(group.rows):
            result = _measure(scenario, row_seed, position, snapshots[pacer])
            result.budget_errors = int(group.budget_errors[position])
            if pacer is Pacer.PACED:
                result.final_trim = trims[position]
                result.budget_errors += invalid
            results.append((index, result))
    if progress is not None:
        progress(1.0)
    return results


def _marks(groups: Mapping[Pacer, _Group], horizon: float) -> list[float]:
    """The instants (seconds from the start) at which every world's counters are read."""
    marks = {0.0, COLD_START_SECONDS, horizon}
    marks.update(k * WINDOW_SECONDS for k in range(int(horizon // WINDOW_SECONDS) + 1))
    for group in groups.values():
        for scenario in group.scenarios:
            marks.add(scenario.warmup_hours * 3600.0)
            marks.add(scenario.hours * 3600.0)
    return sorted(mark for mark in marks if mark <= horizon)


def _step_changes(pacer: Pacer, group: _Group, at: float, stepped: set[tuple[Pacer, int]]) -> None:
    for position, scenario in enumerate(group.scenarios):
        if (pacer, position) in stepped or at < scenario.step_at_seconds:
            continue
        stepped.add((pacer, position))
        target = [group.ids[position]]
        if scenario.stress is Stress.LOGOUT:
            group.world.update_targets(target, staffed=max(scenario.slots // 2, 1))
        elif scenario.stress is Stress.SLOWER:
            group.world.update_targets(target, handle_mean_seconds=2.0 * scenario.handle_time)
        elif scenario.stress is Stress.ACCEPT_HALVES:
            group.world.update_targets(target, accept_probability=scenario.accept_probability / 2)


def _whole_run_faults(group: _Group) -> None:
    """The feedback under-reports acceptances by 20 % (p seems too low) all run long."""
    for position, scenario in enumerate(group.scenarios):
        if scenario.stress is Stress.UNDERREPORTED:
            group.world.update_targets([group.ids[position]], feedback_accept_scale=0.8)


def _feed_faults(group: _Group, faults: np.random.Generator) -> None:
    """One cycle in ten of a feed-fault row has stale or malformed statistics."""
    for position, scenario in enumerate(group.scenarios):
        mode = {Stress.STALE_FEED: "stale", Stress.NONFINITE_FEED: "malformed"}.get(scenario.stress)
        if mode is not None:
            hit = faults.random() < 1.0 / FEED_FAULT_EVERY
            group.world.set_corruption(group.ids[position], mode if hit else None)


def _check_budgets(group: _Group) -> None:
    group.budget_errors += group.world.budgets() > group.caps


def _pace_progressive(group: _Group, now: float, period: float) -> None:
    """The naive rule of §3: n = (f − Q − q·P)/p, p from the same feedback counters."""
    world = group.world
    statistics, _ = world.statistics(group.ids, now=now)
    feedback = world.feedback(group.ids, now=now)
    prior_accepted, prior_resolved = _BASELINE_PRIOR
    budgets: list[int] = []
    for position, target_id in enumerate(group.ids):
        row, counters = statistics[target_id], feedback[target_id]
        p = (prior_accepted + counters["offers_accepted_total"]) / (
            prior_resolved + counters["offers_resolved_total"]
        )
        free = float(row["agents_ready"])  # type: ignore[arg-type]
        waiting = float(row["interactions_waiting"])  # type: ignore[arg-type]
        wanted = max((free - waiting - p * counters["offers_pending"]) / p, 0.0)
        wanted = min(wanted, float(group.caps[position]))
        budgets.append(math.floor(wanted))
    world.apply_publish(
        group.ids,
        budgets,
        [1.0] * len(budgets),
        full=True,
        refresh_period_seconds=period,
        now=now,
    )


def _final_trims(loop: ServiceLoop | None, group: _Group | None) -> list[float]:
    if loop is None or group is None:
        return []
    state, _, _ = loop.services.state.load(group.ids, width=algorithms.STATE_WIDTH)
    return [float(value) for value in state[:, StateColumn.TRIM]]


def _measure(
    scenario: Scenario,
    seed: int,
    position: int,
    snapshots: Mapping[float, Mapping[str, NDArray[np.float64]]],
) -> RowResult:
    def at(mark: float) -> Mapping[str, NDArray[np.float64]]:
        return snapshots[mark]

    def between(start: float, end: float, name: str) -> float:
        return float(at(end)[name][position] - at(start)[name][position])

    start, end = scenario.warmup_hours * 3600.0, scenario.hours * 3600.0
    result = RowResult(scenario=scenario.name, seed=seed)
    result.accepted = [
        between(start, end, "offers_accepted"),
        between(start, end, "reactive_admitted"),
    ]
    result.abandoned = [between(start, end, "abandoned_pro"), between(start, end, "abandoned_rea")]
    result.reactive_offered = between(start, end, "reactive_arrivals")
    result.reactive_refused = result.reactive_offered - result.accepted[1]
    result.invitations = between(start, end, "offers_sent")
    result.busy_seconds = between(start, end, "busy_seconds")
    result.staffed_seconds = between(start, end, "staffed_seconds")
    result.reactive_state_seconds = between(start, end, "reactive_state_seconds")
    result.measured_seconds = end - start
    cold_end = min(COLD_START_SECONDS, end)
    result.cold_start = Window(
        accepted=[
            between(0.0, cold_end, "offers_accepted"),
            between(0.0, cold_end, "reactive_admitted"),
        ],
        abandoned=[
            between(0.0, cold_end, "abandoned_pro"),
            between(0.0, cold_end, "abandoned_rea"),
        ],
        invitations=between(0.0, cold_end, "offers_sent"),
        busy_seconds=between(0.0, cold_end, "busy_seconds"),
        staffed_seconds=between(0.0, cold_end, "staffed_seconds"),
    )
    windows = int(end // WINDOW_SECONDS)
    for w in range(windows):
        a, b = w * WINDOW_SECONDS, (w + 1) * WINDOW_SECONDS
        result.window_accepted.append(
            between(a, b, "offers_accepted") + between(a, b, "reactive_admitted")
        )
        result.window_abandoned.append(
            between(a, b, "abandoned_pro") + between(a, b, "abandoned_rea")
        )
    return result
