"""Per-target pacing state and engagement feedback in Redis (design.md §2.3).

Any worker may pace any shard, so the state lives in Redis: one hash field per target, the value
the raw bytes of a float64 vector. A shard reads its state and feedback in one pipelined round
trip and writes its state back in another. A missing, truncated or foreign-width value reads as
a row of NaN, which the algorithms treat as a cold start (algorithm.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import redis
from numpy.typing import NDArray
from redis.typing import EncodableT

from pacing.domain import OfferFeedback, Reason, StatisticsError, TargetStatistics
from pacing.keys import Keys

FEEDBACK_WIDTH = 4  # sent, accepted, resolved, pending
#: the fields of TargetStatistics kept per target, timestamp first
_STATISTICS_FIELDS = (
    "timestamp",
    "agents_logged_in",
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "aht_seconds",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
)
#: refreshed by every successful fetch; the expiry only clears the rows of a stopped cluster
LAST_STATISTICS_TTL_SECONDS = 24 * 3600


class StateStore:
    """Reads and writes the per-target state and feedback of one cluster."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    def load(
        self, target_ids: Sequence[str], *, width: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """State rows ``(n, width)`` and feedback rows ``(n, 4)``; NaN where unknown."""
        if not target_ids:
            return np.empty((0, width)), np.empty((0, FEEDBACK_WIDTH))
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self._keys.state, list(target_ids))
        pipe.hmget(self._keys.feedback, list(target_ids))
        raw_state, raw_feedback = pipe.execute()
        return _unpack(raw_state, width), _unpack(raw_feedback, FEEDBACK_WIDTH)

    def save(self, target_ids: Sequence[str], state: NDArray[np.float64]) -> None:
        """Store one state row per target (one round trip)."""
        if not target_ids:
            return
        rows = np.ascontiguousarray(state, dtype="<f8")
        mapping: dict[EncodableT, EncodableT] = {
            tid: rows[i].tobytes() for i, tid in enumerate(target_ids)
        }
        self._client.hset(self._keys.state, mapping=mapping)

    def save_feedback(self, feedback: Mapping[str, OfferFeedback]) -> None:
        """Store the counters the engagement platform returned (partial maps keep the rest)."""
        if not feedback:
            return
        mapping: dict[EncodableT, EncodableT] = {
            tid: np.array(
                [
                    fb.offers_sent_total,
                    fb.offers_accepted_total,
                    fb.offers_resolved_total,
                    fb.offers_pending,
                ],
                dtype="<f8",
            ).tobytes()
            for tid, fb in feedback.items()
        }
        self._client.hset(self._keys.feedback, mapping=mapping)

    def remember_statistics(
        self, statistics: Mapping[str, TargetStatistics | StatisticsError]
    ) -> None:
        """Keep each target's last valid statistics, for when no Stat Server answers."""
        mapping: dict[EncodableT, EncodableT] = {
            tid: np.array(
                [getattr(row, name) for name in _STATISTICS_FIELDS], dtype="<f8"
            ).tobytes()
            for tid, row in statistics.items()
            if isinstance(row, TargetStatistics)
        }
        if not mapping:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._keys.last_statistics, mapping=mapping)
        pipe.expire(self._keys.last_statistics, LAST_STATISTICS_TTL_SECONDS)
        pipe.execute()

    def last_statistics(
        self, target_ids: Sequence[str], *, now: float, max_age_seconds: float
    ) -> dict[str, TargetStatistics | StatisticsError]:
        """Each target's last valid statistics while younger than ``max_age_seconds``, else
        STALE (design.md §3.1: both gateways down)."""
        rows = _unpack(
            self._client.hmget(self._keys.last_statistics, list(target_ids)),
            len(_STATISTICS_FIELDS),
        )
        result: dict[str, TargetStatistics | StatisticsError] = {}
        for tid, row in zip(target_ids, rows.tolist(), strict=True):
            age = now - row[0]
            if math.isnan(age):
                detail = "no Stat Server answered and no earlier statistics are known"
            elif age > max_age_seconds:
                detail = (
                    f"no Stat Server answered; the last statistics are {age:.1f} s old "
                    f"(limit {max_age_seconds:g} s)"
                )
            else:
                fields = dict(zip(_STATISTICS_FIELDS, row, strict=True))
                result[tid] = TargetStatistics(
                    target_id=tid,
                    timestamp=fields["timestamp"],
                    agents_logged_in=int(fields["agents_logged_in"]),
                    agents_ready=int(fields["agents_ready"]),
                    agents_busy=int(fields["agents_busy"]),
                    interactions_waiting=int(fields["interactions_waiting"]),
                    aht_seconds=fields["aht_seconds"],
                    answered_total=int(fields["answered_total"]),
                    abandoned_total=int(fields["abandoned_total"]),
                    reactive_arrivals_total=int(fields["reactive_arrivals_total"]),
                )
                continue
            result[tid] = StatisticsError(tid, Reason.STALE, detail)
        return result

    def forget(self, target_ids: Sequence[str]) -> None:
        """Drop the state and feedback of targets that no longer exist."""
        if target_ids:
            pipe = self._client.pipeline(transaction=False)
            pipe.hdel(self._keys.state, *target_ids)
            pipe.hdel(self._keys.feedback, *target_ids)
            pipe.hdel(self._keys.last_statistics, *target_ids)
            pipe.execute()


def _unpack(values: Sequence[bytes | str | None], width: int) -> NDArray[np.float64]:
    out = np.full((len(values), width), math.nan)
    expected = width * 8
    for i, value in enumerate(values):
        if isinstance(value, bytes) and len(value) == expected:
            out[i] = np.frombuffer(value, dtype="<f8")
    return out
