"""The virtual-time discrete-event simulation of algorithm.md §8.

One :class:`Run` simulates a batch of independent rows (scenario × seed) that share a refresh
period, in one heap of events and without any clock but the simulated one:

- a tick every Δ builds the statistics and feedback counters production would see, calls
  :func:`pacing.algorithms.pace` once for every paced row of the batch (exactly as a worker paces
  a shard), and sends the invitations it allows;
- an invitation resolves after an exponential delay of mean d: accepted with probability p (the
  visitor arrives) or declined / expired;
- reactive requests arrive as a Poisson process and are admitted with the last ``reactive_state``;
- an arrival takes a free slot or joins the FIFO queue with an exponential patience timer;
- a service ends after a lognormal handle time and takes the next visitor still waiting.

The pacing rule sees only the Stat Server fields and the engagement feedback counters; the
world's true p, d, h and patience stay inside this module. Each row draws from its own random
stream (seeded from the scenario name and the seed), so a row's result does not depend on the
rows it shares a batch with.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from pacing.algorithms import (
    STATE_FIELDS,
    PacingInputs,
    PacingParameters,
    PacingTargets,
    cold_state,
    pace,
)
from pacing.algorithms._erlang import erlang_a, operating_point
from pacing.domain import Objective, Reason, TargetConfig
from pacing.evaluation._scenario import Pacer, Scenario, Stress

#: Simulated time starts here (Unix seconds), so that ``now`` looks like production's.
EPOCH = 1_767_225_600.0
#: Width of the windows of the step-change check (§8: "the 15-minute abandonment").
WINDOW_SECONDS = 900.0
#: The Stat Server's AHT is a windowed mean; this is the weight of each completion in it.
AHT_WEIGHT = 0.05
#: The baseline's estimate of p: a Beta prior worth this many resolved invitations at 0.25.
_BASELINE_PRIOR = (5.0, 20.0)
_TRIM = STATE_FIELDS.index("trim")

_TICK, _RESOLVE, _ARRIVAL, _END, _ABANDON, _STEP = range(6)
_PROACTIVE, _REACTIVE = 0, 1
_WAITING, _SERVED, _ABANDONED = 0, 1, 2

Progress = Callable[[float], None]


@dataclass(slots=True)
class RowResult:
    """What one row measured after its warm-up (counts, not yet ratios)."""

    scenario: str
    seed: int
    accepted: list[int] = field(default_factory=lambda: [0, 0])  # by class (arrived to queue)
    abandoned: list[int] = field(default_factory=lambda: [0, 0])
    reactive_offered: int = 0
    reactive_refused: int = 0
    invitations: int = 0
    busy_seconds: float = 0.0
    staffed_seconds: float = 0.0
    reactive_state_sum: float = 0.0
    ticks: int = 0
    final_trim: float = math.nan
    window_accepted: list[int] = field(default_factory=list)  # all classes, by 15-min window
    window_abandoned: list[int] = field(default_factory=list)
    budget_errors: int = 0  # budgets that were not finite integers in [0, max_budget]


class _Row:
    """The world of one row, plus what production knows about it (counters)."""

    __slots__ = (
        "abandon_rate",
        "abandoned_total",
        "accept_probability",
        "aht",
        "answered",
        "busy",
        "carry",
        "handle_mu",
        "handle_sigma",
        "last_time",
        "offers_accepted",
        "offers_reported",
        "pending",
        "queue",
        "reactive_rate",
        "reactive_state",
        "reactive_total",
        "resolve_rate",
        "resolved",
        "result",
        "rng",
        "scenario",
        "sent",
        "staffed",
        "waiting",
    )

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        # A simulation, not cryptography: reproducible streams keyed by scenario and seed.
        self.rng = random.Random(f"{scenario.name}/{seed}")  # noqa: S311
        self.result = RowResult(scenario=scenario.name, seed=seed)
        windows = math.ceil(scenario.hours * 3600.0 / WINDOW_SECONDS) + 1
        self.result.window_accepted = [0] * windows
        self.result.window_abandoned = [0] * windows
        self.staffed = scenario.slots
        self.busy = 0
        self.waiting = 0
        self.queue: deque[list[float]] = deque()
        self.accept_probability = scenario.accept_probability
        self.resolve_rate = 1.0 / scenario.resolve_delay
        self.abandon_rate = 1.0 / scenario.patience
        self._set_handle(scenario.handle_time)
        self.aht = scenario.handle_time
        self.answered = 0
        self.abandoned_total = 0
        self.reactive_total = 0
        self.sent = 0
        self.offers_accepted = 0
        self.offers_reported = 0.0
        self.resolved = 0
        self.pending = 0
        self.carry = 0.0
        self.reactive_state = 1.0
        self.reactive_rate = 0.0
        self.last_time = 0.0

    def _set_handle(self, mean: float) -> None:
        cv = self.scenario.handle_cv
        if self.scenario.pacer is Pacer.POISSON:
            cv = 0.0  # exponential, flagged by sigma < 0 below
        sigma2 = math.log1p(cv * cv)
        self.handle_mu = math.log(mean) - sigma2 / 2.0
        self.handle_sigma = math.sqrt(sigma2) if cv > 0 else -mean

    def handle_time(self) -> float:
        if self.handle_sigma < 0:
            return self.rng.expovariate(-1.0 / self.handle_sigma)
        return self.rng.lognormvariate(self.handle_mu, self.handle_sigma)


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


class Run:
    """A batch of rows with one refresh period, simulated together (see the module docstring)."""

    def __init__(
        self,
        rows: Sequence[tuple[Scenario, int]],
        *,
        parameters: PacingParameters | None = None,
    ) -> None:
        periods = {scenario.refresh_period for scenario, _ in rows}
        if len(periods) > 1:
            raise ValueError("Every row of a Run must share one refresh period.")
        self.period = periods.pop() if periods else 2.0
        self.parameters = parameters or PacingParameters(refresh_period_seconds=self.period)
        self.rows = [_Row(scenario, seed) for scenario, seed in rows]
        self.horizon = max((s.hours for s, _ in rows), default=0.0) * 3600.0
        self.heap: list[tuple[float, int, int, int, object]] = []
        self.sequence = 0
        self.paced = [i for i, row in enumerate(self.rows) if row.scenario.pacer is Pacer.PACED]
        self.progressive = [
            i for i, row in enumerate(self.rows) if row.scenario.pacer is Pacer.PROGRESSIVE
        ]
        configs = [
            TargetConfig(
                f"r{i}",
                algorithm=self.rows[i].scenario.algorithm,
                objective=self.rows[i].scenario.objective,
                goal_percent=self.rows[i].scenario.goal_percent,
                proactive_ratio=self.rows[i].scenario.proactive_ratio,
                max_budget=self.rows[i].scenario.max_budget,
            )
            for i in self.paced
        ]
        self.targets = PacingTargets.from_configs(configs)
        self.state = cold_state(len(self.paced))

    # --- the event loop ---------------------------------------------------------------------

    def _push(self, time: float, kind: int, row: int, payload: object = None) -> None:
        self.sequence += 1
        heapq.heappush(self.heap, (time, self.sequence, kind, row, payload))

    def simulate(self, progress: Progress | None = None) -> list[RowResult]:
        """Run every row to its horizon; ``progress`` gets the simulated fraction now and then."""
        for index, row in enumerate(self.rows):
            scenario = row.scenario
            if scenario.pacer is Pacer.POISSON:
                row.reactive_rate = self_check_rate(scenario)
            elif scenario.reactive_share > 0:
                row.reactive_rate = scenario.reactive_share * self_check_rate(scenario)
            if row.reactive_rate > 0:
                self._push(row.rng.expovariate(row.reactive_rate), _ARRIVAL, index)
            if math.isfinite(scenario.step_at_seconds):
                self._push(scenario.step_at_seconds, _STEP, index)
        if self.paced or self.progressive:
            self._push(0.0, _TICK, -1)
        report_every = max(self.horizon / 50.0, 1.0)
        next_report = report_every
        heap = self.heap
        ends = [row.scenario.hours * 3600.0 for row in self.rows]
        while heap:
            time, _, kind, index, payload = heapq.heappop(heap)
            if time > self.horizon:
                break
            if index >= 0 and time > ends[index]:
                continue  # this row's horizon is over (rows of a batch may differ)
            if kind == _TICK:
                self._tick(time)
                if time >= next_report and progress is not None:
                    progress(time / self.horizon)
                    next_report += report_every
            elif kind == _RESOLVE:
                self._resolve(index, time, accepted=bool(payload))
            elif kind == _END:
                self._service_end(index, time, float(payload))  # type: ignore[arg-type]
            elif kind == _ABANDON:
                self._abandon(index, time, payload)  # type: ignore[arg-type]
            elif kind == _ARRIVAL:
                self._reactive_arrival(index, time)
            elif kind == _STEP:
                self._step(index, time)
        for row, end in zip(self.rows, ends, strict=True):
            self._account(row, end)
        if self.paced:
            trims = self.state[:, _TRIM]
            for position, index in enumerate(self.paced):
                self.rows[index].result.final_trim = float(trims[position])
        if progress is not None:
            progress(1.0)
        return [row.result for row in self.rows]

    # --- the world --------------------------------------------------------------------------

    def _measuring(self, row: _Row, time: float) -> bool:
        scenario = row.scenario
        return scenario.warmup_hours * 3600.0 <= time <= scenario.hours * 3600.0

    def _account(self, row: _Row, time: float) -> None:
        """Integrate busy and staffed slot-time up to ``time`` (after the warm-up only)."""
        start = max(row.last_time, row.scenario.warmup_hours * 3600.0)
        time = min(time, row.scenario.hours * 3600.0)
        if time > start:
            row.result.busy_seconds += min(row.busy, row.staffed) * (time - start)
            row.result.staffed_seconds += row.staffed * (time - start)
        row.last_time = max(row.last_time, time)

    def _arrive(self, index: int, time: float, visitor_class: int) -> None:
        row = self.rows[index]
        measured = self._measuring(row, time)
        if measured:
            row.result.accepted[visitor_class] += 1
            row.result.window_accepted[int(time // WINDOW_SECONDS)] += 1
        visitor = [float(visitor_class), time, float(_WAITING), float(measured)]
        if row.busy < row.staffed and not row.waiting:
            self._start(index, time, visitor)
        else:
            row.queue.append(visitor)
            row.waiting += 1
            self._push(time + row.rng.expovariate(row.abandon_rate), _ABANDON, index, visitor)

    def _start(self, index: int, time: float, visitor: list[float]) -> None:
        row = self.rows[index]
        self._account(row, time)
        row.busy += 1
        row.answered += 1
        visitor[2] = _SERVED
        handle = row.handle_time()
        self._push(time + handle, _END, index, handle)

    def _service_end(self, index: int, time: float, handle: float) -> None:
        row = self.rows[index]
        self._account(row, time)
        row.busy -= 1
        row.aht += AHT_WEIGHT * (handle - row.aht)
        while row.busy < row.staffed and row.queue:
            visitor = row.queue.popleft()
            if visitor[2] == _WAITING:
                row.waiting -= 1
                self._start(index, time, visitor)

    def _abandon(self, index: int, time: float, visitor: list[float]) -> None:
        if visitor[2] != _WAITING:
            return
        row = self.rows[index]
        visitor[2] = _ABANDONED
        row.waiting -= 1
        row.abandoned_total += 1
        if visitor[3]:
            row.result.abandoned[int(visitor[0])] += 1
            row.result.window_abandoned[int(visitor[1] // WINDOW_SECONDS)] += 1

    def _resolve(self, index: int, time: float, *, accepted: bool) -> None:
        row = self.rows[index]
        row.pending -= 1
        row.resolved += 1
        if accepted:
            row.offers_accepted += 1
            self._arrive(index, time, _PROACTIVE)

    def _reactive_arrival(self, index: int, time: float) -> None:
        row = self.rows[index]
        self._push(time + row.rng.expovariate(row.reactive_rate), _ARRIVAL, index)
        if row.scenario.pacer is Pacer.POISSON:
            self._arrive(index, time, _PROACTIVE)
            return
        row.reactive_total += 1
        measured = self._measuring(row, time)
        if measured:
            row.result.reactive_offered += 1
        if row.rng.random() < row.reactive_state:
            self._arrive(index, time, _REACTIVE)
        elif measured:
            row.result.reactive_refused += 1

    def _step(self, index: int, time: float) -> None:
        row = self.rows[index]
        stress = row.scenario.stress
        self._account(row, time)
        if stress is Stress.LOGOUT:
            row.staffed = max(row.scenario.slots // 2, 1)
        elif stress is Stress.SLOWER:
            row._set_handle(2.0 * row.scenario.handle_time)
        elif stress is Stress.ACCEPT_HALVES:
            row.accept_probability /= 2.0

    # --- one refresh cycle ------------------------------------------------------------------

    def _tick(self, time: float) -> None:
        if time + self.period <= self.horizon:
            self._push(time + self.period, _TICK, -1)
        if self.paced:
            self._pace(time)
        if self.progressive:
            self._pace_progressive(time)

    def _send(self, index: int, time: float, count: int) -> None:
        row = self.rows[index]
        row.sent += count
        row.pending += count
        if self._measuring(row, time):
            row.result.invitations += count
        rng = row.rng
        for _ in range(count):
            accepted = rng.random() < row.accept_probability
            self._push(time + rng.expovariate(row.resolve_rate), _RESOLVE, index, accepted)

    def _pace(self, time: float) -> None:
        rows = [self.rows[i] for i in self.paced]
        inputs = PacingInputs.empty(len(rows))
        inputs.agents_ready[:] = [max(r.staffed - r.busy, 0) for r in rows]
        inputs.agents_busy[:] = [r.busy for r in rows]
        inputs.interactions_waiting[:] = [r.waiting for r in rows]
        inputs.aht_seconds[:] = [r.aht for r in rows]
        inputs.answered_total[:] = [r.answered for r in rows]
        inputs.abandoned_total[:] = [r.abandoned_total for r in rows]
        inputs.reactive_arrivals_total[:] = [r.reactive_total for r in rows]
        inputs.offers_sent_total[:] = [r.sent for r in rows]
        inputs.offers_accepted_total[:] = [_reported_accepted(r) for r in rows]
        inputs.offers_resolved_total[:] = [r.resolved for r in rows]
        inputs.offers_pending[:] = [r.pending for r in rows]
        for position, row in enumerate(rows):
            stress = row.scenario.stress
            if stress is Stress.STALE_FEED and row.rng.random() < 0.1:
                inputs.input_reason[position] = Reason.STALE
                inputs.agents_ready[position] = math.nan
            elif stress is Stress.NONFINITE_FEED and row.rng.random() < 0.1:
                column = row.rng.choice(("agents_ready", "aht_seconds", "offers_pending"))
                getattr(inputs, column)[position] = row.rng.choice((math.nan, math.inf, -1.0))
        result = pace(
            inputs, self.targets, self.state, parameters=self.parameters, now=EPOCH + time
        )
        self.state = result.state
        budgets = result.proactive_budget
        caps = self.targets.max_budget
        for position, index in enumerate(self.paced):
            row = rows[position]
            budget = int(budgets[position])
            if not 0 <= budget <= caps[position]:
                row.result.budget_errors += 1
                budget = 0
            row.reactive_state = float(result.reactive_state[position])
            if self._measuring(row, time):
                row.result.reactive_state_sum += row.reactive_state
                row.result.ticks += 1
            if budget:
                self._send(index, time, budget)

    def _pace_progressive(self, time: float) -> None:
        """The naive rule of §3: n = (f − Q − q·P)/p, p from the same feedback counters."""
        prior_accepted, prior_resolved = _BASELINE_PRIOR
        for index in self.progressive:
            row = self.rows[index]
            p = (prior_accepted + row.offers_accepted) / (prior_resolved + row.resolved)
            free = max(row.staffed - row.busy, 0)
            wanted = max((free - row.waiting - p * row.pending) / p, 0.0)
            wanted = min(wanted, float(row.scenario.max_budget))
            accumulated = wanted + row.carry
            budget = math.floor(accumulated)
            row.carry = accumulated - budget if wanted > 0 else 0.0
            if budget:
                self._send(index, time, budget)


def _reported_accepted(row: _Row) -> float:
    if row.scenario.stress is Stress.UNDERREPORTED:
        return math.floor(0.8 * row.offers_accepted)
    return float(row.offers_accepted)


def simulate_rows(
    rows: Sequence[tuple[Scenario, int]], progress: Progress | None = None
) -> list[RowResult]:
    """Simulate ``rows`` (one refresh period) as one batch and return their measurements."""
    return Run(rows).simulate(progress)


def as_float_array(values: Sequence[float]) -> NDArray[np.float64]:
    """``values`` as a float64 array."""
    return np.asarray(values, dtype=np.float64)
