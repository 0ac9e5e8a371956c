"""Estimators of p, d, h, θ and λ_r from cumulative counters, and the trim β (algorithm.md §1, §6).

Every estimator except h is a ratio of two exponentially forgotten sums with a prior in
pseudo-observations::

    p  = (w_p·p₀ + accepted) / (w_p + resolved)          a Beta(w_p·p₀, w_p·(1 − p₀)) prior
    d  = (w_d·d₀ + ∫P dt)    / (w_d + resolved)          Little's law: pending = rate × delay
    h  = (w_h·h₀ + ∫b dt)    / (w_h + completed)         Little's law: busy = rate × handle time
    θ  = (w_θ   + abandoned) / (w_θ/θ₀ + ∫Q dt)          abandonments per second of waiting
    λ_r = reactive arrivals  / elapsed time

so that a target with little data stays near its prior and one with much data follows its own
recent history. Completed interactions are the answered ones less the growth of the busy slots.

h is the larger of that and the exponentially weighted mean of the Stat Server's AHT. The AHT
alone is biased low while a group fills up: it averages the interactions that have *ended*, and
early on only the short ones have (a 150-slot group of the simulator, handle time 180 s on
average, reported 33 s a minute after its start and 54 s five minutes later, and PREDICTIVE_B,
taking the group for five times faster than it is, queued 98 visitors). Little's law errs the
other way while the group fills (busy time accrues before the interactions end), which is the
safe way; in a steady state both agree, and either one seeing long interactions is believed.

Counts come from differences of cumulative counters, which makes missed cycles harmless. A
counter lower than last seen (a gateway restart) re-bases instead of producing a negative count;
a missing counter is forgotten, so it re-bases when it returns. Each ratio's numerator and
denominator are only ever advanced over the same intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from pacing.algorithms._state import StateColumn as Col
from pacing.algorithms._state import clip_or, known_or
from pacing.algorithms._types import PacingParameters

Array = NDArray[np.float64]

#: Plausible ranges of the estimates; a value outside is a data problem, not a contact centre.
ACCEPT_PROBABILITY_RANGE = (0.001, 1.0)  # algorithm.md §2: clamp p and q to [0.001, 1]
RESOLVE_DELAY_RANGE = (0.1, 3600.0)
HANDLE_TIME_RANGE = (1.0, 86_400.0)
ABANDON_RATE_RANGE = (1.0 / 86_400.0, 1.0)  # patience between one second and one day
REACTIVE_RATE_MAX = 1000.0  # arrivals per second


class Observation(NamedTuple):
    """This cycle's cumulative counters and readings for the observed rows (NaN if missing)."""

    answered_total: Array
    abandoned_total: Array
    reactive_arrivals_total: Array
    offers_accepted_total: Array
    offers_resolved_total: Array
    offers_pending: Array
    interactions_waiting: Array
    agents_busy: Array
    aht_seconds: Array


class Outcomes(NamedTuple):
    """Interactions served and abandoned since the last observation (NaN where unknown)."""

    served: Array
    abandoned: Array


@dataclass(frozen=True, slots=True)
class Estimates:
    """The model parameters of §1 for a batch of rows."""

    accept_probability: Array  # p, also used as q (§1: q ≈ p)
    #: α + β of p's Beta posterior: the prior's weight plus the resolved invitations remembered
    #: (how sure p is; SUPER_PROGRESSIVE's acceptances are beta-binomial with it)
    accept_concentration: Array
    resolve_delay: Array  # d, seconds
    handle_time: Array  # h, seconds
    abandon_rate: Array  # θ, per second
    reactive_rate: Array  # λ_r, per second
    cold: NDArray[np.bool_]  # fewer observations than the cold-start rule asks for (§2)


