"""Beside the shards, when the leader is new or the targets changed
(``pacing.presolve_operating_points``): the Erlang-A operating points of the targets' goals,
solved once ahead of the cycles and shared through Redis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pacing import algorithms
from pacing.cycle.plan import PlannedCycle, pacing_parameters
from pacing.domain import Objective, TargetConfig
from pacing.services import Services

#: At most this many (goal, objective) pairs are presolved, the most common first: each costs
#: one worker process about a second and every process 1.2 MB of cache.
PRESOLVE_MAX_GOALS = 8


def operating_point_goals(targets: Sequence[TargetConfig]) -> list[tuple[float, bool]]:
    """The (goal as a fraction, is BUSY_FACTOR) pairs of ``targets``, the most common first."""
    counts = Counter(
        (t.goal_percent / 100.0, t.objective is Objective.BUSY_FACTOR) for t in targets
    )
    return [pair for pair, _ in counts.most_common(PRESOLVE_MAX_GOALS)]


def goals_to_presolve(services: Services, plan: PlannedCycle) -> list[tuple[float, bool]]:
    """The goals to presolve after ``plan``: the targets' when this node just took the lease or
    the targets changed, else none."""
    if not (plan.targets_changed or plan.outcome.new_leader):
        return []
    return operating_point_goals(services.enabled_targets())


def presolve_operating_points(services: Services, goals: Sequence[Sequence[Any]]) -> int:
    """Solve the Erlang-A operating-point grid of ``goals`` ahead of the cycles and share it.

    Without it the cycles solve the points as targets reach them (every target leaving cold
    start, every estimate drifting past the cached neighbourhood): at 10,000 targets in the
    benchmark's first minutes about a tenth of the shards' CPU. Here one worker process solves
    each goal's grid once (about a second) off the cycle's path, and every process absorbs it
    from Redis at its next shard. Returns how many points were solved here.
    """
    shared = services.operating_points
    shared.pull()  # what other processes solved already is not solved again
    ceiling = pacing_parameters(services.settings).busy_factor_abandonment_ceiling
    solved = sum(
        algorithms.OPERATING_POINTS.presolve(float(goal), bool(busy), busy_ceiling=ceiling)
        for goal, busy in goals
    )
    shared.push()
    return solved
