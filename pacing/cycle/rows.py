"""A shard's rows: what a shard task hands the merge, pure (no I/O).

:class:`ShardRows` is columnar: one JSON list per field, not a dict per target, which keeps
10,000 targets to a few hundred kilobytes instead of megabytes. They wait in Redis between the
shard's task and the chord body (:func:`pacing.cycle.shard.park_shard`); the chord itself carries
only small references. Each shard also counts what the Stat Server saw answered and abandoned
(:func:`interaction_outcomes`), which the merge sums across shards (:func:`merged_outcomes`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class ShardRows:
    """One shard's decisions, columnar and JSON-able (what ``pacing.pace_shard`` returns)."""

    shard: int
    seq: int
    ids: list[str]
    channel: list[str]
    budget: list[int]
    reactive: list[float]
    reason: list[int]
    ready: list[int | None]
    busy: list[int | None]
    waiting: list[int | None]
    fetch_ms: float
    pace_ms: float
    started_at: float = 0.0  # Unix seconds: when the worker began the shard …
    finished_at: float = 0.0  # … and when its rows were ready (the stage timeline of a cycle)
    #: channel → the interactions its targets answered and abandoned since the previous cycle
    #: (:func:`interaction_outcomes`); a shard of an older release has none
    outcomes: dict[str, list[float]] = field(default_factory=dict)
    #: a Stat Server gateway answered the shard's query; False: no gateway answered, so the shard
    #: was paced on its targets' last good statistics, or as stale (design.md §3.1)
    answered: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "seq": self.seq,
            "ids": self.ids,
            "channel": self.channel,
            "budget": self.budget,
            "reactive": self.reactive,
            "reason": self.reason,
            "ready": self.ready,
            "busy": self.busy,
            "waiting": self.waiting,
            "fetch_ms": self.fetch_ms,
            "pace_ms": self.pace_ms,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "outcomes": self.outcomes,
            "answered": self.answered,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardRows:
        return cls(**{name: data[name] for name in cls.__slots__ if name in data})


#: The sums :func:`interaction_outcomes` makes per channel, in the order of its lists: the
#: interactions the channel's targets answered and abandoned, the same for the targets with an
#: ABANDONMENT_RATE goal, and the abandonments those goals allow (Σ goal × (answered + abandoned)).
OUTCOME_FIELDS: Final = ("answered", "abandoned", "goal_answered", "goal_abandoned", "goal_allowed")
#: goal_allowed is a sum of fractions; more decimals would only lengthen the cycle events
_ALLOWED_DECIMALS = 6


def interaction_outcomes(
    channel: Sequence[str],
    *,
    before: NDArray[np.float64],
    after: NDArray[np.float64],
    goal: NDArray[np.float64],
) -> dict[str, list[float]]:
    """Per channel, what the Stat Server counted between a shard's previous cycle and this one:
    the interactions answered and abandoned in queue (:data:`OUTCOME_FIELDS`).

    ``before`` and ``after`` are ``(n, 2)``: each target's cumulative ``answered_total`` and
    ``abandoned_total`` as the state held them before ``pace()`` and as it returned them (NaN
    where unknown); ``goal`` is each target's abandonment goal as a fraction, NaN for a target
    without one (BUSY_FACTOR). A target counts ``after − before`` of both counters, only where
    both differences are known and non-negative: a target without a previous reading (a cold
    state), or whose counters went down (the gateway restarted; the estimators re-base there
    too), counts nothing this cycle, answered and abandoned alike, so that a ratio of the two
    sums covers the same interactions. A target whose statistics were unusable keeps its last
    counters, so the interactions of such a gap are counted when it returns, not lost.
    """
    n = len(channel)
    if n == 0 or before.shape != (n, 2) or after.shape != (n, 2) or goal.shape != (n,):
        return {}
    with np.errstate(invalid="ignore"):
        change = after - before
        # comparisons with NaN are False: unknown counters are not counted
        counted = ((before >= 0) & (change >= 0)).all(axis=1)
    answered = np.where(counted, change[:, 0], 0.0)
    abandoned = np.where(counted, change[:, 1], 0.0)
    has_goal = ~np.isnan(goal)
    names = list(dict.fromkeys(channel))
    code = {name: index for index, name in enumerate(names)}
    rows = np.fromiter(map(code.__getitem__, channel), dtype=np.intp, count=n)
    sums = [
        np.bincount(rows, weights=column, minlength=len(names)).tolist()
        for column in (
            answered,
            abandoned,
            np.where(has_goal, answered, 0.0),
            np.where(has_goal, abandoned, 0.0),
            np.where(has_goal, np.clip(goal, 0.0, 1.0) * (answered + abandoned), 0.0),
        )
    ]
    return {
        name: [
            int(sums[0][i]),
            int(sums[1][i]),
            int(sums[2][i]),
            int(sums[3][i]),
            round(sums[4][i], _ALLOWED_DECIMALS),
        ]
        for i, name in enumerate(names)
    }


def merged_outcomes(shards: Sequence[ShardRows]) -> dict[str, list[float]]:
    """The shards' :func:`interaction_outcomes` summed per channel (in order of appearance);
    sums of a length other than :data:`OUTCOME_FIELDS`' (another release's) are left out."""
    total: dict[str, list[float]] = {}
    width = len(OUTCOME_FIELDS)
    for shard in shards:
        for name, values in shard.outcomes.items():
            if len(values) != width:
                continue
            sums = total.setdefault(name, [0] * width)
            for i, value in enumerate(values):
                sums[i] += value
    for sums in total.values():
        sums[-1] = round(sums[-1], _ALLOWED_DECIMALS)
    return total


def optional_ints(values: NDArray[np.float64]) -> list[int | None]:
    """Float inputs (NaN where unknown) as JSON-able ints or None."""
    return [None if math.isnan(v) else int(v) for v in values.tolist()]
