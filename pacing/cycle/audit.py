"""The last stage (``pacing.record_cycle``): a cycle's audit record in the history database.

The publish builds the record (:func:`audit_record`, :func:`decision_rows`) and stages it in
Redis before its POST (:func:`stage_audit`); after the POST only the small
:class:`AuditOutcome` is written over it. :func:`write_audit` writes the record to the history,
waiting for the outcome if the publish has not ended yet, and then forgets it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from pacing.cycle.merge import MergedCycle
from pacing.cycle.payload import reason_label
from pacing.cycle.plan import CycleContext
from pacing.domain import Reason
from pacing.history import (
    ChannelTotal,
    CycleRecord,
    DecisionColumns,
    DecisionRow,
    record_cycle,
)
from pacing.services import Services

logger = logging.getLogger(__name__)


AUDIT_RETENTION_SECONDS = 7 * 24 * 3600  # an audit record waits this long for the database
AUDIT_SETTLED_SECONDS = 600  # the wake-up of an audit waiting for its outcome, if none took it


@dataclass(frozen=True, slots=True)
class AuditOutcome:
    """How a cycle's publish ended: written over its staged audit record after the POST.

    Staging the record (thousands of decision rows) once, before the POST, and only this after
    it, halves the audit's Redis traffic of a publishing cycle.
    """

    status: str
    error: str | None
    published_at: float | None
    publish_ms: float | None
    #: the receiver holds this seq from a timeline Redis lost in a failover, with decisions
    #: this record does not know: the cycle stays ``in_doubt`` without decision rows
    decisions_unknown: bool = False

    def applied_to(self, record: CycleRecord) -> CycleRecord:
        """``record`` with this outcome; a cycle that did not reach the receiver keeps no
        decisions (the receiver does not hold them)."""
        published = self.status in ("published", "in_doubt") and not self.decisions_unknown
        return dataclasses.replace(
            record,
            publish_status=self.status,
            error=self.error,
            published_at=(
                None
                if self.published_at is None
                else datetime.fromtimestamp(self.published_at, UTC)
            ),
            publish_ms=self.publish_ms,
            decisions=record.decisions if published else [],
            payload_kind=record.payload_kind if published else "none",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "published_at": self.published_at,
            "publish_ms": self.publish_ms,
            "decisions_unknown": self.decisions_unknown,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditOutcome:
        return cls(
            status=str(data["status"]),
            error=data.get("error"),
            published_at=data.get("published_at"),
            publish_ms=data.get("publish_ms"),
            decisions_unknown=bool(data.get("decisions_unknown", False)),
        )


def decision_rows(
    merged: MergedCycle, rows: np.ndarray[Any, np.dtype[np.bool_]]
) -> DecisionColumns:
    """The audit rows of the targets in ``rows``, as columns: picked with numpy and list
    indexing, never one object per target (a 100,000-row full snapshot in a few ms)."""
    if rows.all():
        pick: Callable[[Sequence[Any]], list[Any]] = list
    else:
        index = np.flatnonzero(rows).tolist()

        def pick(values: Sequence[Any]) -> list[Any]:
            return [values[i] for i in index]

    return DecisionColumns(
        target_id=pick(merged.ids),
        proactive_budget=merged.budget[rows].tolist(),
        reactive_state=merged.reactive[rows].tolist(),
        reason=_REASON_LABELS[merged.reason[rows]].tolist(),
        agents_ready=pick(merged.ready),
        agents_busy=pick(merged.busy),
        interactions_waiting=pick(merged.waiting),
    )


#: reason code → label, as an object array so that a whole column is one fancy index
_REASON_LABELS = np.array([reason_label(int(code)) for code in Reason], dtype=object)


def audit_record(
    context: CycleContext,
    *,
    status: str,
    error: str | None,
    clock: Callable[[], float],
    merged: MergedCycle | None = None,
    decisions: Sequence[DecisionRow] = (),
    channels: Mapping[str, Mapping[str, int]] | None = None,
    changed_count: int = 0,
    payload_kind: str = "none",
    payload_bytes: int = 0,
    merge_ms: float | None = None,
    publish_ms: float | None = None,
) -> CycleRecord:
    """The audit record of ``context``'s cycle, with ``merged``'s figures once it merged."""
    return CycleRecord(
        seq=context.seq,
        epoch=context.epoch,
        node=context.node,
        started_at=datetime.fromtimestamp(context.started_at, UTC),
        published_at=datetime.fromtimestamp(clock(), UTC) if status == "published" else None,
        fetch_ms=merged.fetch_ms if merged else None,
        pace_ms=merged.pace_ms if merged else None,
        merge_ms=merge_ms,
        publish_ms=publish_ms,
        target_count=len(merged.ids) if merged else 0,
        changed_count=changed_count,
        error_count=merged.error_count if merged else 0,
        payload_kind=payload_kind,
        payload_bytes=payload_bytes,
        publish_status=status,
        error=error,
        decisions=decisions if isinstance(decisions, DecisionColumns) else list(decisions),
        channels=[
            ChannelTotal(
                channel=name,
                proactive_budget=c["proactive_budget"],
                ready_capacity=c["ready_capacity"],
                target_count=c["target_count"],
            )
            for name, c in (channels or {}).items()
        ],
    )


def stage_audit(
    services: Services, record: CycleRecord, *, outcome_due: float | None = None
) -> None:
    """Keep ``record`` in Redis until ``pacing.record_cycle`` has written it to the database.

    ``outcome_due`` (Unix seconds): the record is staged before its publish, whose outcome will
    be written over it by then; until then :func:`write_audit` waits for it.
    """
    data = record.to_json()
    if outcome_due is not None:
        data["outcome_due"] = outcome_due
    pipe = services.redis.pipeline(transaction=True)
    pipe.set(services.keys.audit(record.seq), orjson.dumps(data), ex=AUDIT_RETENTION_SECONDS)
    pipe.zadd(services.keys.audit_pending, {str(record.seq): services.clock()})
    pipe.execute()


@dataclass(frozen=True, slots=True)
class StagedAudit:
    """A staged audit record: with its publish outcome applied, or still waiting for it until
    ``outcome_due`` (then the staged status, ``in_doubt``, stands: the publisher stopped)."""

    record: CycleRecord
    settled: bool
    outcome_due: float | None


def load_staged_audit(services: Services, seq: int) -> StagedAudit | None:
    """The staged audit record of ``seq``, or None if it was already written."""
    raw, outcome = services.redis.mget(services.keys.audit(seq), services.keys.audit_outcome(seq))
    if not raw:
        return None
    data = orjson.loads(raw)
    record = CycleRecord.from_json(data)
    due = data.get("outcome_due")
    if outcome:
        settled = AuditOutcome.from_json(orjson.loads(outcome)).applied_to(record)
        return StagedAudit(settled, settled=True, outcome_due=due)
    return StagedAudit(record, settled=due is None, outcome_due=due)


def load_audit(services: Services, seq: int) -> CycleRecord | None:
    """The staged audit record of ``seq`` with its publish outcome if it has one yet, or None if
    it was already written."""
    staged = load_staged_audit(services, seq)
    return None if staged is None else staged.record


def write_audit(services: Services, seq: int) -> bool:
    """Write the staged audit record of ``seq`` to the history; False if already written.

    A record whose publish has not ended yet is written all the same, in a transaction that
    waits for the outcome (until the record's ``outcome_due``) and commits right after it.
    """
    staged = load_staged_audit(services, seq)
    if staged is None:
        return False  # written by an earlier delivery
    due = staged.outcome_due
    if staged.settled or due is None or services.clock() >= due:
        inserted = record_cycle(services.history, staged.record)
    else:
        inserted = record_cycle(
            services.history,
            staged.record,
            settle=lambda record: _await_outcome(services, record, due),
        )
    forget_audit(services, seq)
    return inserted


def _await_outcome(services: Services, record: CycleRecord, due: float) -> CycleRecord:
    """``record`` with its publish outcome once the publisher writes it, or as staged
    (``in_doubt``) if ``due`` passes first."""
    keys, seq = services.keys, record.seq
    while True:
        raw = services.redis.get(keys.audit_outcome(seq))
        if raw:
            return AuditOutcome.from_json(orjson.loads(raw)).applied_to(record)
        left = due - services.clock()
        if left <= 0:
            logger.warning(
                "no publish outcome by its due time; recorded as in doubt",
                extra={"seq": seq, "epoch": record.epoch},
            )
            return record
        # woken by the publisher's push; short waits stay inside the client's socket timeout
        services.redis.blpop([keys.audit_settled(seq)], timeout=min(left, 1.0))


def forget_audit(services: Services, seq: int) -> None:
    pipe = services.redis.pipeline(transaction=True)
    pipe.delete(
        services.keys.audit(seq), services.keys.audit_outcome(seq), services.keys.audit_settled(seq)
    )
    pipe.zrem(services.keys.audit_pending, str(seq))
    pipe.execute()
