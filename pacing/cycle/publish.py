"""The chord body (``pacing.publish_cycle``): merge, fence, publish, feedback, cycle event.

:func:`publish_cycle` joins the shards (:mod:`pacing.cycle.merge`), builds the body full or as a
delta against the last acknowledged snapshot (:mod:`pacing.cycle.payload`), stages the audit
record (:mod:`pacing.cycle.audit`), claims the fence and posts until acknowledged or the cycle's
deadline, stores the feedback the receiver returned, and ends every cycle, published or not, with
its event for the metrics exporter (:func:`_finish`), which lets the next cycle start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis
import requests
from numpy.typing import NDArray

from pacing.clients.engagement import PublishAck
from pacing.clients.engagement_payload import encode_payload
from pacing.cluster.leadership import FenceVerdict
from pacing.cycle.audit import (
    AUDIT_RETENTION_SECONDS,
    AUDIT_SETTLED_SECONDS,
    AuditOutcome,
    audit_record,
    decision_rows,
    stage_audit,
)
from pacing.cycle.merge import IncompleteCycle, MergedCycle, merge_shards
from pacing.cycle.payload import (
    Snapshot,
    build_payload,
    can_send_delta,
    changed_since,
    channel_sums,
)
from pacing.cycle.plan import CycleContext
from pacing.cycle.repair import repair_due, request_history_repair
from pacing.domain import Reason
from pacing.errors import (
    DeltaBaseMismatch,
    EngagementRejected,
    EngagementUnavailable,
    InvalidResponse,
    StaleEpoch,
    StaleSequence,
)
from pacing.history import CycleRecord
from pacing.services import Services
from pacing.settings import Settings

logger = logging.getLogger(__name__)


PUBLISH_RETRY_PAUSE_SECONDS = 0.2
#: _fenced_post's status for a cycle whose seq the receiver holds from a timeline that Redis
#: lost in a failover: recorded ``in_doubt``, without decisions (they are not the receiver's)
LOST_TIMELINE = "lost_timeline"


def publish_cycle(
    services: Services,
    results: Sequence[Mapping[str, Any]],
    context: CycleContext,
    *,
    sleep: Callable[[float], None] = time.sleep,
    audit_ready: Callable[[int], None] | None = None,
) -> CycleRecord:
    """Merge, fence, publish and stage the audit record of one cycle (design.md §2).

    Returns the audit record, already stored in Redis for ``pacing.record_cycle``.
    ``audit_ready(seq)`` is called as soon as the record is staged, just before the POST: an
    audit task on another worker process writes its rows while the POST is in flight, waits
    for the outcome written after it (:func:`write_audit`) and commits at once, while this
    task stores the feedback the receiver returned. (One process alone runs the audit after
    this task, when the outcome is known.) The next cycle still starts only after the feedback
    is stored. Without ``audit_ready`` the caller hands the record over itself.
    """
    settings, clock, keys = services.settings, services.clock, services.keys
    deadline = context.started_at + settings.cycle_deadline
    merge_started = time.perf_counter()
    merge_started_at = clock()
    try:
        merged = merge_shards(results, seq=context.seq, shard_count=context.shard_count)
    except IncompleteCycle as error:
        logger.error(
            "cycle abandoned: %s", error, extra={"seq": context.seq, "epoch": context.epoch}
        )
        record = audit_record(context, status="abandoned", error=str(error), clock=clock)
        return _finish(services, context, record, merge_started_at=merge_started_at)

    previous = _load_snapshot(services)
    full = (
        context.new_leader
        or previous is None
        or previous.snapshot.epoch != context.epoch
        or context.seq - previous.full_seq >= settings.full_snapshot_every
        or services.redis.exists(keys.force_full) > 0  # cleared once a full snapshot lands
        or not can_send_delta(merged, previous.snapshot)
    )
    changed = changed_since(merged, previous.snapshot if previous else None)
    channels = channel_sums(merged)
    payload = build_payload(
        merged,
        seq=context.seq,
        epoch=context.epoch,
        leader=context.node,
        generated_at=clock(),
        refresh_period_seconds=settings.refresh_period_seconds,
        channels=channels,
        base_seq=None if full or previous is None else previous.snapshot.seq,
        include=None if full else changed,
    )
    body = encode_payload(payload)
    merge_ms = (time.perf_counter() - merge_started) * 1000

    rows = np.ones(len(merged.ids), dtype=np.bool_) if full else changed

    # Staged before the POST: if this process dies after the receiver took the cycle, the
    # audit sweeper still writes it (as "in_doubt"), so no published cycle lacks its row.
    staged = audit_record(
        context,
        status="in_doubt",
        error="the publishing worker stopped",
        clock=clock,
        merged=merged,
        decisions=decision_rows(merged, rows),
        channels=channels,
        changed_count=int(np.count_nonzero(changed)),
        payload_kind=payload["kind"],
        payload_bytes=len(body),
        merge_ms=merge_ms,
        publish_ms=None,
    )
    # the POST ends by the deadline plus one attempt's timeouts; the audit waits for it no longer
    stage_audit(services, staged, outcome_due=deadline + _attempt_seconds(settings) + 1.0)
    if audit_ready is not None:
        audit_ready(context.seq)
    publish_started = time.perf_counter()
    status, failure, ack = _fenced_post(
        services, context, body=body, deadline=deadline, sleep=sleep
    )
    publish_ms = (time.perf_counter() - publish_started) * 1000
    lost_timeline = status == LOST_TIMELINE
    if lost_timeline:
        status = "in_doubt"
    # Everything the cycle leaves in Redis goes in one round trip (with _finish's writes).
    pipe = services.redis.pipeline(transaction=True)
    if status in ("failed", "expired", "in_doubt"):
        # The receiver may or may not hold this cycle (a POST that timed out can still land),
        # so a delta against the last acknowledged base could be refused with a 409 and cost
        # another cycle: after a failed publish, publishing resumes with a full snapshot.
        pipe.set(keys.force_full, 1)
    if status == "published":
        if full:
            pipe.delete(keys.force_full)
        snapshot = Snapshot.of(merged, seq=context.seq, epoch=context.epoch)
        full_seq = context.seq if full else previous.full_seq if previous else context.seq
        pipe.set(keys.snapshot, orjson.dumps({**snapshot.to_json(), "full_seq": full_seq}))
        pipe.hset(
            keys.last_publish,
            mapping={
                "seq": context.seq,
                "epoch": context.epoch,
                "node": context.node,
                "at": clock(),
                "kind": payload["kind"],
                "bytes": len(body),
                "targets": len(payload["targets"]),
            },
        )
        pipe.hincrby(keys.counters, "cycles_published", 1)
    outcome = AuditOutcome(
        status=status,
        error=failure,
        published_at=clock() if status == "published" else None,
        publish_ms=publish_ms,
        decisions_unknown=lost_timeline,
    )
    # the staged record keeps its decisions; only the small outcome is written over it, and a
    # waiting audit task is woken
    settled = services.redis.pipeline(transaction=True)
    settled.exists(keys.audit(context.seq))  # read before the outcome: no audit is done yet
    settled.set(
        keys.audit_outcome(context.seq), orjson.dumps(outcome.to_json()), ex=AUDIT_RETENTION_SECONDS
    )
    settled.rpush(keys.audit_settled(context.seq), 1)
    settled.expire(keys.audit_settled(context.seq), AUDIT_SETTLED_SECONDS)
    still_staged = settled.execute()[0]
    if not still_staged:
        # A Redis failover lost the staged record (the promoted replica never had it): this
        # process still holds it, so it is staged again, settled, and handed to an audit task.
        logger.warning(
            "the staged audit record was lost (Redis failover); staged again",
            extra={"seq": context.seq, "epoch": context.epoch},
        )
        stage_audit(services, outcome.applied_to(staged))
        if audit_ready is not None:
            audit_ready(context.seq)
    if ack is not None:
        # the decisions that went out with this publish: all of them, or the changed ones
        # (the others went out with an earlier publish and are stored already)
        sent = np.flatnonzero(rows)
        _store_feedback(
            services,
            ack,
            context,
            in_flight=([merged.ids[i] for i in sent.tolist()], merged.budget[sent]),
        )
    return _finish(
        services,
        context,
        outcome.applied_to(staged),
        merged=merged,
        channels=channels,
        merge_started_at=merge_started_at,
        pipe=pipe,
    )


@dataclass(frozen=True, slots=True)
class _Previous:
    snapshot: Snapshot
    full_seq: int


def _load_snapshot(services: Services) -> _Previous | None:
    raw = services.redis.get(services.keys.snapshot)
    if not raw:
        return None
    data = orjson.loads(raw)
    return _Previous(Snapshot.from_json(data), int(data.get("full_seq", 0)))


def _fenced_post(
    services: Services,
    context: CycleContext,
    *,
    body: bytes,
    deadline: float,
    sleep: Callable[[float], None],
) -> tuple[str, str | None, PublishAck | None]:
    """Claim the fence, then POST until acknowledged or the cycle's deadline passes; the
    acknowledgement comes back with the status when this attempt was the one acknowledged."""
    extra = {"seq": context.seq, "epoch": context.epoch}
    verdict = services.leadership.claim_publish(
        epoch=context.epoch, seq=context.seq, node=context.node
    )
    if verdict is FenceVerdict.DEPOSED:
        logger.warning("not publishing: this cycle's leader was deposed", extra=extra)
        return "fenced", "epoch is no longer the lease's epoch", None
    if verdict is FenceVerdict.SUPERSEDED:
        logger.warning("not publishing: a newer cycle already published", extra=extra)
        return "fenced", "a newer seq already claimed the publish", None
    # An attempt that was sent but never answered (a read timeout) may still be applied by the
    # receiver, late: such a cycle ends "in_doubt", which keeps its decisions in the history,
    # instead of "failed", which would leave the receiver holding decisions the history lacks.
    sent_unanswered = False
    while True:
        if services.clock() >= deadline:
            # a newer cycle may already be running; this one's data is too old to be useful
            logger.warning("not publishing: the cycle is past its deadline", extra=extra)
            if sent_unanswered:
                return "in_doubt", "no answer before the deadline; the receiver may hold it", None
            return "expired", "the cycle passed its deadline before it could publish", None
        try:
            ack = services.engagement.publish(seq=context.seq, body=body)
        except EngagementUnavailable as error:
            sent_unanswered = sent_unanswered or _unanswered(error)
            if services.clock() + PUBLISH_RETRY_PAUSE_SECONDS >= deadline:
                logger.warning("publish failed until the deadline: %s", error, extra=extra)
                return ("in_doubt" if sent_unanswered else "failed"), _short(error), None
            sleep(PUBLISH_RETRY_PAUSE_SECONDS)
            # The fence was claimed once, before the first attempt; a retry comes later, and
            # the deadline may outlast the lease (cycle_deadline may be up to 2 × lease_ttl).
            # A cycle whose leader was deposed meanwhile must not send again.
            if not services.leadership.epoch_is_current(context.epoch, context.node):
                logger.warning("not retrying: this cycle's leader was deposed", extra=extra)
                status = "in_doubt" if sent_unanswered else "fenced"
                return status, "the leader was deposed while the publish was retried", None
            continue
        except DeltaBaseMismatch as error:
            services.redis.set(services.keys.force_full, 1)
            logger.info("receiver lacks the delta base; next publish is full", extra=extra)
            return "base_mismatch", _short(error), None
        except StaleEpoch as error:
            # The receiver holds a newer term than this one: Redis lost the newest epoch in a
            # failover and this node took the lease at an epoch already used. End the term and
            # raise the counters past what the receiver holds; the next tick starts a new one.
            seq_floor = error.last_seq or 0
            services.leadership.concede(
                epoch=context.epoch,
                node=context.node,
                epoch_floor=error.last_epoch or 0,
                seq_floor=seq_floor,
            )
            logger.warning(
                "the receiver holds a newer leadership term (epoch %s); this term ended",
                error.last_epoch,
                extra={**extra, "receiver_seq": error.last_seq},
            )
            if seq_floor >= context.seq:
                return _lost_timeline(services, context, receiver_seq=seq_floor)
            return "fenced", _short(error), None
        except StaleSequence as error:
            if error.last_seq == context.seq and sent_unanswered:
                # an earlier attempt of this very cycle arrived (its answer timed out)
                return "published", None, None
            # This cycle passed the fence, so no newer cycle of ours claimed it: a receiver
            # holding this seq or a larger one means Redis lost writes (a restart without
            # persistence, or a failover to a replica that lagged) and INCR handed out seqs
            # again. Jump past the receiver's seq, or every cycle would be refused until the
            # counter caught up (minutes to days).
            if error.last_seq is not None and (
                services.leadership.raise_seq_floor(error.last_seq) or error.last_seq == context.seq
            ):
                logger.warning(
                    "the receiver holds a newer seq than this cluster; seq raised past it",
                    extra={**extra, "receiver_seq": error.last_seq},
                )
                return _lost_timeline(services, context, receiver_seq=error.last_seq)
            return "stale_seq", _short(error), None
        except (EngagementRejected, InvalidResponse) as error:
            logger.error("publish rejected: %s", error, extra=extra)
            return "failed", _short(error), None
        return "published", None, ack


def _lost_timeline(
    services: Services, context: CycleContext, *, receiver_seq: int
) -> tuple[str, str | None, PublishAck | None]:
    """The receiver holds seqs up to ``receiver_seq`` from cycles Redis has forgotten: their
    audit records may be lost with them. Ask for the history to be checked once those cycles'
    audits are done (:mod:`pacing.cycle.repair`); this cycle's seq is one of them."""
    request_history_repair(
        services, upto=receiver_seq, due=repair_due(services.settings, services.clock())
    )
    return (
        LOST_TIMELINE,
        f"the receiver holds seq {receiver_seq}: seq {context.seq} was used before Redis lost "
        "it in a failover, and what the receiver holds for it is unknown",
        None,
    )


