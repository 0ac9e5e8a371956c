"""The cycle on a real Celery worker (threads pool, in this process) against real Redis,
the simulator on loopback and the SQLite history."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import cycle_wait_seconds, run_cycle_by_hand, wait_for

pytestmark = pytest.mark.integration


def test_bad_targets_get_budget_zero_with_their_reason_while_the_shard_is_paced(
    celery_session_worker: Any, simulator: Any, history_ready: str, stack_settings: Any
) -> None:
    from pacing.history import create_history_engine, last_cycles, target_history

    # given: three targets whose statistics are bad in three different ways
    targets = requests.get(
        f"{simulator.base_url}/sim/targets", timeout=LOOPBACK_TIMEOUT_SECONDS
    ).json()["targets"]
    ids = [t["id"] for t in targets]
    assert len(ids) < stack_settings.shard_size, "the test needs every target in one shard"
    unknown, malformed, stale = ids[0], ids[1], ids[2]
    requests.post(
        f"{simulator.base_url}/sim/control",
        json={"corrupt": {unknown: "missing", malformed: "malformed", stale: "stale"}},
        timeout=LOOPBACK_TIMEOUT_SECONDS,
    ).raise_for_status()

    # when: cycles run until one is published and audited
    seq = run_cycle_by_hand(simulator.base_url)
    seq = run_cycle_by_hand(simulator.base_url)
    engine = create_history_engine(history_ready)
    wait_for(
        lambda: any(c.seq == seq for c in last_cycles(engine, 5)),
        timeout=cycle_wait_seconds(),
        message=f"cycle {seq} never reached the history database",
    )

    # then: each bad target has budget 0 and its own reason ...
    latest = {tid: target_history(engine, tid)[-1] for tid in ids}
    assert (latest[unknown].proactive_budget, latest[unknown].reason) == (0, "unknown_target")
    assert (latest[malformed].proactive_budget, latest[malformed].reason) == (0, "error")
    assert (latest[stale].proactive_budget, latest[stale].reason) == (0, "stale")
    # ... while every other target of the same shard is paced normally
    others = [latest[tid] for tid in ids[3:]]
    assert all(p.reason in {"ok", "cold_start", "no_agents", "queue_full"} for p in others)
    assert sum(p.proactive_budget for p in others) > 0
    engine.dispose()

    requests.post(
        f"{simulator.base_url}/sim/control",
        json={"corrupt": dict.fromkeys((unknown, malformed, stale))},  # null heals
        timeout=LOOPBACK_TIMEOUT_SECONDS,
    ).raise_for_status()


def test_a_cycle_is_recorded_once_with_its_stage_timings(
    celery_session_worker: Any, simulator: Any, history_ready: str
) -> None:
    from pacing.history import create_history_engine, last_cycles

    # given / when
    seq = run_cycle_by_hand(simulator.base_url)
    engine = create_history_engine(history_ready)
    wait_for(
        lambda: any(c.seq == seq for c in last_cycles(engine, 10)),
        timeout=cycle_wait_seconds(),
        message=f"cycle {seq} never reached the history database",
    )

    # then
    cycle = next(c for c in last_cycles(engine, 10) if c.seq == seq)
    assert cycle.publish_status == "published"
    assert cycle.target_count == 40
    assert cycle.node == "test-node"
    assert cycle.fetch_ms is not None
    assert cycle.fetch_ms >= 0
    assert cycle.payload_kind in {"full", "delta"}
    assert cycle.payload_bytes > 0
    assert [c.seq for c in last_cycles(engine, 1000)].count(seq) == 1
    engine.dispose()


def test_the_worker_presolves_a_goal_and_every_process_then_paces_it_without_solving(
    celery_session_worker: Any, stack_settings: Any
) -> None:
    import numpy as np

    from pacing.algorithms import OperatingPoints
    from pacing.algorithms._operating_points import (
        PRESOLVE_MAX_SERVERS,
        PRESOLVE_RATIO_OCTAVES,
        _found,
        _key,
    )
    from pacing.cluster.connection import redis_client
    from pacing.cluster.keys import Keys
    from pacing.cluster.state import SharedOperatingPoints
    from pacing.cycle import presolve
    from tasks.cycle import presolve_operating_points
    from tasks.services import services

    # given: a goal no target of this session has (7 % abandonment), and another process's
    # cache that has never seen it (a presolve sent by an earlier test's cycle may still be
    # storing its points into this process's cache from another worker thread: it once lost
    # this test's grid, before the cache took a lock)
    client = redis_client(stack_settings)
    other = OperatingPoints()
    shared = SharedOperatingPoints(client, Keys(stack_settings.key_prefix), other)
    shared.pull()
    before = len(other)

    # when: the leader's task runs on the worker
    presolve_operating_points.delay([[0.07, False]])

    # then: the whole grid reaches the other process through Redis …
    low, high = PRESOLVE_RATIO_OCTAVES
    n_grid, r_grid = (
        a.ravel()
        for a in np.meshgrid(
            np.arange(1, PRESOLVE_MAX_SERVERS + 1), np.arange(low * 16, high * 16 + 1)
        )
    )
    grid = _key(n_grid, r_grid, np.full(n_grid.size, 700), np.zeros(n_grid.size, dtype=np.int64))
    wait_for(
        lambda: shared.pull() >= 0 and _found(other.keys(0.2), grid).all(),
        timeout=60,
        message="the presolved points never reached Redis",
    )
    assert len(other) >= before + grid.size
    # … which paces any group up to 256 slots at that goal without solving anything
    rng = np.random.default_rng(3)
    servers = rng.integers(1, PRESOLVE_MAX_SERVERS + 1, 500).astype(np.float64)
    ratio = 2.0 ** rng.uniform(low + 0.1, high - 0.1, 500)
    point = other.lookup(
        servers,
        ratio,
        np.full(500, 0.07),
        busy_factor=np.zeros(500, dtype=bool),
        busy_ceiling=0.2,
    )
    assert other.export_fresh() == []
    assert np.isfinite(point.load).all()
    # and asking again solves nothing (the worker runs in this process: same cache)
    assert presolve.presolve_operating_points(services(), [[0.07, False]]) == 0