def observe(
    state: Array, observation: Observation, *, now: float, parameters: PacingParameters
) -> tuple[Array, Outcomes]:
    """Advance the estimators' sums of ``state`` (rows with valid statistics) to ``now``."""
    new = state.copy()
    with np.errstate(all="ignore"):
        elapsed = now - state[:, Col.OBSERVED_AT]
        timed = np.isfinite(elapsed) & (elapsed > 0)
        # Over a long gap the left-point integrals ∫P dt and ∫Q dt below would be guesses, so
        # counter differences are only paired with them over short gaps; longer gaps re-base.
        paired = timed & (elapsed <= parameters.max_observation_gap_seconds)
        seconds = np.where(timed, elapsed, 0.0)

        def forgetting(memory_seconds: float) -> Array:
            return np.exp(-seconds / memory_seconds)

        def difference(current: Array, column: Col) -> Array:
            change = current - state[:, column]
            new[:, column] = current
            return np.where(paired & (change >= 0), change, np.nan)

        def advance(
            column: Col, factor: Array, increment: Array, usable: NDArray[np.bool_]
        ) -> None:
            new[:, column] = known_or(state[:, column], 0.0) * factor + np.where(
                usable, increment, 0.0
            )

        # p and d from the engagement feedback. The integral uses the pending count at the
        # start of the interval (left point) because that is what was observed.
        accepted = difference(observation.offers_accepted_total, Col.LAST_OFFERS_ACCEPTED_TOTAL)
        resolved = difference(observation.offers_resolved_total, Col.LAST_OFFERS_RESOLVED_TOTAL)
        last_pending = state[:, Col.LAST_OFFERS_PENDING]
        feedback = np.isfinite(accepted) & np.isfinite(resolved) & np.isfinite(last_pending)
        accepted = np.minimum(accepted, resolved)
        factor = forgetting(parameters.feedback_memory_seconds)
        advance(Col.ACCEPTED_WEIGHT, factor, accepted, feedback)
        advance(Col.RESOLVED_WEIGHT, factor, resolved, feedback)
        advance(Col.PENDING_SECONDS_WEIGHT, factor, last_pending * seconds, feedback)
        advance(Col.RESOLVED_SEEN, np.ones_like(factor), resolved, feedback)
        pending = observation.offers_pending
        new[:, Col.LAST_OFFERS_PENDING] = np.where(np.isfinite(pending), pending, last_pending)

        # θ from abandonments over waiting time. The waiting integral uses the queue seen at the
        # start of the interval: over the estimator's memory it differs from the trapezoid only
        # by a boundary term, and it keeps this cycle's decision independent of this cycle's
        # queue except through the rule itself (so a longer queue never raises the budget).
        abandoned = difference(observation.abandoned_total, Col.LAST_ABANDONED_TOTAL)
        last_waiting = state[:, Col.LAST_INTERACTIONS_WAITING]
        queue_known = np.isfinite(abandoned) & np.isfinite(last_waiting)
        factor = forgetting(parameters.patience_memory_seconds)
        advance(Col.ABANDONED_WEIGHT, factor, abandoned, queue_known)
        advance(Col.WAITING_SECONDS_WEIGHT, factor, last_waiting * seconds, queue_known)
        new[:, Col.LAST_INTERACTIONS_WAITING] = observation.interactions_waiting

        served = difference(observation.answered_total, Col.LAST_ANSWERED_TOTAL)
        advance(Col.COMPLETED_SEEN, np.ones_like(factor), served, np.isfinite(served))

        # h by Little's law: busy slots are completions per second times the handle time.
        # Completed = answered − growth of the busy slots; the busy integral is a trapezoid,
        # since b is read at both ends of the interval.
        busy = observation.agents_busy
        last_busy = state[:, Col.LAST_AGENTS_BUSY]
        completed = served - (busy - last_busy)
        counted = np.isfinite(completed) & np.isfinite(busy) & (completed >= 0)
        factor = forgetting(parameters.busy_memory_seconds)
        advance(Col.BUSY_SECONDS_WEIGHT, factor, 0.5 * (last_busy + busy) * seconds, counted)
        advance(Col.COMPLETED_WEIGHT, factor, completed, counted)
        new[:, Col.LAST_AGENTS_BUSY] = busy

        # λ_r as arrivals over elapsed time, both forgotten alike: a rate that starts unbiased.
        arrivals = difference(observation.reactive_arrivals_total, Col.LAST_REACTIVE_ARRIVALS_TOTAL)
        known = np.isfinite(arrivals)
        factor = forgetting(parameters.reactive_memory_seconds)
        advance(Col.REACTIVE_WEIGHT, factor, arrivals, known)
        advance(Col.REACTIVE_SECONDS_WEIGHT, factor, seconds, known)

        # h: the Stat Server's AHT is already a windowed mean; smooth it over time.
        aht = observation.aht_seconds
        low, high = HANDLE_TIME_RANGE
        aht = np.where((aht >= low) & (aht <= high), aht, np.nan)
        previous = state[:, Col.HANDLE_TIME_SECONDS]
        weight = 1.0 - forgetting(parameters.handle_time_memory_seconds)
        smoothed = np.where(np.isnan(previous), aht, previous + weight * (aht - previous))
        new[:, Col.HANDLE_TIME_SECONDS] = np.where(np.isnan(aht), previous, smoothed)

        if np.isfinite(now):
            new[:, Col.OBSERVED_AT] = now
    return new, Outcomes(served=served, abandoned=abandoned)


