"""The work of one cycle, stage by stage, as plain functions (Celery only calls them).

``tasks`` wraps each stage in a task; the benchmark's single-process baseline calls the very same
functions in a loop. Each stage takes its clients and clock as arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import redis
import requests
from numpy.typing import NDArray

from pacing import algorithms
from pacing.algorithms import PacingInputs, PacingParameters, PacingTargets
from pacing.clients.engagement import PublishAck, encode_payload
from pacing.clients.statistics import COLUMN, StatisticsBatch
from pacing.cluster.leadership import FenceVerdict, Role, TickOutcome
from pacing.cycle import (
    REACTIVE_DECIMALS,
    IncompleteCycle,
    MergedCycle,
    ShardRows,
    Snapshot,
    build_payload,
    can_send_delta,
    changed_since,
    channel_sums,
    interaction_outcomes,
    merge_shards,
    optional_ints,
    reason_label,
    split_into_shards,
)
from pacing.domain import Objective, Reason, TargetConfig
from pacing.errors import (
    DeltaBaseMismatch,
    EngagementRejected,
    EngagementUnavailable,
    InvalidResponse,
    StaleSequence,
    StatServerUnavailable,
)
from pacing.history.repository import (
    ChannelTotal,
    CycleRecord,
    DecisionColumns,
    DecisionRow,
    record_cycle,
)
from pacing.services import Services
from pacing.settings import Settings

logger = logging.getLogger(__name__)

AUDIT_RETENTION_SECONDS = 7 * 24 * 3600  # an audit record waits this long for the database
AUDIT_SETTLED_SECONDS = 600  # the wake-up of an audit waiting for its outcome, if none took it
PUBLISH_RETRY_PAUSE_SECONDS = 0.2

_STAT_FIELDS = (
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "aht_seconds",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
)


#: The state columns holding the Stat Server counters answered_total and abandoned_total as
#: last seen (the exporter's abandonment is their change over a cycle)
_COUNTER_COLUMNS = [
    algorithms.STATE_FIELDS.index("last_answered_total"),
    algorithms.STATE_FIELDS.index("last_abandoned_total"),
]
_ABANDONMENT_RATE = algorithms.OBJECTIVES.index(Objective.ABANDONMENT_RATE)


def pacing_parameters(settings: Settings) -> PacingParameters:
    return PacingParameters(
        refresh_period_seconds=settings.refresh_period_seconds,
        prior_accept_probability=settings.prior_accept_probability,
        prior_resolve_delay_seconds=settings.prior_resolve_delay_seconds,
        prior_handle_time_seconds=settings.prior_handle_time_seconds,
        prior_patience_seconds=settings.prior_patience_seconds,
    )


# --- shards -------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class PlannedCycle:
    """What a beat tick decided: the lease outcome and, if this node may start a cycle, its
    context and the shards of the chord."""

    outcome: TickOutcome
    context: CycleContext | None
    shards: list[list[list[Any]]]
    #: the name each shard's rows are parked under in Redis (what the chord header carries)
    digests: list[str] = dataclasses.field(default_factory=list)
    #: some shard's rows were parked anew (new or changed targets, or a flushed Redis)
    targets_changed: bool = False


def plan_cycle(services: Services, *, node: str) -> PlannedCycle:
    """Take or renew ``node``'s lease; when it leads and nothing is in flight, cut the shards."""
    settings = services.settings
    started_at = services.clock()  # the cycle's latency counts from the tick, lease included
    outcome = services.leadership.tick(
        node=node,
        lease_ttl_seconds=settings.lease_ttl,
        deadline_seconds=settings.cycle_deadline,
    )
    if outcome.role is not Role.LEADER:
        return PlannedCycle(outcome, None, [])
    shards = services.enabled_shards(settings.shard_size, settings.max_shards)
    digests = services.shard_digests(settings.shard_size, settings.max_shards)
    targets_changed = park_targets(services, shards, digests)
    context = CycleContext(
        seq=outcome.seq,
        epoch=outcome.epoch,
        node=node,
        started_at=started_at,
        shard_count=len(shards),
        new_leader=outcome.new_leader,
    )
    return PlannedCycle(outcome, context, shards, digests, targets_changed)


