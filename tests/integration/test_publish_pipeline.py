"""The chord body, ``pacing.cycle.publish.publish_cycle``, driven directly (no Celery): real
Redis on a leased database, the scripted loopback stub as the engagement platform, a hand-moved
clock."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from pacing.clients.engagement import PUBLISH_PATH
from pacing.cluster.leadership import Role
from pacing.cycle import publish as publish_stage  # the module its monkeypatch edits
from pacing.cycle.audit import forget_audit, load_audit
from pacing.cycle.merge import IncompleteCycle, merge_shards
from pacing.cycle.plan import CycleContext
from pacing.cycle.publish import PUBLISH_RETRY_PAUSE_SECONDS, publish_cycle
from pacing.cycle.rows import ShardRows
from pacing.cycle.shard import collect_shards, forget_shards, park_shard
from pacing.domain import Reason
from pacing.services import Services
from pacing.settings import load_settings
from tests.http_stub import HttpStub, RecordedRequest, StubResponse, json_response
from tests.support import LOOPBACK_NODE_SETTINGS, leased_redis_db, redis_url

pytestmark = pytest.mark.integration

OK = int(Reason.OK)
START = 1_795_000_000.0
FEEDBACK = {
    "a": {
        "offers_sent_total": 10,
        "offers_accepted_total": 3,
        "offers_resolved_total": 9,
        "offers_pending": 1,
    }
}


class FakeClock:
    """Unix time that only moves when the test (or the injected sleep) moves it."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def accept(request: RecordedRequest) -> StubResponse:
    """What a healthy receiver answers: the seq it was sent, with feedback."""
    return json_response({"accepted_seq": request.json()["seq"], "feedback": FEEDBACK})


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    with leased_redis_db() as db:
        yield db


@pytest.fixture
def stub() -> Iterator[HttpStub]:
    with HttpStub() as running:
        running.on("POST", PUBLISH_PATH, accept)
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def services(redis_db: int, stub: HttpStub, clock: FakeClock) -> Iterator[Services]:
    settings = load_settings(
        {
            "environment": "development",
            "node_name": "node-a",
            "broker_url": redis_url(redis_db),
            "key_prefix": f"pipeline-test-{uuid.uuid4().hex[:8]}",
            "engagement_url": stub.url,
            "engagement_token": "t",
            **LOOPBACK_NODE_SETTINGS,
            "cycle_deadline_seconds": LOOPBACK_NODE_SETTINGS["refresh_period_seconds"],  # the least
            "full_snapshot_every": 100,
        }
    )
    built = Services(settings, clock=clock)
    try:
        yield built
    finally:
        built.close()


def start_cycle(services: Services, *, node: str = "node-a", shard_count: int = 2) -> CycleContext:
    """Take (or renew) the lease and start a cycle, as ``pacing.refresh`` does."""
    outcome = services.leadership.tick(
        node=node,
        lease_ttl_seconds=services.settings.lease_ttl,
        deadline_seconds=services.settings.cycle_deadline,
    )
    assert outcome.role is Role.LEADER
    return CycleContext(
        seq=outcome.seq,
        epoch=outcome.epoch,
        node=node,
        started_at=services.clock(),
        shard_count=shard_count,
        new_leader=outcome.new_leader,
    )


def shard_results(context: CycleContext, budgets: dict[str, int]) -> list[dict[str, Any]]:
    """Two shard results: targets a, b in shard 0 and c in shard 1 (budget per target)."""
    layout = [["a", "b"], ["c"]]
    results = []
    for index, ids in enumerate(layout):
        results.append(
            ShardRows(
                shard=index,
                seq=context.seq,
                ids=ids,
                channel=["chat"] * len(ids),
                budget=[budgets[i] for i in ids],
                reactive=[1.0] * len(ids),
                reason=[OK] * len(ids),
                ready=[2] * len(ids),
                busy=[3] * len(ids),
                waiting=[0] * len(ids),
                fetch_ms=1.0,
                pace_ms=1.0,
            ).to_json()
        )
    return results


BUDGETS = {"a": 1, "b": 2, "c": 3}


def publish(
    services: Services,
    context: CycleContext,
    budgets: dict[str, int],
    *,
    sleep: Callable[[float], None] | None = None,
) -> Any:
    return publish_cycle(
        services,
        shard_results(context, budgets),
        context,
        sleep=sleep or _no_sleep,
    )


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"publish_cycle slept {seconds} s where no retry was expected")


