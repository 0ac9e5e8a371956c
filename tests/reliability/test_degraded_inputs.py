"""Degraded inputs and outputs, one stage at a time (no Celery): real Redis on a leased database,
the simulator (Stat Server pair) or the scripted stub (engagement), a hand-moved clock.

* both Stat Servers down: a target keeps its last good statistics while they are younger than
  ``stats_max_age``, then gets budget 0 with reason ``stale``; recovery is automatic;
* a failed publish is followed by a full snapshot, not by a delta the receiver may refuse.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pacing.clients.engagement import PUBLISH_PATH
from pacing.cycle.plan import CycleContext
from pacing.cycle.publish import publish_cycle
from pacing.cycle.shard import failed_shard, pace_shard
from pacing.cycle.split import ShardTargets
from pacing.domain import Algorithm, Reason, TargetConfig
from pacing.services import Services
from pacing.settings import load_settings
from pacing.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.http_stub import (
    GIVE_UP_SECONDS,
    NEVER_ANSWERS,
    HttpStub,
    RecordedRequest,
    StubResponse,
    json_response,
)
from tests.support import LOOPBACK_NODE_SETTINGS, leased_redis_db, redis_url

pytestmark = pytest.mark.integration

START = 1_795_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    with leased_redis_db() as db:
        yield db


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def simulator(clock: Clock) -> Iterator[RunningSimulator]:
    with start_simulator(SimulatorConfig(targets=12, seed=3), clock=clock) as running:
        yield running


@pytest.fixture
def stub() -> Iterator[HttpStub]:
    def accept(request: RecordedRequest) -> StubResponse:
        return json_response({"accepted_seq": request.json()["seq"], "feedback": {}})

    with HttpStub() as running:
        running.on("POST", PUBLISH_PATH, accept)
        yield running


def node_settings(redis_db: int, simulator: RunningSimulator, stub: HttpStub, **values: Any) -> Any:
    return load_settings(
        {
            "environment": "development",
            "node_name": "node-a",
            "broker_url": redis_url(redis_db),
            "key_prefix": f"degraded-{uuid.uuid4().hex[:8]}",
            "stat_server_primary_url": simulator.stat_server_primary_url,
            "stat_server_backup_url": simulator.stat_server_backup_url,
            "engagement_url": stub.url,
            "engagement_token": "t",
            **LOOPBACK_NODE_SETTINGS,
            "cycle_deadline_seconds": LOOPBACK_NODE_SETTINGS["refresh_period_seconds"],  # the least
            "stats_max_age_seconds": 3.0,  # on the hand-moved clock
            "full_snapshot_every": 100,
            **values,
        }
    )


@pytest.fixture
def services(
    redis_db: int, simulator: RunningSimulator, stub: HttpStub, clock: Clock
) -> Iterator[Services]:
    built = Services(node_settings(redis_db, simulator, stub), clock=clock)
    try:
        yield built
    finally:
        built.close()


def start_cycle(services: Services, clock: Clock, *, new_leader: bool | None = None) -> Any:
    """Take (or renew) node-a's lease and start a one-shard cycle, as ``pacing.refresh`` does;
    ``new_leader`` overrides what the tick found."""
    outcome = services.leadership.tick(
        node="node-a",
        lease_ttl_seconds=services.settings.lease_ttl,
        deadline_seconds=services.settings.cycle_deadline,
    )
    return CycleContext(
        seq=outcome.seq,
        epoch=outcome.epoch,
        node="node-a",
        started_at=clock(),
        shard_count=1,
        new_leader=outcome.new_leader if new_leader is None else new_leader,
    )


def targets(simulator: RunningSimulator) -> list[TargetConfig]:
    return [
        TargetConfig(target_id=tid, algorithm=Algorithm.SUPER_PROGRESSIVE)
        for tid in simulator.world.target_ids()
    ]


def pace(services: Services, configs: list[TargetConfig], seq: int) -> Any:
    return pace_shard(services, seq=seq, shard=0, targets=ShardTargets.of(configs))


# --- both Stat Servers down -------------------------------------------------------------------


def test_both_stat_servers_down_keeps_the_last_statistics_until_they_are_too_old(
    services: Services, simulator: RunningSimulator, clock: Clock
) -> None:
    # given: one good fetch, then both gateways go down
    configs = targets(simulator)
    first = pace(services, configs, seq=1)
    assert int(Reason.STALE) not in first.reason
    assert first.answered
    simulator.app.faults.stat_server.update(primary="down", backup="down")

    # when: the next cycle runs while the statistics are younger than stats_max_age
    clock.now += services.settings.stats_max_age - 0.5
    within = pace(services, configs, seq=2)

    # then: nobody is stale yet; the inputs are the last good ones
    assert not within.answered
    assert int(Reason.STALE) not in within.reason
    assert within.ready == first.ready

    # when: the statistics grow older than the limit
    clock.now += 1.0
    beyond = pace(services, configs, seq=3)

    # then: every target is stale with budget 0
    assert beyond.reason == [int(Reason.STALE)] * len(configs)
    assert beyond.budget == [0] * len(configs)

    # when: one gateway comes back
    simulator.app.faults.stat_server.update(backup="up")
    clock.now += 1.0
    healed = pace(services, configs, seq=4)

    # then: the very next shard asks again and is paced on the answer
    assert healed.answered
    assert int(Reason.STALE) not in healed.reason


def test_without_earlier_statistics_an_outage_is_stale_at_once(
    services: Services, simulator: RunningSimulator
) -> None:
    # given: both gateways down before any statistics were ever fetched
    simulator.app.faults.stat_server.update(primary="down", backup="down")
    configs = targets(simulator)

    # when
    rows = pace(services, configs, seq=1)

    # then
    assert rows.reason == [int(Reason.STALE)] * len(configs)
    assert rows.budget == [0] * len(configs)


def test_primary_down_is_served_by_the_backup_in_the_same_call(
    services: Services, simulator: RunningSimulator
) -> None:
    # given
    simulator.app.faults.stat_server.update(primary="down")
    configs = targets(simulator)

    # when
    rows = pace(services, configs, seq=1)

    # then: no target lost its statistics
    assert int(Reason.STALE) not in rows.reason
    assert services.stat_server.active_server == "backup"


# --- a failed publish ------------------------------------------------------------------------


def test_after_a_failed_publish_the_next_publish_is_a_full_snapshot(
    services: Services, stub: HttpStub, clock: Clock
) -> None:
    # given: one acknowledged full snapshot
    def cycle(budget: int) -> Any:
        context = start_cycle(services, clock)
        rows = dataclasses.replace(
            failed_shard(seq=context.seq, shard=0, rows=[["a", "chat"], ["b", "chat"]]),
            budget=[budget, 0],
            reason=[int(Reason.OK)] * 2,
        )

        def sleep(seconds: float) -> None:
            clock.now += seconds

        return publish_cycle(services, [rows.to_json()], context, sleep=sleep)

    assert cycle(1).payload_kind == "full"

    # when: the receiver is down for a whole cycle, then back
    stub.on("POST", PUBLISH_PATH, StubResponse(status=503))
    assert cycle(2).publish_status == "failed"
    stub.on(
        "POST",
        PUBLISH_PATH,
        lambda request: json_response({"accepted_seq": request.json()["seq"], "feedback": {}}),
    )
    resumed = cycle(3)

    # then: publishing resumes with every target, not a delta against a base in doubt
    assert resumed.publish_status == "published"
    assert resumed.payload_kind == "full"
    last = stub.requests_to(PUBLISH_PATH)[-1].json()
    assert last["kind"] == "full"
    assert len(last["targets"]) == 2
    assert np.array_equal([t["proactive_budget"] for t in last["targets"]], [3, 0])


# --- Redis lost its data -----------------------------------------------------------------------


def test_a_receiver_ahead_of_the_seq_counter_makes_the_counter_jump_past_it(
    services: Services, stub: HttpStub, clock: Clock
) -> None:
    # given: Redis lost its data, so the counter restarted while the receiver holds seq 500
    stub.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "stale_seq", "last_seq": 500}, status=409),
    )
    context = start_cycle(services, clock, new_leader=True)
    rows = failed_shard(seq=context.seq, shard=0, rows=[["a", "chat"]])

    # when
    record = publish_cycle(services, [rows.to_json()], context)

    # then: this cycle is refused (in doubt: the receiver holds seqs Redis forgot, this one
    # among them), but the next one is numbered past the receiver's seq
    assert record.publish_status == "in_doubt"
    following = services.leadership.tick(
        node="node-a",
        lease_ttl_seconds=services.settings.lease_ttl,
        deadline_seconds=services.settings.cycle_deadline,
    )
    assert following.seq == 501


def test_the_seq_floor_never_moves_the_counter_backwards(services: Services) -> None:
    # given
    services.redis.set(services.keys.seq, 900)

    # when
    raised = services.leadership.raise_seq_floor(500)

    # then
    assert not raised
    assert int(services.redis.get(services.keys.seq) or 0) == 900


def test_a_publish_retry_stops_once_another_node_took_the_lease(
    services: Services, stub: HttpStub, clock: Clock
) -> None:
    # given: a cycle that claimed the fence, and a receiver answering 503
    context = start_cycle(services, clock, new_leader=True)
    stub.on("POST", PUBLISH_PATH, StubResponse(status=503))

    def sleep_while_node_a_is_deposed(seconds: float) -> None:
        # node-a's lease lapses and node-b takes it while the publish waits to retry
        clock.now += seconds
        services.redis.delete(services.keys.lease)
        taken = services.leadership.tick(
            node="node-b",
            lease_ttl_seconds=services.settings.lease_ttl,
            deadline_seconds=services.settings.cycle_deadline,
        )
        assert taken.epoch > context.epoch

    rows = failed_shard(seq=context.seq, shard=0, rows=[["a", "chat"]])

    # when
    record = publish_cycle(services, [rows.to_json()], context, sleep=sleep_while_node_a_is_deposed)

    # then: one attempt, no retry from the deposed leader
    assert record.publish_status == "fenced"
    assert len(stub.requests_to(PUBLISH_PATH)) == 1


def test_a_publish_left_unanswered_is_kept_in_the_history_as_in_doubt(
    redis_db: int, simulator: RunningSimulator, stub: HttpStub, clock: Clock
) -> None:
    # given: a receiver that takes the request and never answers (it may well apply it: a
    # slow platform), and a node that gives up on it after a short read timeout
    stub.on("POST", PUBLISH_PATH, NEVER_ANSWERS)
    settings = node_settings(
        redis_db,
        simulator,
        stub,
        refresh_period_seconds=1.0,
        cycle_deadline_seconds=2.0,
        http_connect_timeout_seconds=0.5,  # the stub's port accepts at once: never waited for
        http_read_timeout_seconds=GIVE_UP_SECONDS,
    )
    services = Services(settings, clock=clock)
    try:
        context = start_cycle(services, clock, new_leader=True)
        rows = failed_shard(seq=context.seq, shard=0, rows=[["a", "chat"]])

        def sleep(seconds: float) -> None:
            clock.now += 1.0

        # when
        record = publish_cycle(services, [rows.to_json()], context, sleep=sleep)

        # then: the history keeps what the receiver may hold, and the next publish is full
        assert record.publish_status == "in_doubt"
        assert [d.target_id for d in record.decisions] == ["a"]
        assert services.redis.exists(services.keys.force_full)
    finally:
        services.close()