def _store_feedback(
    services: Services,
    ack: PublishAck,
    context: CycleContext,
    *,
    in_flight: tuple[list[str], NDArray[np.int64]],
) -> None:
    """Keep the counters the receiver returned and, beside them, the budgets of the publish
    that returned them: the next cycle counts those invitations as pending, since the
    receiver sends them after it counted (state.LoadedState). Malformed counters are logged
    and skipped (the receiver took the cycle all the same, and each target keeps its last
    known counters); the budgets are stored all the same."""
    try:
        ids, counters = ack.feedback_rows()
    except InvalidResponse as error:
        logger.warning(
            "publish feedback ignored: %s",
            error,
            extra={"seq": context.seq, "epoch": context.epoch},
        )
        ids, counters = [], np.empty((0, 4))
    in_flight_ids, budgets = in_flight
    services.state.save_feedback_rows(
        ids, counters, in_flight=(in_flight_ids, budgets.astype(np.float64))
    )


def _unanswered(error: EngagementUnavailable) -> bool:
    """True if the request went out and its answer did not come (a connect timeout did not)."""
    cause = error.__cause__
    return isinstance(cause, requests.exceptions.Timeout) and not isinstance(
        cause, requests.exceptions.ConnectTimeout
    )


CYCLE_EVENTS_KEPT = 2000  # the metrics exporter reads them every few seconds; ~1 h at 2 s