#: Parked target rows outlive a stopped leader by a day; every cycle renews them.
PARKED_TARGETS_SECONDS = 24 * 3600


def park_targets(services: Services, shards: Sequence[Any], digests: Sequence[str]) -> bool:
    """Make sure every shard's target rows are in Redis under their digest; True if some
    shard's rows were not there yet.

    The chord header then carries a 32-character name instead of the rows: encoding 10,000
    targets' rows in the task messages (kombu's stdlib JSON) cost 9 ms in the refresh and 9 ms
    across the shard tasks, 100,000 targets ten times that, and every worker process keeps the
    decoded rows of the shards it has seen. One round trip renews them all; rows are written
    only when missing (new targets, a flushed Redis).
    """
    if not digests:
        return False
    keys = [services.keys.shard_targets(digest) for digest in digests]
    pipe = services.redis.pipeline(transaction=False)
    for key in keys:
        pipe.expire(key, PARKED_TARGETS_SECONDS)
    renewed = pipe.execute()
    missing = [i for i, ok in enumerate(renewed) if not ok]
    if missing:
        pipe = services.redis.pipeline(transaction=False)
        for i in missing:
            pipe.set(keys[i], orjson.dumps(shards[i]), ex=PARKED_TARGETS_SECONDS)
        pipe.execute()
    return bool(missing)


#: At most this many (goal, objective) pairs are presolved, the most common first: each costs
#: one worker process about a second and every process 1.2 MB of cache.
PRESOLVE_MAX_GOALS = 8


def operating_point_goals(targets: Sequence[TargetConfig]) -> list[tuple[float, bool]]:
    """The (goal as a fraction, is BUSY_FACTOR) pairs of ``targets``, the most common first."""
    counts = Counter(
        (t.goal_percent / 100.0, t.objective is Objective.BUSY_FACTOR) for t in targets
    )
    return [pair for pair, _ in counts.most_common(PRESOLVE_MAX_GOALS)]


def goals_to_presolve(services: Services, plan: PlannedCycle) -> list[tuple[float, bool]]:
    """The goals to presolve after ``plan``: the targets' when this node just took the lease or
    the targets changed, else none."""
    if not (plan.targets_changed or plan.outcome.new_leader):
        return []
    return operating_point_goals(services.enabled_targets())


def presolve_operating_points(services: Services, goals: Sequence[Sequence[Any]]) -> int:
    """Solve the Erlang-A operating-point grid of ``goals`` ahead of the cycles and share it.

    Without it the cycles solve the points as targets reach them (every target leaving cold
    start, every estimate drifting past the cached neighbourhood): at 10,000 targets in the
    benchmark's first minutes about a tenth of the shards' CPU. Here one worker process solves
    each goal's grid once (about a second) off the cycle's path, and every process absorbs it
    from Redis at its next shard. Returns how many points were solved here.
    """
    shared = services.operating_points
    shared.pull()  # what other processes solved already is not solved again
    ceiling = pacing_parameters(services.settings).busy_factor_abandonment_ceiling
    solved = sum(
        algorithms.OPERATING_POINTS.presolve(float(goal), bool(busy), busy_ceiling=ceiling)
        for goal, busy in goals
    )
    shared.push()
    return solved


def run_shard(
    services: Services,
    *,
    seq: int,
    shard: int,
    rows: Sequence[Sequence[Any]] | str,
    epoch: int = 0,
) -> ShardRows:
    """One chord header task's work on its target rows, or on the digest they are parked
    under (:func:`park_targets`); a shard that fails gets error rows.

    Raises :class:`ShardTargetsMissing` only if the rows are parked and gone: without them
    not even error rows can be made, and the merge must not publish a cycle without them.
    """
    if isinstance(rows, str):
        rows = services.shard_targets(rows)
    try:
        targets = ShardTargets.from_rows(rows)
        return pace_shard(services, seq=seq, shard=shard, targets=targets)
    except Exception:
        logger.exception(
            "shard failed; its targets get error rows",
            extra={"seq": seq, "shard": shard, "epoch": epoch},
        )
        return failed_shard(seq=seq, shard=shard, rows=rows)


