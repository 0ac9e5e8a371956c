"""The plan's targets cut into shards and decoded back, pure (no I/O).

:func:`split_into_shards` makes the compact JSON rows a shard carries, :func:`shard_digest` the
name they are parked under in Redis (``pacing.services`` cuts and names the enabled targets with
them), and :class:`ShardTargets` is how a shard task decodes its rows into pacing's columns.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from pacing import algorithms
from pacing.algorithms import PacingTargets
from pacing.domain import Objective, TargetConfig

_ABANDONMENT_RATE = algorithms.OBJECTIVES.index(Objective.ABANDONMENT_RATE)


def effective_shard_size(count: int, shard_size: int, max_shards: int | None = None) -> int:
    """Targets per shard: ``shard_size``, raised where ``count`` would need more than
    ``max_shards`` shards (each shard costs the leader a task message and the chord a join
    step whatever its size; see the ``max_shards`` setting)."""
    if max_shards is None or count <= shard_size * max_shards:
        return shard_size
    return math.ceil(count / max_shards)


def split_into_shards(
    targets: Sequence[TargetConfig], shard_size: int, *, max_shards: int | None = None
) -> list[list[list[Any]]]:
    """Targets as compact JSON rows, ``shard_size`` per shard (the chord header's arguments),
    or as many as it takes to need no more than ``max_shards`` shards."""
    shard_size = effective_shard_size(len(targets), shard_size, max_shards)
    rows = [
        [
            t.target_id,
            t.channel,
            t.algorithm.value,
            t.objective.value,
            t.goal_percent,
            t.proactive_ratio,
            t.max_budget,
        ]
        for t in targets
    ]
    return [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)]


def shard_digest(rows: Sequence[Sequence[Any]]) -> str:
    """A name for a shard's rows from their content: equal rows, equal name (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(orjson.dumps(rows), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class ShardTargets:
    """The targets of one shard as columns: what pacing needs, decoded once per shard."""

    ids: list[str]
    channel: list[str]
    targets: PacingTargets

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> ShardTargets:
        """Decode the rows :func:`split_into_shards` made (ValueError for a malformed row)."""
        if not rows:
            return cls([], [], PacingTargets.from_configs([]))
        try:
            ids, channel, algorithm, objective, goal, ratio, max_budget = zip(*rows, strict=True)
        except ValueError:
            raise ValueError("a shard row does not have the 7 target fields") from None
        return cls(
            ids=[str(tid) for tid in ids],
            channel=[str(name) for name in channel],
            targets=PacingTargets.from_columns(
                algorithm=algorithm,
                objective=objective,
                goal_percent=goal,
                proactive_ratio=ratio,
                max_budget=max_budget,
            ),
        )

    @classmethod
    def of(cls, configs: Sequence[TargetConfig]) -> ShardTargets:
        return cls.from_rows(split_into_shards(configs, max(1, len(configs)))[0] if configs else [])

    @property
    def abandonment_goal(self) -> NDArray[np.float64]:
        """Each target's abandonment goal as a fraction, NaN for a BUSY_FACTOR target."""
        goal: NDArray[np.float64] = np.where(
            self.targets.objective == _ABANDONMENT_RATE, self.targets.goal, np.nan
        )
        return goal

    def __len__(self) -> int:
        return len(self.ids)
