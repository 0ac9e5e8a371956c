"""The start of the chord body (``pacing.publish_cycle``): every shard's rows joined into one
:class:`MergedCycle`, or :class:`IncompleteCycle` when the chord delivered a wrong set. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pacing.cycle.rows import ShardRows, merged_outcomes
from pacing.domain import Reason


class IncompleteCycle(Exception):
    """The chord delivered a wrong set of shards; the cycle must not publish."""


@dataclass(frozen=True, slots=True)
class MergedCycle:
    """Every shard of a cycle joined, in shard order."""

    ids: list[str]
    channel: list[str]
    budget: NDArray[np.int64]
    reactive: NDArray[np.float64]
    reason: NDArray[np.int8]
    ready: list[int | None]
    busy: list[int | None]
    waiting: list[int | None]
    fetch_ms: float  # slowest shard: the critical path
    pace_ms: float
    fetch_ms_total: float = 0.0  # every shard's: the work, spread over the worker processes
    pace_ms_total: float = 0.0
    shards_started_at: float = 0.0  # Unix seconds: the first shard began …
    shards_finished_at: float = 0.0  # … and the last one finished
    #: the shards' interaction_outcomes summed per channel
    outcomes: dict[str, list[float]] = field(default_factory=dict)
    shards_unanswered: int = 0  # shards no Stat Server gateway answered (ShardRows.answered)

    @property
    def error_count(self) -> int:
        return int(np.count_nonzero(self.reason >= Reason.STALE))


def merge_shards(
    results: Sequence[Mapping[str, Any]], *, seq: int, shard_count: int
) -> MergedCycle:
    """Join the header results; every shard ``0..shard_count-1`` exactly once, all of ``seq``.

    A duplicate delivery of the same shard (redelivery after a worker loss) is dropped; a missing
    or foreign shard raises :class:`IncompleteCycle` (design.md §2.2).
    """
    by_shard: dict[int, ShardRows] = {}
    for raw in results:
        rows = ShardRows.from_json(raw)
        if rows.seq != seq:
            raise IncompleteCycle(f"shard {rows.shard} belongs to cycle {rows.seq}, not {seq}")
        by_shard.setdefault(rows.shard, rows)
    missing = sorted(set(range(shard_count)) - by_shard.keys())
    extra = sorted(by_shard.keys() - set(range(shard_count)))
    if missing or extra:
        raise IncompleteCycle(f"shards missing {missing[:10]}, unexpected {extra[:10]}")
    ordered = [by_shard[i] for i in range(shard_count)]

    def joined(column: str) -> list[Any]:
        return list(chain.from_iterable(getattr(rows, column) for rows in ordered))

    def array(column: str, dtype: type[np.generic]) -> NDArray[Any]:
        # one conversion per shard instead of a generator over every target
        parts = [np.asarray(getattr(rows, column), dtype=dtype) for rows in ordered]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    return MergedCycle(
        ids=joined("ids"),
        channel=joined("channel"),
        budget=array("budget", np.int64),
        reactive=array("reactive", np.float64),
        reason=array("reason", np.int8),
        ready=joined("ready"),
        busy=joined("busy"),
        waiting=joined("waiting"),
        fetch_ms=max((rows.fetch_ms for rows in ordered), default=0.0),
        pace_ms=max((rows.pace_ms for rows in ordered), default=0.0),
        fetch_ms_total=sum(rows.fetch_ms for rows in ordered),
        pace_ms_total=sum(rows.pace_ms for rows in ordered),
        shards_started_at=min((rows.started_at for rows in ordered), default=0.0),
        shards_finished_at=max((rows.finished_at for rows in ordered), default=0.0),
        outcomes=merged_outcomes(ordered),
        shards_unanswered=sum(not rows.answered for rows in ordered),
    )