def run_cycle_in_process(
    services: Services,
    *,
    node: str,
    before_stage: Callable[[str], None] | None = None,
    audit: bool = True,
) -> CycleRecord | None:
    """One whole cycle in this process, with the very functions the Celery tasks call.

    The benchmark's single-process baseline and the virtual-time evaluation's cycle: the same
    fetch, pacing, merge, fenced publish and audit write, one shard after another, without a
    broker. None when ``node`` does not lead or a cycle is still in flight.
    ``before_stage("shards")`` and ``before_stage("publish")`` are called as the stages start
    (the evaluation moves its clock there). ``audit=False`` drops the staged audit record
    instead of writing it (pacing never reads the history back).
    """
    plan = plan_cycle(services, node=node)
    if plan.context is None:
        return None
    if goals := goals_to_presolve(services, plan):  # pacing.refresh sends it as a task
        presolve_operating_points(services, goals)
    seq = plan.context.seq
    if before_stage is not None:
        before_stage("shards")
    results = [
        run_shard(services, seq=seq, shard=index, rows=digest).to_json()
        for index, digest in enumerate(plan.digests)
    ]
    if before_stage is not None:
        before_stage("publish")
    record = publish_cycle(services, results, plan.context)
    if audit:
        write_audit(services, record.seq)
    else:
        forget_audit(services, record.seq)
    return record


def pace_shard(services: Services, *, seq: int, shard: int, targets: ShardTargets) -> ShardRows:
    """Fetch one shard's statistics, pace it and save its state. Never raises for a target."""
    clock = services.clock
    ids = targets.ids
    started_at = clock()
    started = time.perf_counter()
    statistics: StatisticsBatch
    try:
        statistics = services.stat_server.fetch(ids)
    except StatServerUnavailable as error:
        # design.md §3.1: with both gateways down, a target keeps its last good statistics
        # while they are younger than stats_max_age; only then is it paced as stale (budget 0)
        statistics = services.state.last_statistics(
            ids, now=clock(), max_age_seconds=services.settings.stats_max_age
        )
        logger.warning(
            "no Stat Server answered; shard paced on its last good statistics or as stale",
            extra={"seq": seq, "shard": shard, "error": str(error)},
        )
        fresh = False
    else:
        fresh = True
    fetched = time.perf_counter()

    state, feedback, in_flight = services.state.load(ids, width=algorithms.STATE_WIDTH)
    services.operating_points.pull()
    inputs = _inputs(ids, statistics, feedback, in_flight)
    result = algorithms.pace(
        inputs,
        targets.targets,
        state,
        parameters=pacing_parameters(services.settings),
        now=clock(),
    )
    # one round trip: the new state, and the fresh statistics for when no gateway answers
    services.state.save(ids, result.state, statistics=statistics if fresh else None)
    services.operating_points.push()
    # what the Stat Server counted since the previous cycle, for the exporter's abandonment
    outcomes = shard_outcomes(targets, before=state, after=result.state)
    paced = time.perf_counter()
    return ShardRows(
        shard=shard,
        seq=seq,
        ids=ids,
        channel=targets.channel,
        budget=result.proactive_budget.tolist(),
        reactive=np.round(result.reactive_state, REACTIVE_DECIMALS).tolist(),
        reason=result.reason.tolist(),
        ready=optional_ints(inputs.agents_ready),
        busy=optional_ints(inputs.agents_busy),
        waiting=optional_ints(inputs.interactions_waiting),
        fetch_ms=(fetched - started) * 1000,
        pace_ms=(paced - fetched) * 1000,
        started_at=started_at,
        finished_at=clock(),
        outcomes=outcomes,
        answered=fresh,
    )


