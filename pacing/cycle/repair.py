"""History repair after Redis lost writes: no cycle the receiver may hold is missing a row.

A failover to a replica that lagged (or a restart without persistence) can lose the staged audit
records of the last cycles together with their seqs. The publishing process stages a record
again when it is still alive (:mod:`pacing.cycle.publish`); a cycle whose publisher died with the
master leaves nothing. Whenever a loss may have happened — a new leadership term, a receiver
holding seqs this cluster no longer knows — a check is requested for the seqs just below, due
once every cycle that was in flight then has ended and been audited. The check
(:func:`repair_history`) writes an ``in_doubt`` row, without decisions, for each seq of that
window that has neither a row nor a staged record: the receiver may hold that cycle, and what it
held is unknown.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import cast

from pacing.history import CycleRecord, cycle_starts, record_cycle
from pacing.services import Services
from pacing.settings import Settings

logger = logging.getLogger(__name__)

#: Seqs checked below the newest one a request names: a minute of cycles at the default period,
#: far more than the replication lag of a healthy replica (see docs/operators.md, High
#: availability: the lost-writes fault holds replication back for two to three cycles).
REPAIR_WINDOW = 30
REPAIRS_PER_TICK = 5

LOST_RECORD_ERROR = (
    "no audit record survived a Redis failover or data loss; the receiver may hold this cycle, "
    "its decisions are unknown"
)


def repair_due(settings: Settings, now: float) -> float:
    """When the cycles in flight at ``now`` have ended and their audits started: a cycle ends
    by its deadline plus one publish attempt (an OAuth token request and the POST)."""
    attempt = 2 * (settings.http_connect_timeout_seconds + settings.http_read_timeout)
    return now + settings.cycle_deadline + attempt + 1.0


def request_history_repair(services: Services, *, upto: int, due: float) -> None:
    """Ask for the seqs up to ``upto`` to be checked at ``due`` (Unix seconds)."""
    if upto >= 1:
        services.redis.zadd(services.keys.history_repair, {str(upto): due})


def take_due_repairs(services: Services) -> list[int]:
    """The requests that are due, removed from the queue (a lost one costs only its check)."""
    key = services.keys.history_repair
    due = cast(
        list[bytes],
        services.redis.zrangebyscore(key, "-inf", services.clock(), start=0, num=REPAIRS_PER_TICK),
    )
    if not due:
        return []
    services.redis.zrem(key, *due)
    return [int(raw) for raw in due]


def repair_history(services: Services, *, upto: int, window: int = REPAIR_WINDOW) -> list[int]:
    """Record ``in_doubt`` every seq in ``(upto - window, upto]`` that has no history row and no
    staged audit record; returns those seqs.

    The staged records are read before the history, so a record written in between is seen in
    one of the two (it leaves the pending set only after its row commits).
    """
    low = max(1, upto - window + 1)
    staged = cast(list[bytes], services.redis.zrange(services.keys.audit_pending, 0, -1))
    pending = {int(raw) for raw in staged}
    # one row below the window too: a lost cycle is given the start of the cycle before it (or,
    # failing that, after it), since the history's time queries rely on started_at rising with seq
    written = cycle_starts(services.history, low - 1, upto)
    fallback = min(written.values(), default=datetime.fromtimestamp(services.clock(), UTC))
    recorded = []
    started = fallback
    for seq in range(low - 1, upto + 1):
        if seq in written:
            started = written[seq]
        elif (
            seq >= low
            and seq not in pending
            and record_cycle(services.history, _lost_record(seq, started))
        ):
            recorded.append(seq)
    if recorded:
        logger.warning(
            "recorded %d cycle(s) whose audit record was lost as in doubt: %s",
            len(recorded),
            ", ".join(map(str, recorded)),
        )
    return recorded


def _lost_record(seq: int, started_at: datetime) -> CycleRecord:
    """The row of a cycle nothing is known of: epoch 0 and no node (unknown)."""
    return CycleRecord(
        seq=seq,
        epoch=0,
        node="",
        started_at=started_at,
        published_at=None,
        fetch_ms=None,
        pace_ms=None,
        merge_ms=None,
        publish_ms=None,
        target_count=0,
        changed_count=0,
        error_count=0,
        payload_kind="none",
        payload_bytes=0,
        publish_status="in_doubt",
        error=LOST_RECORD_ERROR,
    )