def stored_json(services: Services, seq: int) -> dict[str, Any] | None:
    """The staged audit record of ``seq``, as JSON (records hold lists or tuples of rows)."""
    record = load_audit(services, seq)
    return None if record is None else record.to_json()


def sent(stub: HttpStub) -> list[dict[str, Any]]:
    return [request.json() for request in stub.requests_to(PUBLISH_PATH)]


# --- full and delta ----------------------------------------------------------------------------


def test_the_first_publish_is_a_full_snapshot(services: Services, stub: HttpStub) -> None:
    # given a new leader's first cycle
    context = start_cycle(services)

    # when
    record = publish(services, context, BUDGETS)

    # then
    assert record.publish_status == "published"
    assert record.payload_kind == "full"
    [body] = sent(stub)
    assert body["kind"] == "full"
    assert "base_seq" not in body
    assert (body["seq"], body["epoch"]) == (context.seq, context.epoch)
    assert [(t["id"], t["proactive_budget"]) for t in body["targets"]] == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
    ]
    assert body["channels"] == {"chat": {"proactive_budget": 6, "ready_capacity": 6}}
    [request] = stub.requests_to(PUBLISH_PATH)
    assert request.header("Idempotency-Key") == str(context.seq)
    assert request.header("Authorization") == "Bearer t"


def test_a_published_cycle_stores_feedback_and_lets_the_next_cycle_start(
    services: Services,
) -> None:
    # given
    context = start_cycle(services)

    # when
    publish(services, context, BUDGETS)

    # then
    redis = services.redis
    assert redis.get(services.keys.inflight) is None
    assert redis.hget(services.keys.last_publish, "seq") == str(context.seq).encode()
    assert redis.hget(services.keys.last_publish, "kind") == b"full"
    assert redis.hget(services.keys.last_cycle, "status") == b"published"
    assert redis.hget(services.keys.counters, "cycles_published") == b"1"
    _, feedback, _ = services.state.load(["a", "b"], width=1)
    assert feedback[0].tolist() == [10.0, 3.0, 9.0, 1.0]
    assert np.isnan(feedback[1]).all()
    assert start_cycle(services).seq == context.seq + 1


def test_the_audit_is_handed_over_before_the_post_and_settled_before_the_feedback_is_stored(
    services: Services, stub: HttpStub
) -> None:
    # given
    context = start_cycle(services)
    seen: list[tuple[int, dict[str, Any] | None, int]] = []
    settled_with_feedback_missing: list[bool] = []

    def audit_ready(seq: int) -> None:
        seen.append((seq, stored_json(services, seq), len(stub.requests_to(PUBLISH_PATH))))

    real_store = publish_stage._store_feedback

    def store_feedback(*args: Any, **kwargs: Any) -> None:
        _, feedback, _ = services.state.load(["a"], width=1)
        settled = services.redis.exists(services.keys.audit_outcome(context.seq)) > 0
        settled_with_feedback_missing.append(settled and bool(np.isnan(feedback[0]).all()))
        real_store(*args, **kwargs)

    # when
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(publish_stage, "_store_feedback", store_feedback)
        publish_cycle(
            services,
            shard_results(context, BUDGETS),
            context,
            sleep=_no_sleep,
            audit_ready=audit_ready,
        )

    # then: the audit task could begin on the staged record before anything was sent …
    [(seq, record, posts)] = seen
    assert seq == context.seq
    assert record is not None
    assert record["publish_status"] == "in_doubt"
    assert posts == 0
    # … and its outcome (woken by the push) was in Redis before the feedback was stored
    assert settled_with_feedback_missing == [True]
    assert services.redis.lrange(services.keys.audit_settled(context.seq), 0, -1) == [b"1"]
    assert stored_json(services, context.seq)["publish_status"] == "published"  # type: ignore[index]
    _, feedback, _ = services.state.load(["a"], width=1)
    assert feedback[0].tolist() == [10.0, 3.0, 9.0, 1.0]


def test_malformed_feedback_from_a_receiver_that_took_the_cycle_keeps_it_published(
    services: Services, stub: HttpStub
) -> None:
    # given: the receiver accepts, but its feedback is not an object
    stub.on(
        "POST",
        PUBLISH_PATH,
        lambda request: json_response(
            {"accepted_seq": request.json()["seq"], "feedback": ["not", "an", "object"]}
        ),
    )
    context = start_cycle(services)

    # when
    record = publish(services, context, BUDGETS)

    # then: published with its decisions (the receiver holds them); no counters stored
    assert record.publish_status == "published"
    assert len(record.decisions) == 3
    _, feedback, _ = services.state.load(["a"], width=1)
    assert np.isnan(feedback[0]).all()
    assert start_cycle(services).seq == context.seq + 1


