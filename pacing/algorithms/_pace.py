"""One pacing cycle for n targets: safety layer, estimators, the rule of each target, rounding.

The order inside :func:`pace` (algorithm.md §2 before §4):

1. rows whose statistics or configuration are unusable get budget 0 with their reason and keep
   their previous state, so missing data never reaches the estimators;
2. the estimators take this cycle's counters (:mod:`._estimators`), and the smoothed group size
   AUTO reads next cycle is updated;
3. nobody staffed → ``NO_AGENTS``; a queue far longer than the group → ``QUEUE_FULL``;
4. the trim β takes this cycle's feedback (§6);
5. each remaining row is paced by the rule of its algorithm (:data:`RULES`; AUTO by group
   size), with the prior parameters and SUPER_PROGRESSIVE during a cold start;
6. the fractional budgets are rounded with a carry and capped per target and over all targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from pacing.algorithms import _dual, _predictive_b, _safety
from pacing.algorithms._estimators import (
    Estimates,
    Observation,
    estimate,
    observe,
    update_trim,
    with_priors,
)
from pacing.algorithms._state import StateColumn as Col
from pacing.algorithms._state import clip_or, known_or, sanitize
from pacing.algorithms._super_progressive import super_progressive_budget, survival_exponent
from pacing.algorithms._types import (
    ALGORITHMS,
    OBJECTIVES,
    PacingInputs,
    PacingParameters,
    PacingResult,
    PacingTargets,
)
from pacing.domain import Algorithm, Objective, Reason

Array = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Model:
    """Everything a rule needs about a batch of rows (algorithm.md §1), all arrays of one length."""

    free_slots: Array  # f
    busy_slots: Array  # b
    waiting: Array  # Q
    pending: Array  # P, whole invitations
    estimates: Estimates  # p (= q), d, h, θ, λ_r
    allowance: Array  # g · e^β: abandonments allowed per accepted invitation (§4.4, §6)
    dual: NDArray[np.bool_]  # SUPER_PROGRESSIVE_DUAL or PREDICTIVE_B_DUAL
    proactive_ratio: Array  # in [0, 1]
    cap: Array  # per-target maximum budget, whole invitations
    goal: Array  # the configured goal as a fraction (abandonment or busy factor), in [0, 1]
    busy_factor: NDArray[np.bool_]  # the goal is a BUSY_FACTOR
    trim: Array  # β of §6 (0 where unknown)


class Decision(NamedTuple):
    """A rule's answer: fractional budgets (rounded later) and reactive admission probabilities."""

    budget: Array
    reactive_state: Array


Rule = Callable[[Model, PacingParameters], Decision]


def _operating(model: Model, parameters: PacingParameters) -> _predictive_b.Operating:
    """λ*, E[B]* and E[Q]* of every row at its goal (Erlang-A, §5.1–5.2)."""
    estimates = model.estimates
    return _predictive_b.operating_rate(
        servers=model.free_slots + model.busy_slots,
        handle_time=estimates.handle_time,
        abandon_rate=estimates.abandon_rate,
        goal=model.goal,
        busy_factor=model.busy_factor,
        busy_ceiling=parameters.busy_factor_abandonment_ceiling,
    )


