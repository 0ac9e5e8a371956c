"""Reactive admission and the reactive reserve of the dual variants (algorithm.md §7).

Reactive traffic is not paced, so in a blended group it takes the abandonments. A dual target
admits reactive arrivals up to the share of capacity not guaranteed to proactive traffic::

    λ_r,admit      = min(λ_r, (1 − proactive_ratio) · λ*)
    reactive_state = λ_r,admit / λ_r            (1 when λ_r = 0)
    R              = ⌈λ_r,admit · h⌉             slots held back for reactive arrivals

λ* is the total arrival rate the group can take at its goal, from Erlang-A (§5; see
``_predictive_b.operating_rate``): ``reactive_state`` always admits the share of λ*.
SUPER_PROGRESSIVE_DUAL sizes its reserve on the share of :func:`capacity_rate` (N·μ, an upper
bound on λ*) instead, which does not move with the goal (so a higher goal never lowers the
proactive budget) and errs towards reactive visitors.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pacing.algorithms._state import clip_or

Array = NDArray[np.float64]

_LARGEST = float(np.finfo(np.float64).max)  # where np.nan_to_num sends +inf


def capacity_rate(servers: Array, handle_time: Array) -> Array:
    """N·μ = N / h: completions per second with every slot busy (stand-in for λ*)."""
    return servers / handle_time


def reactive_admission(
    *, reactive_rate: Array, operating_rate: Array, proactive_ratio: Array
) -> tuple[Array, Array]:
    """(λ_r,admit, reactive_state) of §7; both finite, the state in [0, 1]."""
    with np.errstate(all="ignore"):
        admitted = np.minimum(reactive_rate, (1.0 - proactive_ratio) * operating_rate)
        admitted = clip_or(admitted, 0.0, _LARGEST, 0.0)
        state = np.where(reactive_rate > 0, admitted / reactive_rate, 1.0)
    return admitted, clip_or(state, 0.0, 1.0, 1.0)


def reactive_reserve(admitted_rate: Array, handle_time: Array) -> Array:
    """R = ⌈λ_r,admit · h⌉: the slots the reactive load keeps busy on average, rounded up (§7)."""
    with np.errstate(all="ignore"):
        # The tolerance keeps a load of exactly 2.0 slots, computed as 2.0000000000000004, at 2.
        load = clip_or(admitted_rate * handle_time, -_LARGEST, _LARGEST, 0.0)
        return np.ceil(load - 1e-9).clip(0.0)
