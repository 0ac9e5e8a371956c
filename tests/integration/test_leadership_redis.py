"""Leadership lease, overrun guard, publish fence, cluster status and per-target state, against a
real Redis database leased for this module (never db 0 or 1)."""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from pacing.algorithms import OperatingPoints
from pacing.clients.statistics import STATISTICS_FIELDS, StatisticsBatch
from pacing.cluster.keys import Keys
from pacing.cluster.leadership import FenceVerdict, Leadership, Role, TickOutcome
from pacing.cluster.state import FEEDBACK_WIDTH, SharedOperatingPoints, StateStore
from pacing.cluster.status import cluster_status
from pacing.domain import OfferFeedback, Reason, StatisticsError, TargetStatistics
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import REDIS_HOST, REDIS_PORT, leased_redis_db, redis_url

pytestmark = pytest.mark.integration

LONG_TTL = 30.0  # seconds; long enough never to expire inside a test
DEADLINE = 20.0


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    with leased_redis_db() as db:
        yield db


@pytest.fixture
def client(redis_db: int) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url(redis_db))
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def keys() -> Keys:
    """A fresh prefix per test, so tests never see each other's lease."""
    return Keys(f"lead-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def leadership(client: redis.Redis, keys: Keys) -> Leadership:
    return Leadership(client, keys)


def tick(
    leadership: Leadership, node: str, *, ttl: float = LONG_TTL, deadline: float = DEADLINE
) -> TickOutcome:
    return leadership.tick(node=node, lease_ttl_seconds=ttl, deadline_seconds=deadline)


def expire(client: redis.Redis, key: str) -> None:
    """End ``key`` as its TTL running out would: Redis deletes an expired key.

    Tests give the lease and the in-flight marker TTLs no pause of a busy machine can outlast,
    check the TTL was set, and end it here, instead of sleeping past a short TTL (a pause
    between two ticks would then expire a lease the test needs held).
    """
    assert client.pttl(key) > 0, f"{key} has no TTL"
    client.delete(key)


# --- the lease ---------------------------------------------------------------------------------


def test_the_first_tick_takes_the_lease_with_epoch_1_and_seq_1(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given an empty cluster
    # when
    outcome = tick(leadership, "node-a")

    # then
    assert outcome.role is Role.LEADER
    assert outcome.epoch == 1
    assert outcome.seq == 1
    assert outcome.new_leader is True
    assert outcome.other == ""  # nobody led before
    assert client.get(keys.lease) == b"1:node-a"
    assert client.get(keys.inflight) == b"1:1"
    assert 0 < client.pttl(keys.lease) <= LONG_TTL * 1000


def test_the_leader_renews_its_lease_in_the_same_epoch(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given node-a leads and its first cycle finished
    first = tick(leadership, "node-a")
    leadership.finish_cycle(epoch=first.epoch, seq=first.seq)
    client.pexpire(keys.lease, 5000)  # most of the lease has run out

    # when
    second = tick(leadership, "node-a")

    # then
    assert second.role is Role.LEADER
    assert second.epoch == first.epoch
    assert second.seq == first.seq + 1
    assert second.new_leader is False
    assert 5000 < client.pttl(keys.lease) <= LONG_TTL * 1000  # renewed to the full TTL


def test_another_node_stands_by_and_learns_the_leader(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given
    tick(leadership, "node-a")

    # when
    outcome = tick(leadership, "node-b")

    # then
    assert outcome.role is Role.STANDBY
    assert outcome.other == "node-a"
    assert outcome.epoch == 1
    assert outcome.seq == 0
    assert outcome.new_leader is False
    assert client.get(keys.lease) == b"1:node-a"
    assert client.get(keys.seq) == b"1"  # a standby tick starts no cycle


def test_an_overrun_is_counted_and_does_not_advance_seq(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given cycle 1 is still in flight
    tick(leadership, "node-a")

    # when the next two ticks come
    second = tick(leadership, "node-a")
    third = tick(leadership, "node-a")

    # then
    assert second.role is Role.OVERRUN
    assert second.seq == 1  # the cycle still in flight
    assert second.epoch == 1
    assert third.role is Role.OVERRUN
    assert client.get(keys.seq) == b"1"
    assert client.hget(keys.counters, "overruns") == b"2"
    assert client.hget(keys.counters, "cycles_started") == b"1"


def test_finish_cycle_clears_only_its_own_in_flight_marker(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given cycle 1 of epoch 1 is in flight
    tick(leadership, "node-a")

    # when a different cycle and a different epoch claim to finish
    leadership.finish_cycle(epoch=1, seq=2)
    leadership.finish_cycle(epoch=2, seq=1)

    # then the marker stays and the next tick is still an overrun
    assert client.get(keys.inflight) == b"1:1"
    assert tick(leadership, "node-a").role is Role.OVERRUN

    # when the cycle itself finishes
    leadership.finish_cycle(epoch=1, seq=1)

    # then the next tick starts cycle 2
    assert client.get(keys.inflight) is None
    nxt = tick(leadership, "node-a")
    assert (nxt.role, nxt.seq) == (Role.LEADER, 2)


def test_an_expired_in_flight_marker_lets_the_next_cycle_start(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given cycle 1 was started and never finished; its marker lives until the deadline
    tick(leadership, "node-a")
    assert 0 < client.pttl(keys.inflight) <= DEADLINE * 1000
    expire(client, keys.inflight)

    # when
    outcome = tick(leadership, "node-a")

    # then
    assert (outcome.role, outcome.epoch, outcome.seq) == (Role.LEADER, 1, 2)


def test_another_node_takes_over_after_the_lease_expires(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given node-a led, its cycle is still in flight, and its lease ran out
    tick(leadership, "node-a")
    assert tick(leadership, "node-b").role is Role.STANDBY
    expire(client, keys.lease)

    # when
    outcome = tick(leadership, "node-b")

    # then the old epoch's in-flight cycle does not block the new leader
    assert outcome.role is Role.LEADER
    assert outcome.epoch == 2
    assert outcome.seq == 2
    assert outcome.new_leader is True
    assert outcome.other == "1:node-a"
    assert client.get(keys.lease) == b"2:node-b"
    assert client.get(keys.last_leader) == b"2:node-b"
    assert client.hget(keys.counters, "leadership_changes") == b"2"


def test_a_former_leader_becomes_standby_after_a_takeover(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given node-b took over from node-a
    tick(leadership, "node-a")
    expire(client, keys.lease)
    tick(leadership, "node-b")

    # when node-a wakes up
    outcome = tick(leadership, "node-a")

    # then
    assert outcome.role is Role.STANDBY
    assert outcome.other == "node-b"
    assert outcome.epoch == 2


def test_node_names_may_contain_colons(leadership: Leadership) -> None:
    # given
    tick(leadership, "host:1")

    # when
    renew = tick(leadership, "host:1")
    other = tick(leadership, "host:2")

    # then
    assert renew.role is Role.OVERRUN  # still this node's lease (cycle 1 in flight)
    assert other.role is Role.STANDBY
    assert other.other == "host:1"


# --- the fence ---------------------------------------------------------------------------------


def test_claim_publish_allows_a_seq_once(leadership: Leadership) -> None:
    # given
    outcome = tick(leadership, "node-a")

    # when
    first = leadership.claim_publish(epoch=outcome.epoch, seq=outcome.seq)
    again = leadership.claim_publish(epoch=outcome.epoch, seq=outcome.seq)

    # then
    assert first is FenceVerdict.ALLOWED
    assert again is FenceVerdict.SUPERSEDED


def test_claim_publish_refuses_an_older_seq(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given seq 5 was published in epoch 1
    tick(leadership, "node-a")
    assert leadership.claim_publish(epoch=1, seq=5) is FenceVerdict.ALLOWED

    # when
    verdict = leadership.claim_publish(epoch=1, seq=4)

    # then
    assert verdict is FenceVerdict.SUPERSEDED
    assert client.get(keys.published_seq) == b"5"


def test_claim_publish_refuses_a_stale_epoch(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given node-a's epoch 1 was replaced by node-b's epoch 2
    old = tick(leadership, "node-a")
    expire(client, keys.lease)
    new = tick(leadership, "node-b")

    # when the former leader tries to publish its cycle
    verdict = leadership.claim_publish(epoch=old.epoch, seq=old.seq)

    # then
    assert verdict is FenceVerdict.DEPOSED
    assert client.get(keys.published_seq) is None
    assert leadership.claim_publish(epoch=new.epoch, seq=new.seq) is FenceVerdict.ALLOWED


def test_claim_publish_without_a_lease_is_deposed(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given the lease expired and nobody took it yet
    outcome = tick(leadership, "node-a")
    expire(client, keys.lease)
    assert client.get(keys.lease) is None

    # when
    verdict = leadership.claim_publish(epoch=outcome.epoch, seq=outcome.seq)

    # then
    assert verdict is FenceVerdict.DEPOSED


def test_seq_increases_strictly_across_leaders(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given three leaders one after the other, two cycles each
    seen: list[tuple[int, int]] = []
    for node in ("node-a", "node-b", "node-c"):
        for _ in range(2):
            outcome = tick(leadership, node)
            assert outcome.role is Role.LEADER
            seen.append((outcome.epoch, outcome.seq))
            leadership.finish_cycle(epoch=outcome.epoch, seq=outcome.seq)
        expire(client, keys.lease)

    # then
    seqs = [seq for _, seq in seen]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert [epoch for epoch, _ in seen] == [1, 1, 2, 2, 3, 3]


# --- cluster status ----------------------------------------------------------------------------


def test_cluster_status_of_an_empty_cluster(client: redis.Redis, keys: Keys) -> None:
    # given nothing in Redis
    # when
    status = cluster_status(client, keys, now=1000.0)

    # then
    assert status["leader"] is None
    assert status["epoch"] is None
    assert status["lease_expires_in_seconds"] is None
    assert status["last_seq"] == 0
    assert status["last_published_seq"] is None
    assert status["last_cycle"] is None
    assert status["overruns"] == 0
    assert status["audit_pending"] == 0


def test_cluster_status_reports_leader_epoch_and_counters(
    leadership: Leadership, client: redis.Redis, keys: Keys
) -> None:
    # given node-a leads, cycle 1 overran once, then cycle 2 was published at t=1000
    tick(leadership, "node-a")
    tick(leadership, "node-a")
    leadership.finish_cycle(epoch=1, seq=1)
    tick(leadership, "node-a")
    leadership.count("cycles_published")
    client.hset(
        keys.last_publish, mapping={"seq": 2, "epoch": 1, "at": 1000.0, "kind": "full", "bytes": 99}
    )
    client.hset(
        keys.last_cycle,
        mapping={
            "seq": 2,
            "status": "published",
            "latency_ms": 12.5,
            "targets": 40,
            "error_rows": 3,
        },
    )
    tick(leadership, "node-b")  # a standby tick changes nothing

    # when
    status = cluster_status(client, keys, now=1002.5)

    # then
    assert status["leader"] == "node-a"
    assert status["epoch"] == 1
    assert 0 < status["lease_expires_in_seconds"] <= LONG_TTL
    assert status["last_seq"] == 2
    assert status["last_published_seq"] == 2
    assert status["last_published_age_seconds"] == 2.5
    assert status["last_published_kind"] == "full"
    assert status["last_published_bytes"] == 99
    assert status["targets"] == 40
    assert status["error_rows"] == 3
    assert status["last_cycle"] == {
        "seq": 2,
        "status": "published",
        "latency_ms": 12.5,
        "error_rows": 3,
    }
    assert status["cycles_started"] == 2
    assert status["cycles_published"] == 1
    assert status["overruns"] == 1
    assert status["leadership_changes"] == 1


# --- per-target state --------------------------------------------------------------------------

WIDTH = 5


@pytest.fixture
def store(client: redis.Redis, keys: Keys) -> StateStore:
    return StateStore(client, keys)


def test_state_survives_a_save_and_load(store: StateStore) -> None:
    # given
    state = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.5, math.nan, -1.0, 1e12, 0.0]])
    store.save(["t1", "t2"], state)

    # when, in another order
    loaded, feedback, _ = store.load(["t2", "t1"], width=WIDTH)

    # then
    np.testing.assert_array_equal(loaded, state[::-1])
    assert feedback.shape == (2, FEEDBACK_WIDTH)
    assert np.isnan(feedback).all()


def test_unknown_targets_load_as_nan_rows(store: StateStore) -> None:
    # given
    store.save(["known"], np.ones((1, WIDTH)))

    # when
    loaded, _, _ = store.load(["known", "unknown"], width=WIDTH)

    # then
    assert loaded[0].tolist() == [1.0] * WIDTH
    assert np.isnan(loaded[1]).all()


def test_loading_no_targets_gives_empty_arrays(store: StateStore) -> None:
    # given / when
    loaded, feedback, _ = store.load([], width=WIDTH)

    # then
    assert loaded.shape == (0, WIDTH)
    assert feedback.shape == (0, FEEDBACK_WIDTH)


def test_a_state_of_a_foreign_width_loads_as_a_cold_start(
    store: StateStore, client: redis.Redis, keys: Keys
) -> None:
    # given a truncated row, a row wider than this release's, and a good one
    client.hset(keys.state, "truncated", np.ones(WIDTH).tobytes()[:-3])
    store.save(["wider"], np.ones((1, WIDTH + 1)))
    store.save(["good"], np.full((1, WIDTH), 2.0))

    # when
    loaded, _, _ = store.load(["truncated", "wider", "good"], width=WIDTH)

    # then
    assert np.isnan(loaded[0]).all()
    assert np.isnan(loaded[1]).all()
    assert loaded[2].tolist() == [2.0] * WIDTH


def test_a_state_written_before_columns_were_appended_keeps_its_columns(
    store: StateStore,
) -> None:
    # given a row of a release whose state had two columns fewer
    store.save(["older"], np.full((1, WIDTH - 2), 3.0))

    # when
    loaded, _, _ = store.load(["older"], width=WIDTH)

    # then: an upgrade is not a cold start; the appended columns start unknown
    assert loaded[0, : WIDTH - 2].tolist() == [3.0] * (WIDTH - 2)
    assert np.isnan(loaded[0, WIDTH - 2 :]).all()


def test_packed_state_commands_read_back_what_redis_py_writes(
    store: StateStore, client: redis.Redis, keys: Keys
) -> None:
    # given: ids of every length class, non-ASCII and with protocol characters in them
    ids = ["t", "gruppe-ü-1", "a b\r\n$*", "x" * 300]
    rows = np.arange(len(ids) * WIDTH, dtype=np.float64).reshape(len(ids), WIDTH)

    # when: the state store packs the HSET itself
    store.save(ids, rows)

    # then: redis-py reads exactly those fields and bytes
    stored = client.hgetall(keys.state)
    assert {key.decode() for key in stored} == set(ids)
    for tid, row in zip(ids, rows, strict=True):
        assert stored[tid.encode()] == row.astype("<f8").tobytes()
    np.testing.assert_array_equal(store.load(ids, width=WIDTH)[0], rows)


def test_an_error_reply_in_a_packed_batch_is_raised_and_the_connection_stays_in_step(
    store: StateStore, client: redis.Redis, keys: Keys
) -> None:
    # given: the state key holds a string, so HSET and HMGET on it answer WRONGTYPE
    client.set(keys.state, "not a hash")

    # when / then
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.load(["t1"], width=WIDTH)
    # the feedback HMGET's reply was read too: the pooled connection answers the next command
    assert client.get(keys.state) == b"not a hash"
    client.delete(keys.state)
    store.save(["t1"], np.ones((1, WIDTH)))
    assert store.load(["t1"], width=WIDTH)[0].tolist() == [[1.0] * WIDTH]


def test_a_closed_pooled_connection_is_replaced_before_a_packed_batch(
    store: StateStore, client: redis.Redis
) -> None:
    # given: the pooled connection is closed by the server behind the client's back
    store.save(["t1"], np.ones((1, WIDTH)))
    pooled = client.client_id()  # the one idle connection of the pool, which load will take
    with redis.Redis.from_url(redis_url(0)) as killer:
        assert killer.client_kill_filter(_id=pooled) == 1

    # when
    loaded, _, _ = store.load(["t1"], width=WIDTH)

    # then
    assert loaded.tolist() == [[1.0] * WIDTH]


class _DropsFirstHset:
    """A TCP proxy to Redis that closes the connection carrying the first HSET it sees, before
    passing it on (a connection lost mid-request), and relays everything else."""

    def __init__(self, host: str, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._upstream = (host, port)
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                accepted, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            for source, sink, inspect in ((accepted, upstream, True), (upstream, accepted, False)):
                threading.Thread(
                    target=self._relay, args=(source, sink, inspect), daemon=True
                ).start()

    def _relay(self, source: socket.socket, sink: socket.socket, inspect: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if inspect and not self.dropped and b"HSET" in data:
                    self.dropped += 1
                    source.close()
                    sink.close()
                    return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def test_a_packed_batch_lost_mid_request_is_sent_again_on_a_fresh_connection(
    redis_db: int, keys: Keys
) -> None:
    # given: a store whose first request dies with its connection
    proxy = _DropsFirstHset(REDIS_HOST, REDIS_PORT)
    proxied = redis.Redis(
        host="127.0.0.1", port=proxy.port, db=redis_db, socket_timeout=LOOPBACK_TIMEOUT_SECONDS
    )
    try:
        store = StateStore(proxied, keys)

        # when
        store.save(["t1"], np.full((1, WIDTH), 2.0))

        # then: sent once more, and stored once
        assert proxy.dropped == 1
        assert store.load(["t1"], width=WIDTH)[0].tolist() == [[2.0] * WIDTH]
    finally:
        proxied.close()
        proxy.close()


def test_feedback_survives_a_save_and_load(store: StateStore) -> None:
    # given
    store.save_feedback({"t1": OfferFeedback(5120, 1290, 5101, 19)})
    store.save_feedback({"t2": OfferFeedback(1, 0, 1, 0)})  # partial maps keep the rest

    # when
    _, feedback, _ = store.load(["t1", "t2", "t3"], width=WIDTH)

    # then
    assert feedback[0].tolist() == [5120.0, 1290.0, 5101.0, 19.0]
    assert feedback[1].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert np.isnan(feedback[2]).all()


def test_budgets_in_flight_are_stored_with_the_feedback_and_loaded_beside_it(
    store: StateStore,
) -> None:
    # given: a publish answered with t1's counters, after it gave t1 and t2 budgets
    store.save_feedback_rows(
        ["t1"],
        np.array([[40.0, 9.0, 38.0, 2.0]]),
        in_flight=(["t1", "t2"], np.array([5.0, 0.0])),
    )
    # a later publish changed only t2's budget and returned no counters
    store.save_feedback_rows([], np.empty((0, 4)), in_flight=(["t2"], np.array([3.0])))

    # when
    _, feedback, in_flight = store.load(["t1", "t2", "t3"], width=WIDTH)

    # then
    assert feedback[0].tolist() == [40.0, 9.0, 38.0, 2.0]
    assert np.isnan(feedback[1]).all()
    assert in_flight[:2].tolist() == [5.0, 3.0]
    assert np.isnan(in_flight[2])


def test_forget_drops_state_and_feedback(store: StateStore) -> None:
    # given
    store.save(["t1", "t2"], np.ones((2, WIDTH)))
    store.save_feedback({"t1": OfferFeedback(1, 1, 1, 0), "t2": OfferFeedback(2, 2, 2, 0)})

    store.save_feedback_rows([], np.empty((0, 4)), in_flight=(["t1", "t2"], np.array([4.0, 1.0])))

    # when
    store.forget(["t1"])

    # then
    loaded, feedback, in_flight = store.load(["t1", "t2"], width=WIDTH)
    assert np.isnan(loaded[0]).all()
    assert np.isnan(feedback[0]).all()
    assert np.isnan(in_flight[0])
    assert in_flight[1] == 1.0
    assert loaded[1].tolist() == [1.0] * WIDTH
    assert feedback[1].tolist() == [2.0, 2.0, 2.0, 0.0]


def test_statistics_saved_with_the_state_come_back_when_no_gateway_answers(
    store: StateStore,
) -> None:
    # given: a shard saved its state with the statistics it paced on; "b" had an error
    now = 1_795_000_000.0
    matrix = np.full((2, len(STATISTICS_FIELDS)), math.nan)
    matrix[0] = [now, 5, 2, 3, 1, 180.0, 10, 1, 4]
    fetched = StatisticsBatch(["a", "b"], matrix, {"b": StatisticsError("b", Reason.ERROR, "x")})
    store.save(["a", "b"], np.zeros((2, WIDTH)), statistics=fetched)

    # when
    young = store.last_statistics(["a", "b"], now=now + 3, max_age_seconds=6)
    old = store.last_statistics(["a"], now=now + 7, max_age_seconds=6)

    # then
    assert young["a"] == TargetStatistics("a", now, 5, 2, 3, 1, 180.0, 10, 1, 4)
    assert isinstance(young["b"], StatisticsError)
    assert young["b"].reason is Reason.STALE
    assert isinstance(old["a"], StatisticsError)
    assert "7.0 s old" in old["a"].detail
    assert np.isnan(old.matrix).all()


def test_operating_points_solved_by_one_process_reach_another_through_redis(
    client: redis.Redis, keys: Keys
) -> None:
    # given: two processes' caches, the first solves
    first, second = OperatingPoints(), OperatingPoints()
    shared_first = SharedOperatingPoints(client, keys, first)
    shared_second = SharedOperatingPoints(client, keys, second)
    servers, ratio, goal = np.array([20.0, 60.0]), np.array([0.4, 2.0]), np.array([0.03, 0.05])
    busy = np.zeros(2, dtype=bool)
    solved = first.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)
    shared_first.push()
    client.rpush(keys.operating_points, b"garbage")  # a foreign entry is ignored

    # when
    pulled = shared_second.pull()
    again = shared_second.pull()  # nothing new since
    read = second.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)

    # then: the second process solved nothing and answers exactly as the first
    assert pulled == len(first) > 0
    assert again == 0
    assert second.export_fresh() == []
    np.testing.assert_array_equal(read.load, solved.load)
    assert client.ttl(keys.operating_points) > 0
