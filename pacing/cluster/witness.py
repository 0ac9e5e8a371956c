"""Is the Redis this node writes to the master a majority of the Sentinels name? (design §2.1)

A lease renewed on a master that is cut off from the Sentinels and its replica is worth nothing:
the Sentinels promote the replica, and a node there takes the lease at the next epoch, while the
old leader would go on renewing the old one and publishing. ``min-replicas-to-write`` would make
that master refuse writes, but with the one replica of the reference topology it also makes the
master that survives a failover refuse every write (its only replica is the one that died), and
``WAIT`` cannot tell those two cases apart either (docs/contracts.md, "Fencing through a
failover"). The Sentinels can: before each tick the leader asks the Sentinels which master they
follow, and leads only while a majority names the one its connections go to. It stops asking
once a majority agrees: two round trips a tick with three Sentinels; a Sentinel that is down or
slow costs its socket timeout once and is asked last from then on.
"""

from __future__ import annotations

from collections import Counter

import redis
from redis.sentinel import SentinelConnectionPool


def master_confirmed(client: redis.Redis) -> bool:
    """True if ``client`` is not Sentinel-managed, or a majority of its Sentinels see a healthy
    master at the address its connections use; a client that followed an old master is moved
    to the one the majority names (its idle connections are dropped)."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return True
    manager = pool.sentinel_manager
    majority = len(manager.sentinels) // 2 + 1
    votes: Counter[tuple[str, int]] = Counter()
    named: tuple[str, int] | None = None
    for sentinel in list(manager.sentinels):
        try:
            state = sentinel.sentinel_master(pool.service_name)
        except redis.exceptions.RedisError:
            # down, unreachable, or not monitoring this master: no vote, and asked last from
            # now on, so that a Sentinel that times out costs its timeout once, not every tick
            manager.sentinels.remove(sentinel)
            manager.sentinels.append(sentinel)
            continue
        if manager.check_master_state(state, pool.service_name):
            address = (str(state["ip"]), int(state["port"]))
            votes[address] += 1
            if votes[address] >= majority:  # the others cannot change the verdict
                named = address
                break
    if named is None:
        return False
    if _address(pool.master_address) != named:
        try:
            pool.get_master_address()  # type: ignore[no-untyped-call]  # asks the Sentinels again and follows the new master
        except redis.exceptions.RedisError:
            return False
    return _address(pool.master_address) == named


def _address(value: object) -> tuple[str, int] | None:
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    return str(value[0]), int(value[1])