def test_a_change_is_published_as_a_delta_with_only_the_changed_target(
    services: Services, stub: HttpStub
) -> None:
    # given cycle 1 was published in full
    first = start_cycle(services)
    publish(services, first, BUDGETS)

    # when cycle 2 changes only b
    second = start_cycle(services)
    record = publish(services, second, {**BUDGETS, "b": 7})

    # then
    assert record.publish_status == "published"
    body = sent(stub)[-1]
    assert body["kind"] == "delta"
    assert body["base_seq"] == first.seq
    assert [(t["id"], t["proactive_budget"]) for t in body["targets"]] == [("b", 7)]
    assert body["channels"] == {"chat": {"proactive_budget": 11, "ready_capacity": 6}}
    assert record.payload_kind == "delta"
    assert record.changed_count == 1


def test_the_budgets_each_acknowledged_publish_gave_are_kept_as_in_flight(
    services: Services, stub: HttpStub
) -> None:
    # given: a full publish, a delta that changes only b, then one the receiver refuses
    publish(services, start_cycle(services), BUDGETS)
    _, _, after_full = services.state.load(["a", "b", "c"], width=1)
    publish(services, start_cycle(services), {**BUDGETS, "b": 7})
    _, _, after_delta = services.state.load(["a", "b", "c"], width=1)
    stub.on("POST", PUBLISH_PATH, json_response({"error": "invalid_payload"}, status=400))

    # when
    refused = publish(services, start_cycle(services), {**BUDGETS, "a": 9})

    # then: the next cycle counts what the last delivered publish allowed as in flight
    assert after_full.tolist() == [1.0, 2.0, 3.0]
    assert after_delta.tolist() == [1.0, 7.0, 3.0]
    assert refused.publish_status == "failed"
    _, _, after_refusal = services.state.load(["a", "b", "c"], width=1)
    assert after_refusal.tolist() == [1.0, 7.0, 3.0]


def test_the_audit_record_holds_the_changed_rows_of_a_delta_and_all_rows_of_a_full(
    services: Services,
) -> None:
    # given
    first = start_cycle(services)
    publish(services, first, BUDGETS)
    second = start_cycle(services)
    publish(services, second, {**BUDGETS, "c": 0})

    # when
    full = load_audit(services, first.seq)
    delta = load_audit(services, second.seq)

    # then
    assert full is not None
    assert delta is not None
    assert [(d.target_id, d.proactive_budget) for d in full.decisions] == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
    ]
    assert [(d.target_id, d.proactive_budget) for d in delta.decisions] == [("c", 0)]
    assert (full.payload_kind, delta.payload_kind) == ("full", "delta")
    assert full.publish_status == delta.publish_status == "published"
    assert full.published_at is not None
    assert full.decisions[0].agents_ready == 2
    assert full.decisions[0].reason == "ok"
    assert [(c.channel, c.proactive_budget, c.target_count) for c in delta.channels] == [
        ("chat", 3, 3)
    ]
    pending = services.redis.zrange(services.keys.audit_pending, 0, -1)
    assert pending == [str(first.seq).encode(), str(second.seq).encode()]


def test_an_unchanged_cycle_is_an_empty_delta(services: Services, stub: HttpStub) -> None:
    # given
    publish(services, start_cycle(services), BUDGETS)

    # when
    record = publish(services, start_cycle(services), BUDGETS)

    # then
    body = sent(stub)[-1]
    assert body["kind"] == "delta"
    assert body["targets"] == []
    assert list(record.decisions) == []
    assert record.changed_count == 0


def test_a_new_leader_publishes_in_full(services: Services, stub: HttpStub) -> None:
    # given node-a published, then lost its lease to node-b
    publish(services, start_cycle(services), BUDGETS)
    services.redis.delete(services.keys.lease)  # as if it had expired

    # when
    context = start_cycle(services, node="node-b")
    publish(services, context, {**BUDGETS, "a": 9})

    # then
    assert context.new_leader
    assert sent(stub)[-1]["kind"] == "full"
    assert len(sent(stub)[-1]["targets"]) == 3


# --- receiver answers --------------------------------------------------------------------------