def shard_outcomes(
    targets: ShardTargets, *, before: NDArray[np.float64], after: NDArray[np.float64]
) -> dict[str, list[float]]:
    """Per channel, the interactions the shard's targets answered and abandoned between the
    state ``before`` pace() and the state it returned (:func:`pacing.cycle.interaction_outcomes`).
    """
    return interaction_outcomes(
        targets.channel,
        before=before[:, _COUNTER_COLUMNS],
        after=after[:, _COUNTER_COLUMNS],
        goal=targets.abandonment_goal,
    )


#: Parked shard rows outlive any cycle that could still merge them (cycle_deadline ≤ 120 s).
PARKED_ROWS_SECONDS = 600


def park_shard(services: Services, rows: ShardRows) -> dict[str, Any]:
    """Keep a shard's rows in Redis and return the small reference the chord carries.

    Celery moves a header result through the result backend, the chord's join set and the
    body's message, JSON-encoding it with the standard library at each step; 10,000 targets'
    rows made that about 600 KB coded six times, 40-50 ms between the last shard and the
    merge. Parked, they are written once and read once, with orjson, in one MGET.
    """
    services.redis.set(
        services.keys.shard_rows(rows.seq, rows.shard),
        orjson.dumps(rows.to_json()),
        ex=PARKED_ROWS_SECONDS,
    )
    return {"parked": True, "seq": rows.seq, "shard": rows.shard}


