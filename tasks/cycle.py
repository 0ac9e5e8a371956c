"""The pacing cycle as Celery tasks, in the order they run (design.md §2).

    beat ──tick──▶ pacing.refresh ──chord──▶ pacing.pace_shard × K ──▶ pacing.publish_cycle
                         │                                                │
                         └──▶ pacing.presolve_operating_points            │
                              (new leader or targets changed)             │
                                                  pacing.record_cycle ◀───┘

    pacing.repair_lost_audits: after a new term, or a receiver holding seqs Redis forgot, the
    history is checked for cycles whose audit record a failover lost (pacing.cycle.repair)

Each task is a thin wrapper: the work is in :mod:`pacing.cycle`, one module per stage in this
order (plan, presolve, shard, publish, audit). Arguments are small JSON values; ``argsrepr``
gives Flower a short, secret-free summary instead of whole target lists. The process's clients
come from :mod:`tasks.services`.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis.exceptions
from celery import Task, chord

from pacing import history
from pacing.cluster.leadership import Role
from pacing.cycle import presolve, publish  # their functions share the names of the tasks
from pacing.cycle.audit import write_audit
from pacing.cycle.plan import UNCONFIRMED_MASTER, CycleContext, plan_cycle
from pacing.cycle.presolve import goals_to_presolve
from pacing.cycle.repair import repair_due, repair_history, request_history_repair, take_due_repairs
from pacing.cycle.shard import collect_shards, forget_shards, park_shard, run_shard
from pacing.errors import HistoryUnavailable, ShardTargetsMissing
from pacing.logs import bind_log_context
from pacing.services import Services
from tasks.app import app
from tasks.services import services, settings

logger = logging.getLogger(__name__)

LOST_AUDIT_AFTER_SECONDS = 30  # longer than record_cycle's own retries (1 + 2 + 4 + 8 s)
LOST_AUDITS_PER_TICK = 20  # bounds the catch-up load after a long database outage


@app.task(name="pacing.refresh", ignore_result=True)
def refresh(node: str) -> str:
    """A beat tick from ``node``: lead (or stay standby) and start one cycle."""
    svc = services()
    plan = plan_cycle(svc, node=node)
    outcome = plan.outcome
    if outcome.role is Role.STANDBY:
        if outcome.other == UNCONFIRMED_MASTER:
            logger.warning("not leading: %s", UNCONFIRMED_MASTER, extra={"node": node})
        return "standby"
    # from here on every line of this tick belongs to the cycle the tick starts (or skips)
    bind_log_context(seq=outcome.seq, epoch=outcome.epoch)
    if outcome.new_leader:
        logger.info("%s became leader", node, extra={"epoch": outcome.epoch, "node": node})
        record_leadership.delay(
            outcome.epoch,
            node,
            datetime.fromtimestamp(svc.clock(), UTC).isoformat(),
            outcome.other or None,
        )
        # a new term may follow a Redis failover that lost the last cycles' audit records
        request_history_repair(svc, upto=outcome.seq - 1, due=repair_due(settings, svc.clock()))
    if plan.context is None:  # Role.OVERRUN
        logger.warning(
            "overrun: cycle %s still in flight; tick skipped",
            outcome.seq,
            extra={"seq": outcome.seq, "epoch": outcome.epoch, "node": node},
        )
        return "overrun"
    _requeue_lost_audits(svc)
    for upto in take_due_repairs(svc):
        repair_lost_audits.delay(upto)

    context, shards = plan.context, plan.shards
    deadline = settings.cycle_deadline
    body = publish_cycle.s(context.to_json()).set(
        expires=deadline,
        argsrepr=f"(seq={context.seq}, epoch={context.epoch}, shards={len(shards)})",
    )
    if not shards:
        body.delay([])
        return "leader"
    # the rows are parked in Redis (pacing.cycle.plan.park_targets): the header carries names
    header = [
        pace_shard.s(context.seq, index, digest, epoch=context.epoch).set(
            expires=deadline,
            argsrepr=f"(seq={context.seq}, shard={index}, targets={len(rows)})",
            kwargsrepr=f"{{'epoch': {context.epoch}}}",
        )
        for index, (rows, digest) in enumerate(zip(shards, plan.digests, strict=True))
    ]
    chord(header)(body)
    if goals := goals_to_presolve(svc, plan):
        presolve_operating_points.apply_async((goals,), expires=deadline)
    return "leader"


@app.task(
    name="pacing.pace_shard",
    # used inside a chord, so it must keep its result; idempotent, so a redelivery is harmless
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.cycle_deadline * 2,  # the cycle is abandoned long before this
    time_limit=settings.cycle_deadline * 2 + 5,
    # the result is a reference to the rows parked in Redis (pacing.cycle.shard.park_shard)
    resultrepr_maxsize=64,
)
def pace_shard(
    seq: int, shard: int, targets: str | list[list[Any]], epoch: int = 0
) -> dict[str, Any]:
    """Chord header: statistics → state → pacing → rows parked in Redis. Never raises for a
    target; the result is a small reference to the parked rows. ``targets`` is the digest
    the shard's target rows are parked under (or, from an older release, the rows)."""
    svc = services()
    try:
        rows = run_shard(svc, seq=seq, shard=shard, rows=targets, epoch=epoch)
    except ShardTargetsMissing:
        # the chord cannot complete: let the next tick start at once (it parks them again)
        logger.exception("shard targets missing; cycle abandoned", extra={"seq": seq})
        with contextlib.suppress(redis.exceptions.RedisError):
            svc.leadership.finish_cycle(epoch=epoch, seq=seq)
        raise
    return park_shard(svc, rows)