def test_a_base_mismatch_makes_the_next_publish_full(services: Services, stub: HttpStub) -> None:
    # given cycle 1 was published; the receiver then lost it
    publish(services, start_cycle(services), BUDGETS)
    stub.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "base_mismatch", "last_seq": 0}, status=409),
        accept,
    )

    # when cycle 2 sends a delta and cycle 3 follows
    second = publish(services, start_cycle(services), {**BUDGETS, "a": 5})
    third = publish(services, start_cycle(services), {**BUDGETS, "a": 5})

    # then
    assert second.publish_status == "base_mismatch"
    assert list(second.decisions) == []
    bodies = sent(stub)
    assert bodies[1]["kind"] == "delta"
    assert third.publish_status == "published"
    assert bodies[2]["kind"] == "full"
    assert len(bodies[2]["targets"]) == 3
    assert services.redis.get(services.keys.force_full) is None


def test_a_stale_seq_for_this_very_seq_after_an_unanswered_attempt_counts_as_published(
    services: Services, stub: HttpStub
) -> None:
    # given the first attempt of this cycle reached the receiver but its answer timed out
    impatient = Services(
        services.settings.model_copy(update={"http_read_timeout_seconds": 0.5}),
        clock=services.clock,
    )
    context = start_cycle(impatient)
    # (were the answer read in time after all, on a stalled machine, the cycle is published too)
    late = json_response({"accepted_seq": context.seq, "feedback": {}}, delay_seconds=1.5)
    stale = json_response({"error": "stale_seq", "last_seq": context.seq}, status=409)
    stub.on("POST", PUBLISH_PATH, late, stale)

    # when
    try:
        record = publish(impatient, context, BUDGETS, sleep=lambda seconds: None)
    finally:
        impatient.close()

    # then
    assert record.publish_status == "published"
    assert record.payload_kind == "full"
    assert len(record.decisions) == 3
    assert services.redis.hget(services.keys.last_publish, "seq") == str(context.seq).encode()


def test_a_receiver_holding_this_seq_from_a_lost_timeline_leaves_the_cycle_in_doubt(
    services: Services, stub: HttpStub, clock: FakeClock
) -> None:
    # given the receiver holds this cycle's seq, and this cycle never sent before: Redis lost
    # the seqs of cycles the receiver accepted (a failover to a replica that lagged)
    context = start_cycle(services)
    stub.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "stale_seq", "last_seq": context.seq}, status=409),
    )

    # when
    record = publish(services, context, BUDGETS)

    # then the history keeps the seq as in doubt, without decisions that are not the receiver's
    assert record.publish_status == "in_doubt"
    assert "lost" in (record.error or "")
    assert list(record.decisions) == []
    assert services.redis.get(services.keys.snapshot) is None
    # and a check of the history for the lost cycles' records is due after this cycle's end
    due = services.redis.zscore(services.keys.history_repair, str(context.seq))
    assert due is not None
    assert due > clock()


def test_a_stale_seq_for_a_newer_seq_raises_the_counter_and_leaves_the_cycle_in_doubt(
    services: Services, stub: HttpStub
) -> None:
    # given the receiver already holds a newer seq than this cluster ever handed out
    context = start_cycle(services)
    stub.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "stale_seq", "last_seq": context.seq + 5}, status=409),
    )

    # when
    record = publish(services, context, BUDGETS)

    # then
    assert record.publish_status == "in_doubt"
    assert list(record.decisions) == []
    assert services.redis.get(services.keys.snapshot) is None
    assert int(services.redis.get(services.keys.seq) or 0) == context.seq + 5
    assert services.redis.zscore(services.keys.history_repair, str(context.seq + 5)) is not None


def test_a_stale_seq_below_the_counter_is_a_plain_refusal(
    services: Services, stub: HttpStub
) -> None:
    # given a newer cycle of this cluster already reached the receiver (this one's POST came
    # late), so the receiver's seq is one this cluster handed out
    context = start_cycle(services)
    services.redis.set(services.keys.seq, context.seq + 1)
    stub.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "stale_seq", "last_seq": context.seq + 1}, status=409),
    )

    # when
    record = publish(services, context, BUDGETS)

    # then
    assert record.publish_status == "stale_seq"
    assert services.redis.zcard(services.keys.history_repair) == 0