def _finish(
    services: Services,
    context: CycleContext,
    record: CycleRecord,
    *,
    merged: MergedCycle | None = None,
    channels: Mapping[str, Mapping[str, int]] | None = None,
    merge_started_at: float,
    pipe: redis.client.Pipeline | None = None,
) -> CycleRecord:
    """Publish the cycle's figures and let the next cycle start; ``pipe`` holds the cycle's
    other writes, its audit record staged already. Without it, ``record`` is staged here.
    ``channels``: the merged cycle's :func:`channel_sums`."""
    keys, clock = services.keys, services.clock
    latency_ms = (clock() - context.started_at) * 1000
    if pipe is None:
        stage_audit(services, record)
        pipe = services.redis.pipeline(transaction=True)
    # one event per cycle for the metrics exporter (stage latencies, reasons, channel budgets)
    reasons = (
        np.bincount(merged.reason, minlength=len(Reason)).tolist() if merged else [0] * len(Reason)
    )
    pipe.xadd(
        keys.cycle_events,
        {
            "seq": context.seq,
            "epoch": context.epoch,
            "node": context.node,
            "status": record.publish_status,
            "latency_ms": latency_ms,
            "fetch_ms": record.fetch_ms or 0.0,
            "pace_ms": record.pace_ms or 0.0,
            "merge_ms": record.merge_ms or 0.0,
            "publish_ms": record.publish_ms or 0.0,
            # the cycle's timeline in Unix seconds (refresh → shards → merge → acknowledged):
            # where a slow cycle spent its time, including the queueing between tasks
            "started_at": context.started_at,
            "shards_started_at": merged.shards_started_at if merged else 0.0,
            "shards_finished_at": merged.shards_finished_at if merged else 0.0,
            # shards paced without a Stat Server answer (on last good statistics, or stale)
            "shards_unanswered": merged.shards_unanswered if merged else 0,
            "merge_started_at": merge_started_at,
            "published_at": record.published_at.timestamp() if record.published_at else 0.0,
            "fetch_ms_total": merged.fetch_ms_total if merged else 0.0,
            "pace_ms_total": merged.pace_ms_total if merged else 0.0,
            "targets": record.target_count,
            "changed": record.changed_count,
            "error_rows": record.error_count,
            "payload_kind": record.payload_kind,
            "payload_bytes": record.payload_bytes,
            "reasons": orjson.dumps(
                {reason.label: count for reason, count in zip(Reason, reasons, strict=True)}
            ),
            # per channel: budget, ready capacity, targets and how many are in cold start
            "channels": orjson.dumps(channels or {}),
            # per channel: the interactions answered and abandoned since the previous cycle,
            # counted by the shards whatever became of the publish (their state moved on), as
            # lists in shard.OUTCOME_FIELDS order; the exporter's abandonment comes from these
            "outcomes": orjson.dumps(merged.outcomes if merged else {}),
        },
        maxlen=CYCLE_EVENTS_KEPT,
        approximate=True,
    )
    pipe.hset(
        keys.last_cycle,
        mapping={
            "seq": context.seq,
            "epoch": context.epoch,
            "status": record.publish_status,
            "latency_ms": round(latency_ms, 1),
            "targets": record.target_count,
            "error_rows": record.error_count,
            "at": clock(),
        },
    )
    pipe.execute()
    services.leadership.finish_cycle(epoch=context.epoch, seq=context.seq)
    logger.info(
        "cycle %s %s in %.0f ms (%d targets, %d changed, %d error rows)",
        context.seq,
        record.publish_status,
        latency_ms,
        record.target_count,
        record.changed_count,
        record.error_count,
        extra={"seq": context.seq, "epoch": context.epoch},
    )
    return record


def _attempt_seconds(settings: Settings) -> float:
    """The longest one publish attempt can take: an OAuth token request, then the POST, each
    capped at the connect plus the read timeout."""
    return 2 * (settings.http_connect_timeout_seconds + settings.http_read_timeout)


def _short(error: Exception) -> str:
    return str(error)[:300]