@app.task(name="pacing.publish_cycle", ignore_result=True)
def publish_cycle(results: list[dict[str, Any]], context: dict[str, Any]) -> None:
    """Chord body: merge, fence, publish, then hand the cycle to the audit task."""
    cycle = CycleContext.from_json(context)
    svc = services()
    handed: list[int] = []

    def audit_ready(seq: int) -> None:
        # as soon as the record is staged: another process writes its rows during the POST
        # and commits once the outcome is in Redis, while this one stores the feedback
        record_cycle.delay(seq)
        handed.append(seq)

    try:
        record = publish.publish_cycle(
            svc, collect_shards(svc, results), cycle, audit_ready=audit_ready
        )
    except Exception:
        # let the next tick start at once instead of waiting for the deadline
        with contextlib.suppress(redis.exceptions.RedisError):
            svc.leadership.finish_cycle(epoch=cycle.epoch, seq=cycle.seq)
        raise
    if not handed:  # a cycle that ended before its publish (abandoned) has a record too
        record_cycle.delay(record.seq)
    forget_shards(svc, cycle.seq, cycle.shard_count)


@app.task(
    name="pacing.record_cycle",
    bind=True,
    ignore_result=True,
    # the record waits in Redis; losing this message before the write would lose history
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(HistoryUnavailable, redis.exceptions.ConnectionError),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    # a database outage delays the audit, it never loses it: after these retries the record
    # stays staged in Redis and the leader's sweep (_requeue_lost_audits) sends it again
    max_retries=4,
)
def record_cycle(self: Task, seq: int) -> bool:
    """Write cycle ``seq`` to the history database; idempotent on ``seq``."""
    return write_audit(services(), seq)


@app.task(
    name="pacing.repair_lost_audits",
    ignore_result=True,
    acks_late=True,
    autoretry_for=(HistoryUnavailable, redis.exceptions.ConnectionError),
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=None,
)
def repair_lost_audits(upto: int) -> list[int]:
    """Record ``in_doubt`` the cycles up to ``upto`` whose audit record Redis lost
    (:mod:`pacing.cycle.repair`); returns their seqs."""
    return repair_history(services(), upto=upto)


@app.task(name="pacing.presolve_operating_points", ignore_result=True)
def presolve_operating_points(goals: list[list[Any]]) -> int:
    """Solve the operating-point grid of the targets' ``[goal, busy_factor]`` pairs ahead of the
    cycles and share it through Redis (sent by the leader when targets change or it takes over);
    returns how many points were new. Losing it only means the cycles solve them as before."""
    return presolve.presolve_operating_points(services(), goals)


@app.task(
    name="pacing.record_leadership",
    ignore_result=True,
    acks_late=True,
    autoretry_for=(HistoryUnavailable,),
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=None,
)
def record_leadership(epoch: int, node: str, acquired_at: str, previous: str | None = None) -> bool:
    """Record that ``node`` took the lease at ``epoch`` (``previous`` is ``"<epoch>:<node>"``)."""
    previous_epoch, _, previous_node = (previous or "").partition(":")
    return history.record_leadership_change(
        services().history,
        epoch=epoch,
        node=node,
        acquired_at=datetime.fromisoformat(acquired_at),
        previous_node=previous_node or None,
        previous_epoch=int(previous_epoch) if previous_epoch else None,
    )


@app.task(name="pacing.purge_history", ignore_result=True)
def purge_history() -> int:
    """Daily retention: delete cycles older than ``history_retention_days``, in batches."""
    cutoff = datetime.now(UTC) - timedelta(days=settings.history_retention_days)
    deleted = history.purge_history(services().history, older_than=cutoff)
    logger.info("purged %d cycles older than %s", deleted, cutoff.isoformat())
    return deleted


def _requeue_lost_audits(svc: Services) -> None:
    """Re-send audit writes still staged after their retries ran out or their worker died."""
    now = svc.clock()
    cutoff = now - LOST_AUDIT_AFTER_SECONDS
    stale = svc.redis.zrangebyscore(
        svc.keys.audit_pending, "-inf", cutoff, start=0, num=LOST_AUDITS_PER_TICK
    )
    for raw in cast(list[bytes], stale):
        seq = int(raw)
        svc.redis.zadd(svc.keys.audit_pending, {str(seq): now})
        record_cycle.delay(seq)