def super_progressive(model: Model, parameters: PacingParameters) -> Decision:
    """SUPER_PROGRESSIVE (§4), with the reserve and reactive forecast of its dual variant (§7)."""
    estimates = model.estimates
    handle_time = estimates.handle_time
    horizon = estimates.resolve_delay  # τ = d: acceptances arrive within about one delay
    servers = model.free_slots + model.busy_slots
    # The reserve and the reactive term of F are sized for the reactive load up to its share of
    # the group's full capacity N·μ, which does not depend on the goal: sized on λ* instead, a
    # higher goal would admit more reactive load and could lower the proactive budget. It is at
    # least the load admitted (the share of λ* ≤ N·μ below), so it errs towards reactive visitors.
    admitted, _ = _dual.reactive_admission(
        reactive_rate=estimates.reactive_rate,
        operating_rate=_dual.capacity_rate(servers, handle_time),
        proactive_ratio=model.proactive_ratio,
    )
    admitted = np.where(model.dual, admitted, 0.0)
    admission = np.ones(servers.size)
    dual = np.flatnonzero(model.dual)
    if dual.size:
        # reactive_state admits the reactive share of λ*, the rate unpaced (Poisson) traffic
        # can have at the goal (§7); only dual rows need the Erlang-A operating point.
        operating = _operating(_subset(model, dual), parameters)
        _, admission[dual] = _dual.reactive_admission(
            reactive_rate=estimates.reactive_rate[dual],
            operating_rate=operating.rate,
            proactive_ratio=model.proactive_ratio[dual],
        )
    reserve = np.where(model.dual, _dual.reactive_reserve(admitted, handle_time), 0.0)
    # §4.1: F = f − R + b·(1 − e^(−τ/h)) − λ_r·τ. The reactive term uses the admitted rate:
    # refused reactive requests never take a slot.
    freed = model.busy_slots * -np.expm1(-horizon / handle_time)
    capacity = model.free_slots - reserve + freed - admitted * horizon
    headroom = capacity - model.waiting
    # A BUSY_FACTOR target whose trim has turned negative is busier than its goal even at the
    # abandonment allowance's floor, where SUPER_PROGRESSIVE still fills free slots with
    # invitations that cannot overflow them; the trim then also shrinks the free capacity.
    shrink = np.where(model.busy_factor & (model.trim < 0), np.exp(model.trim), 1.0)
    headroom = np.where(headroom > 0, headroom * shrink, headroom)
    budget = super_progressive_budget(
        headroom=headroom,
        pending=model.pending,
        accept_probability=estimates.accept_probability,
        accept_concentration=estimates.accept_concentration,
        survival=survival_exponent(servers, handle_time, estimates.abandon_rate),
        allowance=model.allowance,
        cap=model.cap,
        interpolate=parameters.super_progressive_interpolate,
    )
    return Decision(budget=budget, reactive_state=np.where(model.dual, admission, 1.0))


def predictive_b(model: Model, parameters: PacingParameters) -> Decision:
    """PREDICTIVE_B (§5), with the reactive admission of its dual variant (§7)."""
    estimates = model.estimates
    operating = _operating(model, parameters)
    admitted, admission = _predictive_b.reactive_admission(
        operating=operating,
        reactive_rate=estimates.reactive_rate,
        proactive_ratio=model.proactive_ratio,
        dual=model.dual,
    )
    budget = _predictive_b.predictive_b_budget(
        operating=operating,
        busy_slots=model.busy_slots,
        waiting=model.waiting,
        pending=model.pending,
        accept_probability=estimates.accept_probability,
        resolve_delay=estimates.resolve_delay,
        admitted_reactive_rate=admitted,
        trim=model.trim,
        refresh_period=parameters.refresh_period_seconds,
        gain=parameters.predictive_gain,
    )
    return Decision(budget=np.minimum(budget, model.cap), reactive_state=admission)


#: THE DISPATCH POINT: the rule that paces each configured algorithm. AUTO is paced by
#: :data:`AUTO_LARGE_RULE` where the target's group (staffed slots, smoothed over
#: ``group_size_memory_seconds`` and read as it was before this cycle) has at least
#: ``large_group_slots`` slots, and by its entry here below that. Whatever the mapping, a
#: cold-start row is paced with SUPER_PROGRESSIVE and the priors (§2).
RULES: Mapping[Algorithm, Rule] = {
    Algorithm.AUTO: super_progressive,
    Algorithm.SUPER_PROGRESSIVE: super_progressive,
    Algorithm.SUPER_PROGRESSIVE_DUAL: super_progressive,
    Algorithm.PREDICTIVE_B: predictive_b,
    Algorithm.PREDICTIVE_B_DUAL: predictive_b,
}
AUTO_LARGE_RULE: Rule = predictive_b
COLD_START_RULE: Rule = super_progressive
_AUTO = ALGORITHMS.index(Algorithm.AUTO)
_PREDICTIVE = ALGORITHMS.index(Algorithm.PREDICTIVE_B)
_PREDICTIVE_DUAL = ALGORITHMS.index(Algorithm.PREDICTIVE_B_DUAL)

