"""The leader's check that its Redis master is the one a majority of the Sentinels names
(``pacing.cluster.witness``), and what the refresh does without it: real ``redis-server``
processes, a master, a replica and three Sentinels on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacing.cli.redis_ha import SentinelSet
from pacing.cluster.connection import redis_client
from pacing.cluster.leadership import Role
from pacing.cluster.witness import master_confirmed
from pacing.cycle.plan import UNCONFIRMED_MASTER, plan_cycle
from pacing.history.migrate import upgrade_to_head
from pacing.services import Services
from pacing.settings import Settings, load_settings
from tests.integration.test_redis_ha import servers  # noqa: F401 - the fixture
from tests.support import LOOPBACK_NODE_SETTINGS, redis_url, wait_for

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 60.0  # a failover takes about 2 s with the set's timings


@pytest.fixture
def settings(
    servers: SentinelSet,  # noqa: F811 - the fixture of test_redis_ha
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    monkeypatch.delenv("PACING_BROKER_URL")  # the suite's plain Redis: Sentinel mode refuses it
    database = f"sqlite:///{tmp_path / 'history.db'}"
    upgrade_to_head(database)
    return load_settings(
        {
            "environment": "development",
            "node_name": "node-a",
            "redis_sentinels": servers.sentinels_setting(),
            "redis_master_name": servers.master_name,
            "database_url": database,
            "key_prefix": f"witness-{uuid.uuid4().hex[:8]}",
            **LOOPBACK_NODE_SETTINGS,
        }
    )


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = Services(settings)
    try:
        yield built
    finally:
        built.close()


def test_a_client_of_one_redis_needs_no_confirmation() -> None:
    client = redis_client(load_settings({"broker_url": redis_url(0)}))
    try:
        assert master_confirmed(client)
    finally:
        client.close()


def test_the_master_a_majority_names_is_confirmed_and_a_lost_majority_is_not(
    servers: SentinelSet,  # noqa: F811 - the fixture of test_redis_ha
    services: Services,
) -> None:
    # given a healthy set: the leader leads
    assert master_confirmed(services.redis)
    first = plan_cycle(services, node="node-a").outcome
    assert first.role is Role.LEADER
    services.leadership.finish_cycle(epoch=first.epoch, seq=first.seq)

    # when one Sentinel of three dies: still a majority
    servers.kill("sentinel-1")
    assert master_confirmed(services.redis)

    # when a second one dies: no majority names any master, so the node does not even renew
    servers.kill("sentinel-2")
    assert not master_confirmed(services.redis)
    planned = plan_cycle(services, node="node-a")
    assert planned.outcome.role is Role.STANDBY
    assert planned.outcome.other == UNCONFIRMED_MASTER
    assert planned.context is None

    # then a Sentinel back gives the majority back, and the node leads again
    servers.restart("sentinel-1")
    wait_for(
        lambda: master_confirmed(services.redis),
        timeout=DEADLINE_SECONDS,
        message="a majority of Sentinels again",
    )
    assert plan_cycle(services, node="node-a").outcome.role is Role.LEADER


def test_after_a_failover_the_client_follows_the_master_the_majority_names(
    servers: SentinelSet,  # noqa: F811 - the fixture of test_redis_ha
    services: Services,
) -> None:
    # given the client connected to the first master
    services.redis.set("witness-probe", 1)
    old = servers.master()
    assert old is not None

    # when the master dies and the Sentinels promote the replica
    servers.kill("redis-a")
    servers.wait_for_master(old[1], timeout=DEADLINE_SECONDS)

    # then the check confirms the new master and the client writes there
    wait_for(
        lambda: master_confirmed(services.redis),
        timeout=DEADLINE_SECONDS,
        message="the new master confirmed",
    )
    address = services.redis.connection_pool.master_address  # type: ignore[attr-defined]
    assert address == servers.master()
    assert services.redis.set("witness-probe", 2)
