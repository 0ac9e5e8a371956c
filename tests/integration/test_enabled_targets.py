"""The target list a leader paces: re-read only when the database says it changed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacing.domain import TargetConfig
from pacing.history import repository
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
    repository.upsert_targets(built.history, [TargetConfig(f"t{i}") for i in range(5)])
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
    repository.set_targets_enabled(services.history, ["t1"], enabled=False)

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