def estimate(state: Array, parameters: PacingParameters) -> Estimates:
    """The estimates of §1 from the sums in ``state`` (as left by :func:`observe`)."""
    with np.errstate(all="ignore"):
        accepted = known_or(state[:, Col.ACCEPTED_WEIGHT], 0.0)
        resolved = known_or(state[:, Col.RESOLVED_WEIGHT], 0.0)
        pending_seconds = known_or(state[:, Col.PENDING_SECONDS_WEIGHT], 0.0)
        abandoned = known_or(state[:, Col.ABANDONED_WEIGHT], 0.0)
        waiting_seconds = known_or(state[:, Col.WAITING_SECONDS_WEIGHT], 0.0)
        arrivals = known_or(state[:, Col.REACTIVE_WEIGHT], 0.0)
        arrival_seconds = known_or(state[:, Col.REACTIVE_SECONDS_WEIGHT], 0.0)

        accept_weight = parameters.prior_accept_weight
        accept_probability = (accept_weight * parameters.prior_accept_probability + accepted) / (
            accept_weight + resolved
        )
        resolve_weight = parameters.prior_resolve_weight
        resolve_delay = (
            resolve_weight * parameters.prior_resolve_delay_seconds + pending_seconds
        ) / (resolve_weight + resolved)
        patience_weight = parameters.prior_patience_weight
        abandon_rate = (patience_weight + abandoned) / (
            patience_weight * parameters.prior_patience_seconds + waiting_seconds
        )
        reactive_rate = np.where(arrival_seconds > 0, arrivals / arrival_seconds, 0.0)
        handle_weight = parameters.prior_handle_weight
        busy_seconds = known_or(state[:, Col.BUSY_SECONDS_WEIGHT], 0.0)
        completed = known_or(state[:, Col.COMPLETED_WEIGHT], 0.0)
        little = (handle_weight * parameters.prior_handle_time_seconds + busy_seconds) / (
            handle_weight + completed
        )
        handle_time = np.fmax(little, state[:, Col.HANDLE_TIME_SECONDS])  # fmax skips NaN
        cold = (known_or(state[:, Col.RESOLVED_SEEN], 0.0) < parameters.cold_start_min_resolved) | (
            known_or(state[:, Col.COMPLETED_SEEN], 0.0) < parameters.cold_start_min_completed
        )
    prior = _priors(parameters)
    return Estimates(
        accept_probability=_clip(accept_probability, ACCEPT_PROBABILITY_RANGE, prior.p),
        accept_concentration=np.where(
            np.isfinite(resolved) & (resolved >= 0), accept_weight + resolved, accept_weight
        ),
        resolve_delay=_clip(resolve_delay, RESOLVE_DELAY_RANGE, prior.d),
        handle_time=_clip(handle_time, HANDLE_TIME_RANGE, prior.h),
        abandon_rate=_clip(abandon_rate, ABANDON_RATE_RANGE, prior.theta),
        reactive_rate=_clip(reactive_rate, (0.0, REACTIVE_RATE_MAX), 0.0),
        cold=cold,
    )


