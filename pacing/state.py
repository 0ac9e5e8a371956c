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

from pacing.domain import OfferFeedback
from pacing.keys import Keys

FEEDBACK_WIDTH = 4  # sent, accepted, resolved, pending


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

    def forget(self, target_ids: Sequence[str]) -> None:
        """Drop the state and feedback of targets that no longer exist."""
        if target_ids:
            pipe = self._client.pipeline(transaction=False)
            pipe.hdel(self._keys.state, *target_ids)
            pipe.hdel(self._keys.feedback, *target_ids)
            pipe.execute()


def _unpack(values: Sequence[bytes | None], width: int) -> NDArray[np.float64]:
    out = np.full((len(values), width), math.nan)
    expected = width * 8
    for i, value in enumerate(values):
        if value is not None and len(value) == expected:
            out[i] = np.frombuffer(value, dtype="<f8")
    return out