def collect_shards(
    services: Services, results: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The rows behind the chord's results: parked ones read back (one round trip), others as
    they are. A parked shard whose rows are gone is left out, so the merge reports it
    missing."""
    parked = [r for r in results if r.get("parked")]
    rows: list[Mapping[str, Any]] = [r for r in results if not r.get("parked")]
    if parked:
        keys = [services.keys.shard_rows(int(r["seq"]), int(r["shard"])) for r in parked]
        rows.extend(orjson.loads(raw) for raw in services.redis.mget(keys) if raw)
    return rows


def forget_shards(services: Services, seq: int, shard_count: int) -> None:
    if shard_count:
        services.redis.delete(*(services.keys.shard_rows(seq, i) for i in range(shard_count)))


def failed_shard(*, seq: int, shard: int, rows: Sequence[Sequence[Any]]) -> ShardRows:
    """Error rows for a whole shard whose processing failed unexpectedly: budget 0 each."""
    n = len(rows)
    return ShardRows(
        shard=shard,
        seq=seq,
        ids=[str(row[0]) if len(row) > 0 else "" for row in rows],
        channel=[str(row[1]) if len(row) > 1 else "" for row in rows],
        budget=[0] * n,
        reactive=[1.0] * n,
        reason=[int(Reason.ERROR)] * n,
        ready=[None] * n,
        busy=[None] * n,
        waiting=[None] * n,
        fetch_ms=0.0,
        pace_ms=0.0,
        answered=False,
    )


def _inputs(
    ids: Sequence[str],
    statistics: StatisticsBatch,
    feedback: np.ndarray[Any, np.dtype[np.float64]],
    in_flight: np.ndarray[Any, np.dtype[np.float64]],
) -> PacingInputs:
    rows = statistics.rows_for(ids)
    reason = np.zeros(len(ids), dtype=np.int8)
    errors = statistics.errors
    for i, tid in enumerate(ids):
        if tid in errors:
            reason[i] = errors[tid].reason
        elif math.isnan(rows[i, 0]):  # an id the answer did not cover at all
            reason[i] = Reason.UNKNOWN_TARGET
    return PacingInputs(
        **{name: rows[:, COLUMN[name]].copy() for name in _STAT_FIELDS},
        offers_sent_total=feedback[:, 0].copy(),
        offers_accepted_total=feedback[:, 1].copy(),
        offers_resolved_total=feedback[:, 2].copy(),
        offers_pending=feedback[:, 3].copy(),
        offers_in_flight=in_flight.copy(),
        input_reason=reason,
    )


# --- publish --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CycleContext:
    """What travels with every task of one cycle."""

    seq: int
    epoch: int
    node: str
    started_at: float  # Unix seconds
    shard_count: int
    new_leader: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "node": self.node,
            "started_at": self.started_at,
            "shard_count": self.shard_count,
            "new_leader": self.new_leader,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CycleContext:
        return cls(**{name: data[name] for name in cls.__slots__})


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
        record = _record(context, status="abandoned", error=str(error), clock=clock)
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
    staged = _record(
        context,
        status="in_doubt",
        error="the publishing worker stopped",
        clock=clock,
        merged=merged,
        decisions=_decision_rows(merged, rows),
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
    )
    # the staged record keeps its decisions; only the small outcome is written over it, and a
    # waiting audit task is woken
    settled = services.redis.pipeline(transaction=True)
    settled.set(
        keys.audit_outcome(context.seq), orjson.dumps(outcome.to_json()), ex=AUDIT_RETENTION_SECONDS
    )
    settled.rpush(keys.audit_settled(context.seq), 1)
    settled.expire(keys.audit_settled(context.seq), AUDIT_SETTLED_SECONDS)
    settled.execute()
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
class AuditOutcome:
    """How a cycle's publish ended: written over its staged audit record after the POST.

    Staging the record (thousands of decision rows) once, before the POST, and only this after
    it, halves the audit's Redis traffic of a publishing cycle.
    """

    status: str
    error: str | None
    published_at: float | None
    publish_ms: float | None

    def applied_to(self, record: CycleRecord) -> CycleRecord:
        """``record`` with this outcome; a cycle that did not reach the receiver keeps no
        decisions (the receiver does not hold them)."""
        published = self.status in ("published", "in_doubt")
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
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditOutcome:
        return cls(
            status=str(data["status"]),
            error=data.get("error"),
            published_at=data.get("published_at"),
            publish_ms=data.get("publish_ms"),
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
    verdict = services.leadership.claim_publish(epoch=context.epoch, seq=context.seq)
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
            if not services.leadership.epoch_is_current(context.epoch):
                logger.warning("not retrying: this cycle's leader was deposed", extra=extra)
                status = "in_doubt" if sent_unanswered else "fenced"
                return status, "the leader was deposed while the publish was retried", None
            continue
        except DeltaBaseMismatch as error:
            services.redis.set(services.keys.force_full, 1)
            logger.info("receiver lacks the delta base; next publish is full", extra=extra)
            return "base_mismatch", _short(error), None
        except StaleSequence as error:
            if error.last_seq == context.seq:
                # an earlier attempt of this very cycle arrived (its answer timed out)
                return "published", None, None
            # This cycle passed the fence, so no newer cycle of ours claimed it: a receiver
            # holding a larger seq means Redis lost its data (a restart without persistence)
            # and INCR began again at 1. Jump past the receiver's seq, or every cycle would be
            # refused until the counter caught up (minutes to days).
            if (
                error.last_seq is not None
                and error.last_seq > context.seq
                and services.leadership.raise_seq_floor(error.last_seq)
            ):
                logger.warning(
                    "the receiver holds a newer seq than this cluster; seq raised past it",
                    extra={**extra, "receiver_seq": error.last_seq},
                )
            return "stale_seq", _short(error), None
        except (EngagementRejected, InvalidResponse) as error:
            logger.error("publish rejected: %s", error, extra=extra)
            return "failed", _short(error), None
        return "published", None, ack


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


def _decision_rows(
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


def _record(
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
            # lists in cycle.OUTCOME_FIELDS order; the exporter's abandonment comes from these
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


def _attempt_seconds(settings: Settings) -> float:
    """The longest one publish attempt can take: an OAuth token request, then the POST, each
    capped at the connect plus the read timeout."""
    return 2 * (settings.http_connect_timeout_seconds + settings.http_read_timeout)


def _short(error: Exception) -> str:
    return str(error)[:300]