def test_a_stale_epoch_ends_the_term_and_the_next_one_is_above_the_receivers(
    services: Services, stub: HttpStub
) -> None:
    # given the receiver holds epoch 9 from another leader: Redis lost the newest epoch
    context = start_cycle(services)
    stub.on(
        "POST",
        PUBLISH_PATH,
        json_response(
            {"error": "stale_epoch", "last_seq": context.seq - 1, "last_epoch": 9}, status=409
        ),
    )

    # when
    record = publish(services, context, BUDGETS)

    # then the cycle is fenced, the lease is free and the next term takes epoch 10
    assert record.publish_status == "fenced"
    assert services.redis.get(services.keys.lease) is None
    stub.on("POST", PUBLISH_PATH, accept)
    following = start_cycle(services)
    assert following.epoch == 10
    assert following.new_leader
    assert publish(services, following, BUDGETS).publish_status == "published"
    assert stub.requests_to(PUBLISH_PATH)[-1].json()["leader"] == "node-a"


def test_a_staged_audit_record_lost_during_the_post_is_staged_again(
    services: Services, stub: HttpStub
) -> None:
    # given Redis loses the staged audit record while the POST is in flight (a failover to a
    # replica that never received it)
    context = start_cycle(services)

    def lose_the_staged_record(request: RecordedRequest) -> StubResponse:
        services.redis.delete(services.keys.audit(context.seq))
        services.redis.zrem(services.keys.audit_pending, str(context.seq))
        return accept(request)

    stub.on("POST", PUBLISH_PATH, lose_the_staged_record)

    # when
    record = publish(services, context, BUDGETS)

    # then the publishing process stages it again, settled, for the audit task
    assert record.publish_status == "published"
    staged = load_audit(services, context.seq)
    assert staged is not None
    assert staged.publish_status == "published"
    assert len(staged.decisions) == 3
    assert services.redis.zscore(services.keys.audit_pending, str(context.seq)) is not None


def test_a_receiver_down_until_the_deadline_fails_after_bounded_attempts(
    services: Services, stub: HttpStub, clock: FakeClock
) -> None:
    # given a receiver that answers 503 to everything
    stub.on("POST", PUBLISH_PATH, StubResponse(status=503))
    context = start_cycle(services)

    # when
    record = publish(services, context, BUDGETS, sleep=clock.sleep)

    # then
    deadline = services.settings.cycle_deadline
    attempts = len(stub.requests_to(PUBLISH_PATH))
    assert record.publish_status == "failed"
    assert "503" in (record.error or "")
    assert 2 <= attempts <= deadline / PUBLISH_RETRY_PAUSE_SECONDS + 1
    assert len(clock.sleeps) == attempts - 1
    assert clock.now <= context.started_at + deadline
    assert list(record.decisions) == []
    assert record.payload_kind == "none"
    assert services.redis.get(services.keys.inflight) is None
    assert services.redis.get(services.keys.snapshot) is None


def test_a_receiver_that_recovers_before_the_deadline_gets_the_cycle(
    services: Services, stub: HttpStub, clock: FakeClock
) -> None:
    # given two 5xx answers, then success
    stub.on("POST", PUBLISH_PATH, StubResponse(status=502), StubResponse(status=503), accept)
    context = start_cycle(services)

    # when
    record = publish(services, context, BUDGETS, sleep=clock.sleep)

    # then
    assert record.publish_status == "published"
    assert len(stub.requests_to(PUBLISH_PATH)) == 3
    assert clock.sleeps == [PUBLISH_RETRY_PAUSE_SECONDS] * 2
    bodies = {request.body for request in stub.requests_to(PUBLISH_PATH)}
    assert len(bodies) == 1  # every retry sends the same bytes


def test_a_rejected_publish_is_not_retried(
    services: Services, stub: HttpStub, clock: FakeClock
) -> None:
    # given
    stub.on("POST", PUBLISH_PATH, json_response({"error": "too_large"}, status=413))

    # when
    record = publish(services, start_cycle(services), BUDGETS, sleep=clock.sleep)

    # then
    assert record.publish_status == "failed"
    assert len(stub.requests_to(PUBLISH_PATH)) == 1
    assert clock.sleeps == []


# --- the fence and incomplete cycles -----------------------------------------------------------


def test_a_deposed_leader_is_fenced_and_sends_nothing(services: Services, stub: HttpStub) -> None:
    # given node-a started a cycle, then node-b took the lease (epoch 2)
    context = start_cycle(services)
    services.redis.delete(services.keys.lease)
    start_cycle(services, node="node-b")

    # when node-a's cycle reaches the publish stage
    record = publish(services, context, BUDGETS)

    # then
    assert record.publish_status == "fenced"
    assert stub.requests == []
    assert list(record.decisions) == []
    assert record.published_at is None
    assert services.redis.get(services.keys.snapshot) is None
    assert stored_json(services, context.seq) == record.to_json()


