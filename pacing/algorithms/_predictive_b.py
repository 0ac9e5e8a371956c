"""PREDICTIVE_B (algorithm.md §5): an Erlang-A operating point plus state feedback.

For one target with N = f + b slots, handle time h = 1/μ, patience rate θ (r = θ·h)::

    a*, P_ab*  = the operating point of the goal (``_operating_points.operating_point``)
    λ*         = a*·μ
    λ_p        = λ* − λ_r,admit                (dual targets, §7; else λ*)
    Y*         = a*·(1 − P_ab*) + a*·P_ab*/r + λ_p·d      busy + queued + in the invitation pipe
    Y          = b + Q + q·P
    x          = (e^β·(λ_p·Δ + γ·Y*) − γ·Y) / q

so each cycle sends the invitations the operating point consumes in one period, plus a share γ
of the gap between the pipeline it should hold and the one it holds. Paced arrivals are smoother
than Poisson arrivals, so the operating point alone is conservative; the trim β (§6) closes the
gap to the goal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from pacing.algorithms import _dual
from pacing.algorithms._operating_points import operating_point

Array = NDArray[np.float64]


class Operating(NamedTuple):
    """λ* (per second) and its expected busy slots and queue at the operating point."""

    rate: Array
    busy: Array
    queued: Array


def operating_rate(
    *,
    servers: Array,
    handle_time: Array,
    abandon_rate: Array,
    goal: Array,
    busy_factor: NDArray[np.bool_],
    busy_ceiling: float,
) -> Operating:
    """λ*, E[B]* and E[Q]* per row (§5.1–5.2); rows must have N ≥ 1, h > 0, θ > 0."""
    ratio = abandon_rate * handle_time
    point = operating_point(
        servers, ratio, goal, busy_factor=busy_factor, busy_ceiling=busy_ceiling
    )
    load = point.load
    return Operating(
        rate=load / handle_time,
        busy=load * (1.0 - point.abandon_probability),
        queued=load * point.abandon_probability / ratio,
    )


def predictive_b_budget(
    *,
    operating: Operating,
    busy_slots: Array,
    waiting: Array,
    pending: Array,
    accept_probability: Array,
    resolve_delay: Array,
    admitted_reactive_rate: Array,
    trim: Array,
    refresh_period: float,
    gain: float,
) -> Array:
    """The fractional budget x ≥ 0 of §5.5 (rounded and capped by the caller)."""
    with np.errstate(all="ignore"):
        proactive_rate = np.maximum(operating.rate - admitted_reactive_rate, 0.0)
        target = operating.busy + operating.queued + proactive_rate * resolve_delay
        current = busy_slots + waiting + accept_probability * pending
        budget = (
            np.exp(trim) * (proactive_rate * refresh_period + gain * target) - gain * current
        ) / accept_probability
        budget = np.nan_to_num(budget, nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(budget, 0.0)


def reactive_admission(
    *, operating: Operating, reactive_rate: Array, proactive_ratio: Array, dual: NDArray[np.bool_]
) -> tuple[Array, Array]:
    """(λ_r,admit, reactive_state) of §7 at the Erlang-A operating rate λ*; 0 and 1 if not dual."""
    admitted, state = _dual.reactive_admission(
        reactive_rate=reactive_rate,
        operating_rate=operating.rate,
        proactive_ratio=proactive_ratio,
    )
    return np.where(dual, admitted, 0.0), np.where(dual, state, 1.0)
