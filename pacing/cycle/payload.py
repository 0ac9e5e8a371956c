"""What a merged cycle sends (``pacing.publish_cycle``), pure: the :class:`Snapshot` a receiver
acknowledged, the targets changed since it (:func:`changed_since`, :func:`can_send_delta`), the
per-channel sums and the body of ``POST /v1/pacing`` (:func:`build_payload`), full or a delta.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pacing.cycle.merge import MergedCycle
from pacing.domain import Reason

_REASON_LABELS = [reason.label for reason in Reason]


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """The decisions a receiver acknowledged at ``seq``: the base of the next delta.

    Columnar, like the merged cycle it comes from: in the usual cycle the target list has not
    changed, and the comparison with the next cycle is three array comparisons instead of
    10,000 dict lookups (and no dict of 10,000 tuples to build and decode each cycle).
    """

    seq: int
    epoch: int
    ids: list[str]
    budget: NDArray[np.int64]
    reactive: NDArray[np.float64]
    reason: NDArray[np.int8]

    @property
    def decisions(self) -> dict[str, tuple[int, float, int]]:
        """id → (budget, reactive_state, reason)."""
        return dict(
            zip(
                self.ids,
                zip(
                    self.budget.tolist(),
                    self.reactive.tolist(),
                    self.reason.tolist(),
                    strict=True,
                ),
                strict=True,
            )
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Snapshot)
            and (self.seq, self.epoch, self.ids) == (other.seq, other.epoch, other.ids)
            and np.array_equal(self.budget, other.budget)
            and np.array_equal(self.reactive, other.reactive)
            and np.array_equal(self.reason, other.reason)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "ids": self.ids,
            "budget": self.budget.tolist(),
            "reactive": self.reactive.tolist(),
            "reason": self.reason.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        ids = [str(tid) for tid in data["ids"]]
        snapshot = cls(
            seq=int(data["seq"]),
            epoch=int(data["epoch"]),
            ids=ids,
            budget=np.asarray(data["budget"], dtype=np.int64),
            reactive=np.asarray(data["reactive"], dtype=np.float64),
            reason=np.asarray(data["reason"], dtype=np.int8),
        )
        if not len(ids) == snapshot.budget.size == snapshot.reactive.size == snapshot.reason.size:
            raise ValueError("a snapshot's columns have different lengths")
        return snapshot

    @classmethod
    def of(cls, merged: MergedCycle, *, seq: int, epoch: int) -> Snapshot:
        return cls(seq, epoch, merged.ids, merged.budget, merged.reactive, merged.reason)

    @classmethod
    def from_decisions(
        cls, *, seq: int, epoch: int, decisions: Mapping[str, tuple[int, float, int]]
    ) -> Snapshot:
        values = list(decisions.values())
        return cls(
            seq=seq,
            epoch=epoch,
            ids=list(decisions),
            budget=np.array([v[0] for v in values], dtype=np.int64),
            reactive=np.array([v[1] for v in values], dtype=np.float64),
            reason=np.array([v[2] for v in values], dtype=np.int8),
        )


def changed_since(merged: MergedCycle, base: Snapshot | None) -> NDArray[np.bool_]:
    """Mask of targets whose (budget, reactive state, reason) differs from ``base``."""
    if base is None:
        return np.ones(len(merged.ids), dtype=np.bool_)
    if base.ids == merged.ids:  # the usual cycle: the same targets in the same order
        changed: NDArray[np.bool_] = (
            (merged.budget != base.budget)
            | (merged.reactive != base.reactive)
            | (merged.reason != base.reason)
        )
        return changed
    previous = base.decisions
    current = zip(
        merged.budget.tolist(), merged.reactive.tolist(), merged.reason.tolist(), strict=True
    )
    return np.fromiter(
        (previous.get(tid) != decision for tid, decision in zip(merged.ids, current, strict=True)),
        dtype=np.bool_,
        count=len(merged.ids),
    )


def can_send_delta(merged: MergedCycle, base: Snapshot | None) -> bool:
    """A delta can only add or change targets; a removed target needs a full snapshot."""
    if base is None:
        return False
    return base.ids == merged.ids or set(base.ids) <= set(merged.ids)


def channel_sums(merged: MergedCycle) -> dict[str, dict[str, int]]:
    """Per channel, in order of first appearance: sums of proactive budget and ready capacity,
    the target count and how many of the targets are in cold start."""
    # On the cycle's critical path (the merge): bincount over channel codes takes 0.8 ms for
    # 10,000 targets where a loop of dict updates took 3.3 ms. Sums of whole numbers in
    # float64 are exact far beyond any budget or headcount.
    names = list(dict.fromkeys(merged.channel))
    code = {name: index for index, name in enumerate(names)}
    rows = np.fromiter(map(code.__getitem__, merged.channel), dtype=np.intp)
    ready = np.array(merged.ready, dtype=np.float64)  # None (unknown) → NaN → counted as 0
    budget = np.bincount(rows, weights=merged.budget, minlength=len(names))
    capacity = np.bincount(rows, weights=np.nan_to_num(ready), minlength=len(names))
    count = np.bincount(rows, minlength=len(names))
    cold = np.bincount(rows, weights=merged.reason == Reason.COLD_START, minlength=len(names))
    return {
        name: {
            "proactive_budget": int(budget[i]),
            "ready_capacity": int(capacity[i]),
            "target_count": int(count[i]),
            "cold_start": int(cold[i]),
        }
        for i, name in enumerate(names)
    }


def build_payload(
    merged: MergedCycle,
    *,
    seq: int,
    epoch: int,
    generated_at: float,
    refresh_period_seconds: float,
    channels: Mapping[str, Mapping[str, int]],
    base_seq: int | None,
    include: NDArray[np.bool_] | None,
    leader: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/pacing`` (docs/contracts.md §2): full when ``base_seq`` is None;
    ``leader`` is the node that holds the lease at ``epoch`` (the receiver fences on both)."""
    rows = range(len(merged.ids)) if include is None else np.flatnonzero(include).tolist()
    budget = merged.budget.tolist()
    reactive = merged.reactive.tolist()
    reason = merged.reason.tolist()
    targets = [
        {
            "id": merged.ids[i],
            "channel": merged.channel[i],
            "proactive_budget": budget[i],
            "reactive_state": reactive[i],
            "ready_capacity": merged.ready[i] or 0,
            "reason": _REASON_LABELS[reason[i]],
        }
        for i in rows
    ]
    payload: dict[str, Any] = {
        "seq": seq,
        "epoch": epoch,
        **({"leader": leader} if leader is not None else {}),
        "generated_at": round(generated_at, 3),
        "refresh_period_ms": round(refresh_period_seconds * 1000),
        "kind": "full" if base_seq is None else "delta",
        "targets": targets,
        "channels": {
            name: {"proactive_budget": c["proactive_budget"], "ready_capacity": c["ready_capacity"]}
            for name, c in channels.items()
        },
    }
    if base_seq is not None:
        payload["base_seq"] = base_seq
    return payload


def reason_label(code: int) -> str:
    return _REASON_LABELS[code]
