"""The target list a leader paces: re-read only when the database says it changed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacing.cycle.plan import PARKED_TARGETS_SECONDS, plan_cycle
from pacing.cycle.shard import run_shard
from pacing.domain import TargetConfig
from pacing.errors import ShardTargetsMissing
from pacing.history import set_targets_enabled, upsert_targets
from pacing.history.migrate import upgrade_to_head
from pacing.services import TARGETS_CACHE_SECONDS, Services
from pacing.settings import load_settings
from tests.support import leased_redis_db, redis_url


class Clock:
    def __init__(self) -> None:
        self.now = 1_795_000_000.0

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
def services(redis_db: int, tmp_path: Path, clock: Clock) -> Iterator[Services]:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    upgrade_to_head(url)
    settings = load_settings(
        {
            "environment": "development",
            "broker_url": redis_url(redis_db),
            "key_prefix": f"targets-test-{uuid.uuid4().hex[:8]}",
            "database_url": url,
        }
    )
    built = Services(settings, clock=clock)
    upsert_targets(built.history, [TargetConfig(f"t{i}") for i in range(5)])
    try:
        yield built
    finally:
        built.close()


def test_an_unchanged_target_list_is_not_read_again(services: Services, clock: Clock) -> None:
    # given
    first = services.enabled_targets()
    shards = services.enabled_shards(2)

    # when: the cache interval passes without any change in the database
    clock.now += TARGETS_CACHE_SECONDS + 1
    again = services.enabled_targets()

    # then: the very same list, and the shards cut from it are reused
    assert [t.target_id for t in first] == [f"t{i}" for i in range(5)]
    assert again is first
    assert services.enabled_shards(2) is shards
    assert [len(shard) for shard in shards] == [2, 2, 1]


def test_a_disabled_target_leaves_the_list_after_the_cache_interval(
    services: Services, clock: Clock
) -> None:
    # given
    services.enabled_targets()
    set_targets_enabled(services.history, ["t1"], enabled=False)

    # when
    cached = services.enabled_targets()
    clock.now += TARGETS_CACHE_SECONDS + 1
    fresh = services.enabled_targets()

    # then
    assert "t1" in [t.target_id for t in cached]
    assert [t.target_id for t in fresh] == ["t0", "t2", "t3", "t4"]
    assert [row[0] for shard in services.enabled_shards(10) for row in shard] == [
        "t0",
        "t2",
        "t3",
        "t4",
    ]


def test_without_the_database_the_copy_in_redis_is_paced(
    services: Services, clock: Clock, tmp_path: Path
) -> None:
    # given: a list read once, then the database file is gone
    services.enabled_targets()
    services.history.dispose()
    (tmp_path / "history.db").rename(tmp_path / "moved.db")
    (tmp_path / "history.db").mkdir()  # a directory: SQLite cannot open it

    # when
    clock.now += TARGETS_CACHE_SECONDS + 1
    targets = services.enabled_targets()

    # then
    assert [t.target_id for t in targets] == [f"t{i}" for i in range(5)]


def test_the_leader_parks_each_shards_rows_for_the_shard_tasks(
    services: Services, clock: Clock
) -> None:
    # given
    settings = services.settings.model_copy(update={"shard_size": 2})
    services.settings = settings
    worker = Services(settings, clock=clock)  # another process: nothing cached yet

    try:
        # when
        plan = plan_cycle(services, node="n1")

        # then: the header carries names, and a worker reads the very rows behind them
        assert len(plan.digests) == len(plan.shards) == 3
        assert len(set(plan.digests)) == 3
        for digest, rows in zip(plan.digests, plan.shards, strict=True):
            assert worker.shard_targets(digest) == rows
            ttl = services.redis.ttl(services.keys.shard_targets(digest))
            assert 0 < ttl <= PARKED_TARGETS_SECONDS
    finally:
        worker.close()


def test_a_shard_whose_parked_rows_are_gone_is_refused_and_parked_again_next_cycle(
    services: Services, clock: Clock
) -> None:
    # given: a cycle planned, then its parked rows lost (a flushed Redis)
    services.settings = services.settings.model_copy(update={"shard_size": 2})
    plan = plan_cycle(services, node="n1")
    assert plan.context is not None
    services.redis.delete(*(services.keys.shard_targets(d) for d in plan.digests))
    worker = Services(services.settings, clock=clock)
    try:
        # when / then: the shard cannot be paced, not even as error rows
        with pytest.raises(ShardTargetsMissing, match="not in Redis"):
            run_shard(worker, seq=plan.context.seq, shard=0, rows=plan.digests[0])

        # and the next cycle parks them again
        services.leadership.finish_cycle(epoch=plan.context.epoch, seq=plan.context.seq)
        again = plan_cycle(services, node="n1")
        assert again.digests == plan.digests
        assert worker.shard_targets(plan.digests[0]) == plan.shards[0]
    finally:
        worker.close()


def test_a_changed_target_list_gets_new_shard_names(services: Services, clock: Clock) -> None:
    # given
    before = services.shard_digests(2)

    # when
    upsert_targets(services.history, [TargetConfig("t1", max_budget=7)])
    clock.now += TARGETS_CACHE_SECONDS + 1
    after = services.shard_digests(2)

    # then: only the shard holding t1 changed its name
    assert [b == a for b, a in zip(before, after, strict=True)] == [False, True, True]


def test_shards_grow_instead_of_multiplying_past_max_shards(services: Services) -> None:
    # given 5 targets, shards of 1 and at most 2 shards

    # when
    shards = services.enabled_shards(1, max_shards=2)

    # then: 2 shards of 3 and 2, every target once, in order
    assert [len(shard) for shard in shards] == [3, 2]
    assert [row[0] for shard in shards for row in shard] == [f"t{i}" for i in range(5)]
    assert [len(shard) for shard in services.enabled_shards(1, max_shards=10)] == [1] * 5
