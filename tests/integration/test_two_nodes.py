"""Two pacing nodes as real processes (a `celery worker` and a `celery beat` each, with their own
node names) on a private Redis database, the simulator on loopback and a throwaway PostgreSQL
history: one leader at a time, a strictly increasing seq at the receiver, one audit row per
published cycle — also across the loss of the leader."""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pacing.cli.localstack import LocalStack, import_simulator_targets
from pacing.history import create_history_engine, last_cycles, leadership_changes
from pacing.history.migrate import upgrade_to_head
from pacing.settings import load_settings
from pacing.simulator import SimulatorConfig, start_simulator
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import leased_redis_db, redis_url, throwaway_postgres_database, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NODES = ("node-a", "node-b")


class Cluster:
    def __init__(self, stack: LocalStack, simulator: Any, database_url: str, redis_db: int) -> None:
        self.stack = stack
        self.simulator = simulator
        self.database_url = database_url
        self.redis_db = redis_db

    def published(self) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.simulator.base_url}/sim/published",
            params={"after": 0},
            timeout=LOOPBACK_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        return list(response.json()["published"])

    def kill_node(self, node: str) -> None:
        for process in self.stack.processes:
            if process.name.startswith(node):
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with leased_redis_db() as db, throwaway_postgres_database() as database_url:
        simulator = start_simulator(SimulatorConfig(targets=300, seed=5, port=0))
        values = {
            "environment": "development",
            "broker_url": redis_url(db),
            "key_prefix": f"pacing-cluster-{db}",
            "database_url": database_url,
            "stat_server_primary_url": simulator.stat_server_primary_url,
            "stat_server_backup_url": simulator.stat_server_backup_url,
            "engagement_url": simulator.engagement_url,
            "engagement_token": "sim-token",
            "refresh_period_seconds": "1.0",
            "shard_size": "100",
        }
        settings = load_settings(values)
        upgrade_to_head(database_url)
        import_simulator_targets(settings, simulator.base_url)
        env = {**os.environ, **{f"PACING_{k.upper()}": v for k, v in values.items()}}
        stack = LocalStack(settings=settings, workdir=tmp_path)
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        try:
            for node in NODES:
                node_env = {**env, "PACING_NODE_NAME": node}
                stack.spawn(
                    f"{node}-worker",
                    [
                        *celery,
                        "worker",
                        "-n",
                        f"{node}@%h",
                        "--concurrency=2",
                        "--loglevel=INFO",
                        "--without-gossip",
                        "--without-mingle",
                    ],
                    node_env,
                )
                stack.spawn(
                    f"{node}-beat",
                    [*celery, "beat", "--loglevel=INFO", "-s", str(tmp_path / f"beat-{node}")],
                    node_env,
                )
            yield Cluster(stack, simulator, database_url, db)
        finally:
            stack.stop()
            simulator.stop()


def test_two_nodes_publish_in_order_with_one_leader_and_complete_history(cluster: Cluster) -> None:
    # given: two nodes running; the first 12 cycles are published by the first leader
    wait_for(
        lambda: len(cluster.published()) >= 12,
        timeout=120,
        interval=0.5,
        message="the cluster did not publish 12 cycles",
    )
    first_epoch = cluster.published()[-1]["epoch"]
    engine = create_history_engine(cluster.database_url)
    wait_for(
        lambda: bool(leadership_changes(engine, 10)),
        timeout=30,
        message="no leadership change was recorded",
    )
    leader = leadership_changes(engine, 10)[0].node

    # when: the leader node is killed (worker and beat, SIGKILL) and the cluster goes on
    cluster.kill_node(leader)
    count = len(cluster.published())
    wait_for(
        lambda: len(cluster.published()) >= count + 10,
        timeout=120,
        interval=0.5,
        message="the standby did not take over and publish 10 more cycles",
    )

    # then: the receiver saw a strictly increasing seq, never a seq twice
    published = cluster.published()
    seqs = [p["seq"] for p in published]
    assert len(seqs) >= 22
    assert seqs == sorted(set(seqs)), "seq must be strictly increasing at the receiver"
    # ... the epochs never went back, and a new epoch took over from the killed leader
    epochs = [p["epoch"] for p in published]
    assert epochs == sorted(epochs)
    assert epochs[-1] > first_epoch
    # ... every published cycle has exactly one cycle row in the history
    wait_for(
        lambda: {c.seq for c in last_cycles(engine, 10_000)} >= set(seqs),
        timeout=60,
        interval=0.5,
        message="published cycles are missing from the history",
    )
    rows = last_cycles(engine, 10_000)
    assert len({c.seq for c in rows}) == len(rows)
    recorded_published = {c.seq for c in rows if c.publish_status == "published"}
    assert recorded_published <= set(seqs)
    # ... each epoch was led by exactly one node, and leaders did not overlap
    nodes_per_epoch: dict[int, set[str]] = {}
    for c in rows:
        nodes_per_epoch.setdefault(c.epoch, set()).add(c.node)
    assert all(len(nodes) == 1 for nodes in nodes_per_epoch.values())
    changes = sorted(leadership_changes(engine, 100), key=lambda ch: ch.epoch)
    assert changes[-1].node != leader
    for earlier, later in itertools.pairwise(changes):
        assert earlier.released_at is not None
        assert earlier.released_at <= later.acquired_at
    # ... and the first cycle of the new leader was a full snapshot
    first_of_new = min(
        c.seq for c in rows if c.epoch == epochs[-1] and c.publish_status == "published"
    )
    assert next(c for c in rows if c.seq == first_of_new).payload_kind == "full"
    engine.dispose()