def with_priors(estimates: Estimates, parameters: PacingParameters) -> Estimates:
    """``estimates`` with p, d and θ replaced by their priors in cold rows (§2, cold start).

    h is kept: it is the Stat Server's own measurement, not something this target has to learn,
    and falls back to its prior by itself when the Stat Server gives none.
    """
    cold = estimates.cold
    prior = _priors(parameters)
    return Estimates(
        accept_probability=np.where(cold, prior.p, estimates.accept_probability),
        accept_concentration=np.where(
            cold, parameters.prior_accept_weight, estimates.accept_concentration
        ),
        resolve_delay=np.where(cold, prior.d, estimates.resolve_delay),
        handle_time=estimates.handle_time,
        abandon_rate=np.where(cold, prior.theta, estimates.abandon_rate),
        reactive_rate=estimates.reactive_rate,
        cold=cold,
    )


def update_trim(
    trim: Array,
    *,
    busy_factor: NDArray[np.bool_],
    goal: Array,
    outcomes: Outcomes,
    busy_share: Array,
    parameters: PacingParameters,
    learning_rate: Array | None = None,
) -> Array:
    """β after this cycle's feedback (§6), clamped to [trim_min, trim_max].

    ABANDONMENT_RATE: each served interaction adds η·g and each abandoned one subtracts
    η·(1 − g), whose only fixed point is an abandonment fraction equal to g. BUSY_FACTOR: each
    cycle adds η_b·(b* − b/N)·Δ. ``learning_rate`` is η per row (default: the parameter).
    """
    with np.errstate(all="ignore"):
        served, abandoned = outcomes
        counted = np.isfinite(served) & np.isfinite(abandoned)
        rate = parameters.trim_learning_rate if learning_rate is None else learning_rate
        abandonment_step = rate * (goal * served - (1.0 - goal) * abandoned)
        busy_step = (
            parameters.busy_trim_learning_rate
            * (goal - busy_share)
            * parameters.refresh_period_seconds
        )
        step = np.where(busy_factor, busy_step, np.where(counted, abandonment_step, 0.0))
        step = np.where(np.isfinite(step), step, 0.0)
        updated = known_or(trim, 0.0) + step
    return _clip(updated, (parameters.trim_min, parameters.trim_max), 0.0)


class _Priors(NamedTuple):
    p: float
    d: float
    h: float
    theta: float


def _priors(parameters: PacingParameters) -> _Priors:
    def clamp(value: float, bounds: tuple[float, float]) -> float:
        return min(max(value, bounds[0]), bounds[1])

    return _Priors(
        p=clamp(parameters.prior_accept_probability, ACCEPT_PROBABILITY_RANGE),
        d=clamp(parameters.prior_resolve_delay_seconds, RESOLVE_DELAY_RANGE),
        h=clamp(parameters.prior_handle_time_seconds, HANDLE_TIME_RANGE),
        theta=clamp(1.0 / parameters.prior_patience_seconds, ABANDON_RATE_RANGE),
    )


def _clip(values: Array, bounds: tuple[float, float], fallback: float) -> Array:
    """``values`` clipped to ``bounds``; NaN (which the arithmetic above never makes from sane
    state, but garbage might) becomes ``fallback``."""
    low, high = bounds
    return clip_or(values, low, high, fallback)