_DUAL = np.array([algorithm.is_dual for algorithm in ALGORITHMS])
_BUSY_FACTOR = OBJECTIVES.index(Objective.BUSY_FACTOR)
#: The array fields of the inputs and targets (dataclasses.fields is slow enough to matter).
_FIELDS = tuple(
    tuple(field.name for field in fields(kind)) for kind in (PacingInputs, PacingTargets)
)


def pace(
    inputs: PacingInputs,
    targets: PacingTargets,
    state: NDArray[np.float64],
    *,
    parameters: PacingParameters,
    now: float,
) -> PacingResult:
    """Budgets, reactive states, reasons and the next state for n targets (one refresh cycle).

    Never raises for bad data: every row gets a finite budget in [0, max_budget]. Raises
    ``ValueError`` only when the arrays of ``inputs`` and ``targets`` differ in length, which is
    a bug in the caller, not bad data.
    """
    n = len(inputs.input_reason)
    _check_lengths(inputs, targets, n)
    previous = sanitize(state, n)
    reason = _safety.input_reasons(inputs.input_reason, n)
    reason[_safety.misconfigured(targets) & (reason == Reason.OK)] = Reason.ERROR
    slots = parameters.max_plausible_slots
    # Slots and interactions are whole numbers; a fraction is noise (and 1e-308 slots would
    # divide the model by almost nothing).
    free = np.rint(_safety.plausible(inputs.agents_ready, limit=slots))
    busy = np.rint(_safety.plausible(inputs.agents_busy, limit=slots))
    waiting = np.rint(_safety.plausible(inputs.interactions_waiting, limit=slots))
    unreadable = np.isnan(free) | np.isnan(busy) | np.isnan(waiting)
    reason[unreadable & (reason == Reason.OK)] = Reason.ERROR

    budget = np.zeros(n, dtype=np.int64)
    reactive_state = np.ones(n)
    new_state = previous.copy()
    rows = np.flatnonzero(reason == Reason.OK)
    if rows.size:
        cycle = _pace_rows(
            rows,
            inputs=inputs,
            targets=targets,
            previous=previous[rows],
            staffing=(free[rows], busy[rows], waiting[rows]),
            parameters=parameters,
            now=float(now),
        )
        budget[rows], reactive_state[rows], reason[rows], new_state[rows] = cycle
    budget = _safety.apply_global_cap(budget, parameters.global_budget_cap)
    return PacingResult(
        proactive_budget=budget, reactive_state=reactive_state, reason=reason, state=new_state
    )


class _RowsResult(NamedTuple):
    budget: NDArray[np.int64]
    reactive_state: Array
    reason: NDArray[np.int8]
    state: Array


