"""Pacing algorithms: pure, vectorised functions from statistics and state to budgets.

One call paces n targets at once (a worker's shard, or 10,000 in a benchmark); every array has
one row per target. Nothing here does I/O or imports Celery.

Public surface::

    STATE_FIELDS, STATE_WIDTH, cold_state(n)       the per-target state between cycles
    PacingInputs, PacingTargets, PacingParameters  what a cycle knows
    PacingResult, pace(...)                        what it decides
    ALGORITHMS, OBJECTIVES                         what PacingTargets' indices refer to
    OPERATING_POINTS, OperatingPoints              the process's Erlang-A operating-point cache

Where to read on:

- ``_pace``: one cycle, step by step, and ``RULES``, the dispatch from a target's algorithm to
  the rule that paces it (AUTO: SUPER_PROGRESSIVE below 30 slots, PREDICTIVE_B from 30);
- ``_safety``: the safety layer of algorithm.md §2 (reasons, plausibility, carry, caps);
- ``_estimators``: p, d, h, θ, λ_r from cumulative counters, and the trim β (§1, §6);
- ``_super_progressive``: the SUPER_PROGRESSIVE rule (§4);
- ``_predictive_b``: the PREDICTIVE_B rule (§5), on the Erlang-A operating points of
  ``_operating_points`` (their grid and cache) and ``_erlang`` (Erlang B and M/M/N+M in log
  space, and the root search);
- ``_dual``: reactive admission and reserve of the dual variants (§7);
- ``_state``: the state columns.
"""

from pacing.algorithms._operating_points import OPERATING_POINTS, OperatingPoints
from pacing.algorithms._pace import pace
from pacing.algorithms._state import STATE_FIELDS, STATE_WIDTH, cold_state
from pacing.algorithms._types import (
    ALGORITHMS,
    OBJECTIVES,
    PacingInputs,
    PacingParameters,
    PacingResult,
    PacingTargets,
)

__all__ = [
    "ALGORITHMS",
    "OBJECTIVES",
    "OPERATING_POINTS",
    "STATE_FIELDS",
    "STATE_WIDTH",
    "OperatingPoints",
    "PacingInputs",
    "PacingParameters",
    "PacingResult",
    "PacingTargets",
    "cold_state",
    "pace",
]
