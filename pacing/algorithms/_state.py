"""The per-target state the rules keep between cycles (design.md §2.3), as float64 columns.

One row per target, one column per :class:`StateColumn`. NaN means "unknown": a row of NaN is a
cold start, which is also what the pipeline passes for a target whose state was lost. Rows are
read through :func:`sanitize`, so a row of garbage degrades to "unknown" column by column instead
of poisoning the estimators.

Estimators are kept as sufficient statistics (exponentially forgotten sums) rather than as the
estimates themselves, so that priors and forgetting stay exact across cycles. The estimates are
also written (``accept_probability`` … ``reactive_rate_per_second``) for operators and the audit;
they are recomputed every cycle and never read back.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

#: Counters and weights beyond 2**53 cannot be differenced exactly in float64.
_LARGEST_COUNT = 2.0**53


class StateColumn(IntEnum):
    """The state columns, in storage order (``STATE_FIELDS`` is their lower-case names)."""

    OBSERVED_AT = 0  # `now` of the last update of the counters below (Unix seconds)
    LAST_ANSWERED_TOTAL = 1
    LAST_ABANDONED_TOTAL = 2
    LAST_REACTIVE_ARRIVALS_TOTAL = 3
    LAST_OFFERS_ACCEPTED_TOTAL = 4
    LAST_OFFERS_RESOLVED_TOTAL = 5
    LAST_OFFERS_PENDING = 6  # last known P (kept while feedback is missing)
    LAST_INTERACTIONS_WAITING = 7  # Q at OBSERVED_AT, for the waiting-time integral
    ACCEPTED_WEIGHT = 8  # forgotten sum of accepted invitations (p)
    RESOLVED_WEIGHT = 9  # forgotten sum of resolved invitations (p and d)
    PENDING_SECONDS_WEIGHT = 10  # forgotten ∫P dt (d, by Little's law)
    ABANDONED_WEIGHT = 11  # forgotten sum of abandonments (θ)
    WAITING_SECONDS_WEIGHT = 12  # forgotten ∫Q dt (θ)
    REACTIVE_WEIGHT = 13  # forgotten sum of reactive arrivals (λ_r)
    REACTIVE_SECONDS_WEIGHT = 14  # forgotten elapsed time (λ_r)
    HANDLE_TIME_SECONDS = 15  # h: exponentially weighted mean of the Stat Server AHT
    ACCEPT_PROBABILITY = 16  # p (written for observability)
    RESOLVE_DELAY_SECONDS = 17  # d (written for observability)
    ABANDON_RATE_PER_SECOND = 18  # θ (written for observability)
    REACTIVE_RATE_PER_SECOND = 19  # λ_r (written for observability)
    TRIM = 20  # β of algorithm.md §6
    CARRY = 21  # fractional carry of the rounding, in [0, 1)
    RESOLVED_SEEN = 22  # resolved invitations observed since the state began (cold start)
    COMPLETED_SEEN = 23  # answered interactions observed since the state began (cold start)
    GROUP_SIZE = 24  # staffed slots, exponentially smoothed: AUTO's choice of rule (§5)
    LAST_AGENTS_BUSY = 25  # b at OBSERVED_AT, for the busy-time integral and completions
    BUSY_SECONDS_WEIGHT = 26  # forgotten ∫b dt (h, by Little's law)
    COMPLETED_WEIGHT = 27  # forgotten sum of completed interactions (h)


STATE_FIELDS: tuple[str, ...] = tuple(column.name.lower() for column in StateColumn)
STATE_WIDTH: int = len(STATE_FIELDS)

_COUNTER_COLUMNS = (
    StateColumn.LAST_ANSWERED_TOTAL,
    StateColumn.LAST_ABANDONED_TOTAL,
    StateColumn.LAST_REACTIVE_ARRIVALS_TOTAL,
    StateColumn.LAST_OFFERS_ACCEPTED_TOTAL,
    StateColumn.LAST_OFFERS_RESOLVED_TOTAL,
    StateColumn.LAST_OFFERS_PENDING,
    StateColumn.LAST_INTERACTIONS_WAITING,
    StateColumn.ACCEPTED_WEIGHT,
    StateColumn.RESOLVED_WEIGHT,
    StateColumn.PENDING_SECONDS_WEIGHT,
    StateColumn.ABANDONED_WEIGHT,
    StateColumn.WAITING_SECONDS_WEIGHT,
    StateColumn.REACTIVE_WEIGHT,
    StateColumn.REACTIVE_SECONDS_WEIGHT,
    StateColumn.RESOLVED_SEEN,
    StateColumn.COMPLETED_SEEN,
    StateColumn.GROUP_SIZE,
    StateColumn.LAST_AGENTS_BUSY,
    StateColumn.BUSY_SECONDS_WEIGHT,
    StateColumn.COMPLETED_WEIGHT,
)
_ESTIMATE_COLUMNS = (
    StateColumn.HANDLE_TIME_SECONDS,
    StateColumn.ACCEPT_PROBABILITY,
    StateColumn.RESOLVE_DELAY_SECONDS,
    StateColumn.ABANDON_RATE_PER_SECOND,
    StateColumn.REACTIVE_RATE_PER_SECOND,
)


# Column masks for sanitize: one vectorised pass instead of a loop over 21 columns.
_IS_COUNTER = np.isin(np.arange(STATE_WIDTH), _COUNTER_COLUMNS)
_IS_ESTIMATE = np.isin(np.arange(STATE_WIDTH), _ESTIMATE_COLUMNS)
_IS_CARRY = np.arange(STATE_WIDTH) == StateColumn.CARRY


def cold_state(n: int) -> NDArray[np.float64]:
    """State for n targets that have never been paced: every column unknown (NaN)."""
    return np.full((max(n, 0), STATE_WIDTH), np.nan)


def sanitize(state: object, n: int) -> NDArray[np.float64]:
    """A clean copy of ``state``: out-of-range or non-finite values become NaN (unknown).

    A state of the wrong shape or type (a foreign version, a bug upstream) is a cold start for
    every row rather than an exception: pacing must go on (algorithm.md §2).
    """
    try:
        clean = np.array(state, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        return cold_state(n)
    if clean.shape != (n, STATE_WIDTH):
        return cold_state(n)
    with np.errstate(invalid="ignore"):
        unknown = ~np.isfinite(clean)
        unknown |= _IS_COUNTER & ((clean < 0) | (clean > _LARGEST_COUNT))
        unknown |= _IS_ESTIMATE & (clean <= 0)
        unknown |= _IS_CARRY & ((clean < 0) | (clean >= 1))
        clean[unknown] = np.nan
    return clean


def known_or(values: NDArray[np.float64], default: float) -> NDArray[np.float64]:
    """``values`` with NaN replaced by ``default``."""
    return np.where(np.isnan(values), default, values)


def clip_or(
    values: NDArray[np.float64], low: float, high: float, nan: float
) -> NDArray[np.float64]:
    """``np.clip(np.nan_to_num(values, nan=nan), low, high)`` for finite bounds.

    Written with np.where because np.nan_to_num costs about a dozen NumPy calls, which
    dominates on the small arrays of a shard.
    """
    return np.where(np.isnan(values), min(max(nan, low), high), np.clip(values, low, high))
