"""The fault harness on a Sentinel-managed Redis: one master, one replica, three Sentinels.

:class:`SentinelCluster` is the harness's :class:`~tests.reliability.harness.Cluster` with its
single ``redis-server`` replaced by the topology ``pacing up --ha`` starts
(:class:`pacing.cli.redis_ha.SentinelSet`, the Sentinel timings of a pacing service), the nodes
pointed at it through ``PACING_REDIS_SENTINELS``. Its four faults (issue 18) each report the
receiver's view (longest gap between accepted publishes, duplicate seqs, regressions, publishes
of an ended term) and the published cycles missing from the history:

* ``redis_master_killed`` — SIGKILL of the master; the Sentinels promote the replica;
* ``redis_failover_lost_writes`` — the replica is held back
  (:meth:`~pacing.cli.redis_ha.SentinelSet.hold_back_replication`) until it has missed at least
  two cycles of writes, then the master is killed: the newest seq, epoch, lease renewals, state
  and staged audit records are lost with it;
* ``redis_old_master_returns`` — after a failover the old master starts again (same port, same
  configuration, empty: no persistence) and must rejoin as a replica, with no second leader;
* ``sentinel_killed`` — one of the three Sentinels is killed; pacing goes on, and a failover
  with the two left still succeeds.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import redis

from pacing.cli.redis_ha import SentinelSet
from pacing.cluster.connection import redis_client
from tests.reliability.harness import (
    PERIOD_SECONDS,
    RECOVERY_TIMEOUT_SECONDS,
    STEADY_PUBLISHES,
    Cluster,
    FaultResult,
    _finish,
    _statuses,
    _wait,
    free_port,
)

MASTER_NAME = "pacing"
#: the replica is held back until it has missed this many cycles (the issue: at least two)
CYCLES_HELD_BACK = 3


class _SentinelRedis:
    """What :class:`Cluster` expects of its Redis (pids, stop), for a :class:`SentinelSet`."""

    def __init__(self, servers: SentinelSet) -> None:
        self.servers = servers
        self.pids: list[int] = []
        self.note_pids()

    def note_pids(self) -> None:
        for member in self.servers.members():
            if member.pid and member.pid not in self.pids:
                self.pids.append(member.pid)

    def stop(self) -> None:
        self.servers.stop()


class SentinelCluster(Cluster):
    """:class:`Cluster` on a master, a replica and three Sentinels of its own."""

    def _start_redis(self, workdir: Path) -> dict[str, str]:
        self.servers = SentinelSet.start(
            workdir / "redis-ha",
            master_port=free_port(),
            replica_port=free_port(),
            sentinel_ports=[free_port() for _ in range(3)],
            master_name=MASTER_NAME,
        )
        self.redis_server = _SentinelRedis(self.servers)  # type: ignore[assignment]
        self._exit.callback(self.servers.stop)
        return {
            "redis_sentinels": self.servers.sentinels_setting(),
            "redis_master_name": MASTER_NAME,
        }

    def _redis_client(self) -> redis.Redis:
        return redis_client(self.settings)  # follows the master the Sentinels name

    # --- the topology --------------------------------------------------------------------

    def member(self, role: str) -> Any:
        """The first member whose server reports ``role`` now ("master", "replica", "sentinel")."""
        found: list[Any] = []

        def there() -> bool:
            found[:] = [m for m in self.servers.members() if m.alive and m.role == role]
            return bool(found)

        _wait(there, timeout=RECOVERY_TIMEOUT_SECONDS, what=f"a Redis {role}")
        return found[0]

    def kill(self, name: str) -> float:
        """SIGKILL one member; returns when."""
        self.redis_server.note_pids()  # type: ignore[attr-defined]
        killed_at = time.time()
        self.servers.kill(name, signal.SIGKILL)
        return killed_at

    def wait_for_new_master(self, old_port: int) -> float:
        """Seconds until a majority of the Sentinels name a master other than ``old_port``."""
        started = time.monotonic()

        def moved() -> bool:
            address = self.servers.master()
            return address is not None and address[1] != old_port

        _wait(moved, timeout=RECOVERY_TIMEOUT_SECONDS, what="the Sentinels' failover")
        return time.monotonic() - started

    def heal(self) -> None:
        """Restart every dead member (an old master rejoins as a replica), release a held-back
        replica, wait until the replica is in sync, then heal the rest as :class:`Cluster`."""
        for member in self.servers.members():
            if not member.name.startswith("sentinel"):
                self.servers.release_replication(member.name)
            if not member.alive:
                self.servers.restart(member.name)
        self.redis_server.note_pids()  # type: ignore[attr-defined]
        _wait(self.replica_in_sync, timeout=RECOVERY_TIMEOUT_SECONDS, what="a replica in sync")
        super().heal()

    def replica_in_sync(self) -> bool:
        members = [m for m in self.servers.members() if m.alive]
        replicas = [m for m in members if m.role == "replica"]
        sentinels = [m for m in members if m.role == "sentinel"]
        return len(sentinels) == 3 and any(_link_up(m.port) for m in replicas)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5)


def _link_up(port: int) -> bool:
    with contextlib.suppress(redis.RedisError), _client(port) as client:
        info = client.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"
    return False


def _offset(port: int, field: str) -> int:
    with _client(port) as client:
        return int(client.info("replication").get(field, 0))


# --- the faults ---------------------------------------------------------------------------------


def _failover_details(cluster: SentinelCluster, old: Any) -> dict[str, Any]:
    failover_seconds = cluster.wait_for_new_master(old.port)
    return {
        "old_master": old.port,
        "new_master": (cluster.servers.master() or ("", None))[1],
        "failover_seconds": round(failover_seconds, 2),
    }


def fault_redis_master_killed(cluster: SentinelCluster, **_: Any) -> FaultResult:
    """SIGKILL of the Redis master: the replica is promoted and publishing resumes."""
    result = FaultResult("redis_master_killed", measured_from="kill")
    cluster.take_queue_max()
    master = cluster.member("master")
    window_start = time.time()
    killed_at = cluster.kill(master.name)
    details = _failover_details(cluster, master)
    _finish(cluster, result, window_start=window_start, reference=killed_at)
    result.details.update(details, **cluster.nodes_alive())
    result.recovered = result.recovered and result.details["nodes_alive"]
    return result


def fault_redis_failover_lost_writes(cluster: SentinelCluster, **_: Any) -> FaultResult:
    """The replica misses at least two cycles of writes, then the master is killed."""
    result = FaultResult("redis_failover_lost_writes", measured_from="kill")
    cluster.take_queue_max()
    master, replica = cluster.member("master"), cluster.member("replica")
    window_start = time.time()
    held_at = time.time()
    cluster.servers.hold_back_replication(replica.name)
    missed = cluster.wait_for_publishes(
        CYCLES_HELD_BACK, after_time=held_at, timeout=RECOVERY_TIMEOUT_SECONDS
    )
    lag_bytes = _offset(master.port, "master_repl_offset") - _offset(
        replica.port, "slave_repl_offset"
    )
    killed_at = cluster.kill(master.name)
    details = _failover_details(cluster, master)
    cluster.servers.release_replication(replica.name)
    _finish(cluster, result, window_start=window_start, reference=killed_at)
    after = [p for p in cluster.published() if p.received_at > killed_at]
    result.details.update(
        details,
        cycles_missed_by_replica=len(missed),
        replication_lag_bytes=lag_bytes,
        last_seq_before=max(p.seq for p in missed),
        first_seq_after=after[0].seq if after else None,
        first_kind_after=after[0].kind if after else None,
        statuses_after=_statuses(cluster, held_at),
        **cluster.nodes_alive(),
    )
    result.recovered = (
        result.recovered
        and result.details["nodes_alive"]
        and len(missed) >= 2
        and lag_bytes > 0
        and bool(after)
        and after[0].seq > result.details["last_seq_before"]
    )
    return result


def fault_redis_old_master_returns(cluster: SentinelCluster, **_: Any) -> FaultResult:
    """After a failover the old master starts again and must rejoin as a replica."""
    result = FaultResult("redis_old_master_returns", measured_from="return")
    cluster.take_queue_max()
    master = cluster.member("master")
    window_start = time.time()
    cluster.kill(master.name)
    details = _failover_details(cluster, master)
    cluster.wait_for_publishes(
        STEADY_PUBLISHES, after_time=time.time(), timeout=RECOVERY_TIMEOUT_SECONDS
    )
    returned_at = time.time()
    cluster.servers.restart(master.name)
    cluster.redis_server.note_pids()  # type: ignore[attr-defined]
    started = time.monotonic()
    _wait(
        lambda: _link_up(master.port),
        timeout=RECOVERY_TIMEOUT_SECONDS,
        what="the old master to rejoin",
    )
    rejoined = time.monotonic() - started
    # watch it for several periods: a second leader would publish now, if ever
    time.sleep(5 * PERIOD_SECONDS)
    _finish(cluster, result, window_start=window_start, reference=returned_at)
    leaders_after = {p.leader for p in cluster.published() if p.received_at > returned_at}
    result.details.update(
        details,
        rejoined_as_replica_seconds=round(rejoined, 2),
        leaders_after_return=sorted(leaders_after),
        **cluster.nodes_alive(),
    )
    result.recovered = result.recovered and len(leaders_after) == 1
    return result


def fault_sentinel_killed(cluster: SentinelCluster, **_: Any) -> FaultResult:
    """One Sentinel of three is killed: pacing goes on, and the two left still fail over."""
    result = FaultResult("sentinel_killed", measured_from="kill")
    cluster.take_queue_max()
    sentinel = cluster.member("sentinel")
    window_start = time.time()
    killed_at = cluster.kill(sentinel.name)
    during = cluster.wait_for_publishes(5, after_time=killed_at, timeout=RECOVERY_TIMEOUT_SECONDS)
    master = cluster.member("master")
    master_killed_at = cluster.kill(master.name)
    details = _failover_details(cluster, master)
    _finish(cluster, result, window_start=window_start, reference=master_killed_at)
    result.details.update(
        details,
        sentinel=sentinel.name,
        first_publish_after_sentinel_kill=round(during[0].received_at - killed_at, 2),
        **cluster.nodes_alive(),
    )
    result.recovered = result.recovered and result.details["nodes_alive"]
    return result


def run_ha_fault(
    cluster: SentinelCluster, name: str, *, outage_seconds: float = 0.0
) -> FaultResult:
    """Heal the cluster, then inject HA fault ``name`` and measure it."""
    cluster.heal()
    return HA_FAULTS[name](cluster, outage_seconds=outage_seconds)


HA_FAULTS = {
    "redis_master_killed": fault_redis_master_killed,
    "redis_failover_lost_writes": fault_redis_failover_lost_writes,
    "redis_old_master_returns": fault_redis_old_master_returns,
    "sentinel_killed": fault_sentinel_killed,
}
