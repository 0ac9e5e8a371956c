"""The safety layer that runs before and after every rule (algorithm.md §2).

Before: statistics are checked row by row, and a row that cannot be paced gets budget 0 and a
reason. After: a rule's fractional budget is rounded with a carry, capped per target and, if
configured, capped over all targets of the call.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pacing.algorithms._state import clip_or
from pacing.algorithms._types import ALGORITHMS, OBJECTIVES, PacingTargets
from pacing.domain import Reason

Array = NDArray[np.float64]

#: Cumulative counters above 2**53 can no longer be differenced exactly in float64.
LARGEST_COUNTER = 2.0**53
#: _IS_REASON[code] is True for the codes of Reason (a table: np.isin is slow on small arrays).
_IS_REASON = np.zeros(max(Reason) + 1, dtype=bool)
_IS_REASON[[int(reason) for reason in Reason]] = True


def plausible(values: object, *, limit: float) -> Array:
    """``values`` as float64 with anything non-finite, negative or above ``limit`` set to NaN."""
    array = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    with np.errstate(invalid="ignore"):
        array[~((array >= 0) & (array <= limit))] = np.nan
    return array


def input_reasons(reason: object, n: int) -> NDArray[np.int8]:
    """The caller's per-row reason, with unknown codes read as ERROR."""
    codes = np.array(reason, dtype=np.int64, copy=True).reshape(-1)
    if codes.shape != (n,):
        return np.full(n, Reason.ERROR, dtype=np.int8)
    known = (codes >= 0) & (codes < _IS_REASON.size)
    known[known] = _IS_REASON[codes[known]]
    codes[~known] = Reason.ERROR
    return codes.astype(np.int8)


def misconfigured(targets: PacingTargets) -> NDArray[np.bool_]:
    """Rows whose configuration cannot be paced (unknown algorithm or objective, NaN goal)."""
    algorithm = np.asarray(targets.algorithm, dtype=np.int64)
    objective = np.asarray(targets.objective, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        return bool_array(
            (algorithm < 0)
            | (algorithm >= len(ALGORITHMS))
            | (objective < 0)
            | (objective >= len(OBJECTIVES))
            | ~np.isfinite(np.asarray(targets.goal, dtype=np.float64))
            | ~np.isfinite(np.asarray(targets.proactive_ratio, dtype=np.float64))
        )


def budget_caps(max_budget: object, search_limit: int) -> Array:
    """Per-target caps as float: ``max_budget`` clipped to [0, search_limit]."""
    caps = np.asarray(max_budget, dtype=np.float64)
    return clip_or(caps, 0.0, float(search_limit), 0.0)


def carry_round(budget: Array, carry: Array, cap: Array) -> tuple[NDArray[np.int64], Array]:
    """Integer budgets by the fractional carry of §2, and the carry to keep.

    acc = carry + x; n = ⌊acc⌋; carry = acc − n. Plain flooring would never send anything when a
    rule asks for less than one invitation per cycle. The carry is dropped where the rule asks
    for nothing (it is owed only while the rule still wants to send) and where the cap cut the
    budget (it would otherwise be owed forever).
    """
    with np.errstate(all="ignore"):
        budget = np.clip(np.where(np.isfinite(budget), budget, 0.0), 0.0, cap)
        carry = clip_or(carry, 0.0, 1.0, 0.0)
        accumulated = budget + carry
        rounded = np.floor(accumulated)
        capped = rounded >= cap
        rounded = np.minimum(rounded, cap)
        remainder = np.where((budget > 0) & ~capped, accumulated - rounded, 0.0)
    return rounded.astype(np.int64), np.clip(remainder, 0.0, np.nextafter(1.0, 0.0))


def apply_global_cap(budget: NDArray[np.int64], cap: int | None) -> NDArray[np.int64]:
    """Budgets scaled down to sum to at most ``cap`` (largest remainders first, ties by row).

    Proportional scaling keeps every target's share of the cycle; the largest-remainder rounding
    hands out exactly ``cap`` invitations.
    """
    total = int(budget.sum())
    if cap is None or total <= cap:
        return budget
    share = budget.astype(np.float64) * (cap / total)
    scaled = np.floor(share).astype(np.int64)
    left = cap - int(scaled.sum())
    if left > 0:
        order = np.argsort(-(share - scaled), kind="stable")[:left]
        scaled[order] += 1
    return np.minimum(scaled, budget)


def bool_array(values: object) -> NDArray[np.bool_]:
    """``values`` as a boolean array."""
    return np.asarray(values, dtype=bool)
