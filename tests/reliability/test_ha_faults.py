"""The Redis Sentinel faults of issue 18 against one real cluster (tests/reliability/ha_harness.py).

Two nodes on a master, a replica and three Sentinels of their own (``redis-server`` processes on
free loopback ports, the Sentinel timings ``pacing up --ha`` uses), PostgreSQL and the simulator
as in test_faults.py. Each test heals the cluster (a killed server restarts and rejoins as a
replica), injects one fault and asserts what the receiver saw — no seq twice, no seq regression,
no publish of a term after another term published — and that every cycle the receiver accepted
has its history row. Timings are bounded generously; ``benchmarks/faults.py --ha`` prints them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.ha_harness import SentinelCluster, run_ha_fault
from tests.reliability.harness import FaultResult, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

GENEROUS_SECONDS = 60.0  # "recovers", not "recovers fast": CI machines are loaded


@pytest.fixture(scope="module")
def cluster() -> Iterator[SentinelCluster]:
    with running_cluster(cluster_class=SentinelCluster) as running:
        assert isinstance(running, SentinelCluster)
        yield running
    assert running.processes_left_after_close == 0, "processes were left behind"


def inject(cluster: SentinelCluster, fault: str) -> FaultResult:
    result = run_ha_fault(cluster, fault)
    print(f"{fault}: {result}")  # the figures, shown with -s and with a failure
    assert result.duplicates == 0, f"a seq was accepted twice: {result}"
    assert result.regressions == 0, f"a seq went backwards at the receiver: {result}"
    assert result.ended_term_publishes == 0, f"two leaders interleaved: {result}"
    assert result.audit_lost == 0, f"published cycles lack history rows: {result}"
    assert result.audit_duplicated == 0, f"history rows written twice: {result}"
    assert result.next_publish_seconds is not None, f"pacing did not resume: {result}"
    assert result.next_publish_seconds < GENEROUS_SECONDS, result
    assert result.recovered, result
    return result


def test_a_killed_master_is_replaced_by_its_replica_and_pacing_resumes(
    cluster: SentinelCluster,
) -> None:
    result = inject(cluster, "redis_master_killed")

    assert result.details["new_master"] != result.details["old_master"]


def test_a_failover_that_loses_cycles_of_writes_keeps_the_fence_and_the_history(
    cluster: SentinelCluster,
) -> None:
    result = inject(cluster, "redis_failover_lost_writes")

    details = result.details
    # the replica really was behind: it missed the seq, lease and audit writes of 2+ cycles
    assert details["cycles_missed_by_replica"] >= 2, details
    assert details["replication_lag_bytes"] > 0, details
    # and the receiver still only ever saw newer seqs
    assert details["first_seq_after"] > details["last_seq_before"], details


def test_an_old_master_that_returns_rejoins_as_a_replica_without_a_second_leader(
    cluster: SentinelCluster,
) -> None:
    result = inject(cluster, "redis_old_master_returns")

    assert len(result.details["leaders_after_return"]) == 1, result.details


def test_one_sentinel_down_of_three_neither_stops_pacing_nor_a_failover(
    cluster: SentinelCluster,
) -> None:
    result = inject(cluster, "sentinel_killed")

    assert result.details["new_master"] != result.details["old_master"]