def _pace_rows(
    rows: NDArray[np.intp],
    *,
    inputs: PacingInputs,
    targets: PacingTargets,
    previous: Array,
    staffing: tuple[Array, Array, Array],
    parameters: PacingParameters,
    now: float,
) -> _RowsResult:
    """Steps 2–6 of the module docstring for the rows whose statistics are usable."""
    free, busy, waiting = staffing
    count = rows.size

    def counter(values: NDArray[np.float64]) -> Array:
        return _safety.plausible(values[rows], limit=_safety.LARGEST_COUNTER)

    # Budgets are whole invitations; garbage reads as none in flight (the next feedback has them).
    in_flight = _safety.plausible(inputs.offers_in_flight[rows], limit=_safety.LARGEST_COUNTER)
    in_flight = np.where(np.isfinite(in_flight), in_flight, 0.0)
    observation = Observation(
        answered_total=counter(inputs.answered_total),
        abandoned_total=counter(inputs.abandoned_total),
        reactive_arrivals_total=counter(inputs.reactive_arrivals_total),
        offers_accepted_total=counter(inputs.offers_accepted_total),
        offers_resolved_total=counter(inputs.offers_resolved_total),
        offers_pending=counter(inputs.offers_pending),
        interactions_waiting=waiting,
        agents_busy=busy,
        aht_seconds=counter(inputs.aht_seconds),
    )
    elapsed = now - previous[:, Col.OBSERVED_AT]
    state, outcomes = observe(previous, observation, now=now, parameters=parameters)

    servers = free + busy
    # AUTO reads the group size as it was before this cycle, so that this cycle's staffing moves
    # the budget only through the rule (more free slots never lower it); a group seen for the
    # first time is small until it has a history (it cold-starts with SUPER_PROGRESSIVE anyway).
    remembered = previous[:, Col.GROUP_SIZE]
    large = remembered >= parameters.large_group_slots
    with np.errstate(all="ignore"):
        weight = -np.expm1(-np.maximum(elapsed, 0.0) / parameters.group_size_memory_seconds)
        smoothed = remembered + np.where(np.isfinite(weight), weight, 0.0) * (servers - remembered)
    state[:, Col.GROUP_SIZE] = np.where(np.isnan(remembered), servers, smoothed)
    reason = np.full(count, Reason.OK, dtype=np.int8)
    no_agents = servers <= 0
    queue_full = ~no_agents & (waiting > parameters.queue_full_factor * servers)
    reason[no_agents] = Reason.NO_AGENTS
    reason[queue_full] = Reason.QUEUE_FULL
    paced = ~no_agents & ~queue_full

    algorithm = np.asarray(targets.algorithm, dtype=np.int64)[rows]
    busy_factor = np.asarray(targets.objective, dtype=np.int64)[rows] == _BUSY_FACTOR
    goal = np.clip(np.asarray(targets.goal, dtype=np.float64)[rows], 0.0, 1.0)
    with np.errstate(all="ignore"):
        busy_share = np.where(paced, busy / servers, 0.0)
    # Abandonments while nobody is staffed or the queue overflows are not the pacing's doing;
    # letting them drag β down would keep the target under-paced long after recovery (§6).
    trim = update_trim(
        state[:, Col.TRIM],
        busy_factor=busy_factor,
        goal=goal,
        outcomes=outcomes,
        busy_share=busy_share,
        parameters=parameters,
        learning_rate=np.where(
            (algorithm == _PREDICTIVE)
            | (algorithm == _PREDICTIVE_DUAL)
            | ((algorithm == _AUTO) & large),
            parameters.trim_learning_rate,
            parameters.small_group_trim_learning_rate,
        ),
    )
    # A stored β outside [trim_min, trim_max] (state written under other parameters, or
    # damaged) is brought back into range for every row, paced or not: e^β must stay finite.
    state[:, Col.TRIM] = np.clip(
        np.where(paced, trim, state[:, Col.TRIM]), parameters.trim_min, parameters.trim_max
    )
    # A PREDICTIVE_B_DUAL target never pushes past the Erlang-A operating point: its reactive
    # visitors arrive at random, not paced, and would take the extra abandonments (with the
    # trim free, the evaluation saw 5.5 % reactive abandonment at 30 slots for a 3 % goal).
    # Clamping the stored trim, not just its use, keeps it from winding up.
    state[:, Col.TRIM] = np.where(
        algorithm == _PREDICTIVE_DUAL, np.minimum(state[:, Col.TRIM], 0.0), state[:, Col.TRIM]
    )

    estimates = estimate(state, parameters)
    state[:, Col.ACCEPT_PROBABILITY] = estimates.accept_probability
    state[:, Col.RESOLVE_DELAY_SECONDS] = estimates.resolve_delay
    state[:, Col.ABANDON_RATE_PER_SECOND] = estimates.abandon_rate
    state[:, Col.REACTIVE_RATE_PER_SECOND] = estimates.reactive_rate
    reason[paced & estimates.cold] = Reason.COLD_START

    base_goal = np.where(busy_factor, parameters.busy_factor_abandonment, goal)
    model = Model(
        free_slots=free,
        busy_slots=busy,
        waiting=waiting,
        pending=np.floor(known_or(state[:, Col.LAST_OFFERS_PENDING], 0.0)) + np.floor(in_flight),
        estimates=with_priors(estimates, parameters),
        allowance=base_goal * np.exp(known_or(state[:, Col.TRIM], 0.0)),
        dual=_DUAL[algorithm],
        proactive_ratio=np.clip(np.asarray(targets.proactive_ratio)[rows], 0.0, 1.0),
        cap=_safety.budget_caps(
            np.asarray(targets.max_budget)[rows], parameters.budget_search_limit
        ),
        goal=goal,
        busy_factor=busy_factor,
        trim=known_or(state[:, Col.TRIM], 0.0),
    )
    fractional = np.zeros(count)
    reactive_state = np.ones(count)
    for rule, chosen in _dispatch(algorithm, estimates.cold, paced, large):
        # Inputs are validated, but a rule must not turn an extreme yet valid row into a
        # floating-point warning (which a worker run with -W error would raise); the safety
        # layer below clips whatever comes back.
        with np.errstate(all="ignore"):
            batch = model if chosen.size == count else _subset(model, chosen)
            decision = rule(batch, parameters)
        fractional[chosen] = decision.budget
        reactive_state[chosen] = decision.reactive_state

    # A target the engagement platform has never reported counters for (new, or its state was
    # lost) may have invitations outstanding that nothing counts: it waits for the answer to
    # one publish, which lists every target of a full snapshot (docs/contracts.md §2). After a
    # wiped Redis, pacing on without it doubled what was outstanding: 5.7 % abandonment in the
    # next minute at a 3 % goal (1,000 targets, virtual time).
    unreported = paced & np.isnan(state[:, Col.LAST_OFFERS_PENDING])
    fractional[unreported] = 0.0
    reason[unreported] = Reason.COLD_START
    budget, carry = _safety.carry_round(fractional, known_or(state[:, Col.CARRY], 0.0), model.cap)
    # A target that could not be paced owes nothing when it can again.
    state[:, Col.CARRY] = np.where(paced, carry, 0.0)
    budget[~paced] = 0
    return _RowsResult(
        budget=budget,
        reactive_state=clip_or(reactive_state, 0.0, 1.0, 1.0),
        reason=reason,
        state=state,
    )