def test_a_second_publish_of_the_same_cycle_is_fenced(services: Services, stub: HttpStub) -> None:
    # given the cycle was published once (the chord body delivered twice)
    context = start_cycle(services)
    publish(services, context, BUDGETS)

    # when
    record = publish(services, context, BUDGETS)

    # then
    assert record.publish_status == "fenced"
    assert len(stub.requests) == 1


def test_an_incomplete_cycle_is_abandoned(services: Services, stub: HttpStub) -> None:
    # given shard 1 never arrived
    context = start_cycle(services)
    results = shard_results(context, BUDGETS)[:1]

    # when
    record = publish_cycle(services, results, context, sleep=_no_sleep)

    # then
    assert record.publish_status == "abandoned"
    assert "missing [1]" in (record.error or "")
    assert stub.requests == []
    assert services.redis.get(services.keys.inflight) is None
    assert services.redis.hget(services.keys.last_cycle, "status") == b"abandoned"
    assert stored_json(services, context.seq) == record.to_json()
    # and the fence was not consumed: a later cycle still publishes
    assert publish(services, start_cycle(services), BUDGETS).publish_status == "published"


def test_a_shard_of_another_cycle_abandons_the_cycle(services: Services, stub: HttpStub) -> None:
    # given
    context = start_cycle(services)
    results = shard_results(context, BUDGETS)
    results[1] = {**results[1], "seq": context.seq - 1}

    # when
    record = publish_cycle(services, results, context, sleep=_no_sleep)

    # then
    assert record.publish_status == "abandoned"
    assert stub.requests == []


def test_the_audit_record_round_trips_through_redis(services: Services) -> None:
    # given
    context = start_cycle(services)
    record = publish(services, context, BUDGETS)

    # when
    raw = services.redis.get(services.keys.audit(context.seq))

    # then
    assert raw is not None
    assert orjson.loads(raw)["seq"] == context.seq
    assert stored_json(services, context.seq) == record.to_json()
    forget_audit(services, context.seq)
    assert load_audit(services, context.seq) is None
    assert services.redis.zcard(services.keys.audit_pending) == 0


def test_the_full_snapshot_owed_after_a_base_mismatch_survives_a_failed_publish(
    services: Services, stub: HttpStub, clock: FakeClock
) -> None:
    # given cycle 1 published, cycle 2 refused for a missing base, cycle 3 lost to a 503
    publish(services, start_cycle(services), BUDGETS)
    stub.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "base_mismatch", "last_seq": 0}, status=409),
        StubResponse(status=503),
    )
    assert publish(services, start_cycle(services), BUDGETS).publish_status == "base_mismatch"
    third = publish(services, start_cycle(services), BUDGETS, sleep=clock.sleep)
    assert third.publish_status == "failed"
    stub.on("POST", PUBLISH_PATH, accept)

    # when cycle 4 publishes
    publish(services, start_cycle(services), BUDGETS)

    # then it still sends the full snapshot the receiver needs
    assert sent(stub)[-1]["kind"] == "full"


def test_parked_shard_rows_come_back_for_the_merge_and_a_lost_one_is_missing(
    services: Services,
) -> None:
    # given: two shards parked, as the chord header tasks leave them
    context = start_cycle(services)
    shards = [ShardRows.from_json(raw) for raw in shard_results(context, BUDGETS)]
    references = [park_shard(services, rows) for rows in shards]

    # when
    collected = collect_shards(services, [*references, references[0]])  # redelivered
    services.redis.delete(services.keys.shard_rows(context.seq, 1))
    without_second = collect_shards(services, references)

    # then: the references are small; the rows are the shards' own
    assert all(len(orjson.dumps(ref)) < 64 for ref in references)
    assert sorted(ShardRows.from_json(raw).shard for raw in collected) == [0, 0, 1]
    merged = merge_shards(collected, seq=context.seq, shard_count=2)
    assert merged.ids == ["a", "b", "c"]
    with pytest.raises(IncompleteCycle, match=r"missing \[1\]"):
        merge_shards(without_second, seq=context.seq, shard_count=2)
    forget_shards(services, context.seq, 2)
    assert services.redis.exists(services.keys.shard_rows(context.seq, 0)) == 0