def _dispatch(
    algorithm: NDArray[np.int64],
    cold: NDArray[np.bool_],
    paced: NDArray[np.bool_],
    large: NDArray[np.bool_],
) -> list[tuple[Rule, NDArray[np.intp]]]:
    """Each rule in use with the rows it paces.

    Cold rows go to :data:`COLD_START_RULE`, AUTO rows of a large group to
    :data:`AUTO_LARGE_RULE`, every other row to its algorithm's entry in :data:`RULES`.
    """
    rules = list(dict.fromkeys([*RULES.values(), AUTO_LARGE_RULE, COLD_START_RULE]))
    rule_of_algorithm = np.array([rules.index(RULES[candidate]) for candidate in ALGORITHMS])
    which = rule_of_algorithm[algorithm]
    which[(algorithm == _AUTO) & large] = rules.index(AUTO_LARGE_RULE)
    which[cold] = rules.index(COLD_START_RULE)
    which[~paced] = -1
    chosen = []
    for index in np.unique(which[which >= 0]).tolist():
        chosen.append((rules[index], np.flatnonzero(which == index)))
    return chosen


def _subset(model: Model, rows: NDArray[np.intp]) -> Model:
    estimates = model.estimates
    return Model(
        free_slots=model.free_slots[rows],
        busy_slots=model.busy_slots[rows],
        waiting=model.waiting[rows],
        pending=model.pending[rows],
        estimates=Estimates(
            accept_probability=estimates.accept_probability[rows],
            accept_concentration=estimates.accept_concentration[rows],
            resolve_delay=estimates.resolve_delay[rows],
            handle_time=estimates.handle_time[rows],
            abandon_rate=estimates.abandon_rate[rows],
            reactive_rate=estimates.reactive_rate[rows],
            cold=estimates.cold[rows],
        ),
        allowance=model.allowance[rows],
        dual=model.dual[rows],
        proactive_ratio=model.proactive_ratio[rows],
        cap=model.cap[rows],
        goal=model.goal[rows],
        busy_factor=model.busy_factor[rows],
        trim=model.trim[rows],
    )


def _check_lengths(inputs: PacingInputs, targets: PacingTargets, n: int) -> None:
    lengths = {
        name: np.shape(getattr(container, name))
        for container, names in zip((inputs, targets), _FIELDS, strict=True)
        for name in names
    }
    wrong = sorted(name for name, shape in lengths.items() if shape != (n,))
    if wrong:
        raise ValueError(
            f"Pacing arrays must all have length {n} (the length of input_reason); "
            f"these do not: {', '.join(wrong)}. Build them from the same list of targets."
        )
