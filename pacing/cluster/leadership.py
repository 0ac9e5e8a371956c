"""Leadership lease, cycle numbering, overrun guard and the publish fence (design.md §2.1).

Each function runs one Lua script, so every decision is atomic on the Redis server whatever the
number of nodes. Redis TTLs are server-side: client clock drift cannot break the lease, only a
pause can, and a paused former leader is stopped by :func:`claim_publish` (the fence).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import redis

from pacing.cluster.keys import Keys

_REFRESH = """
-- KEYS: lease, epoch, seq, inflight, counters, last_leader
-- ARGV: node, lease_ttl_ms, deadline_ms
local holder = redis.call('GET', KEYS[1])
local epoch
local new_leader = 0
local previous = ''
if holder then
  local sep = string.find(holder, ':', 1, true)
  epoch = tonumber(string.sub(holder, 1, sep - 1))
  if string.sub(holder, sep + 1) ~= ARGV[1] then
    return {0, epoch, 0, 0, string.sub(holder, sep + 1)}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  epoch = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], epoch .. ':' .. ARGV[1], 'PX', ARGV[2])
  previous = redis.call('GET', KEYS[6]) or ''
  redis.call('SET', KEYS[6], epoch .. ':' .. ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'leadership_changes', 1)
  new_leader = 1
end
local inflight = redis.call('GET', KEYS[4])
if inflight then
  local sep = string.find(inflight, ':', 1, true)
  -- a cycle of a former epoch can never publish (fence), so it must not block this one
  if tonumber(string.sub(inflight, 1, sep - 1)) == epoch then
    redis.call('HINCRBY', KEYS[5], 'overruns', 1)
    return {2, epoch, tonumber(string.sub(inflight, sep + 1)), new_leader, previous}
  end
end
local seq = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[4], epoch .. ':' .. seq, 'PX', ARGV[3])
redis.call('HINCRBY', KEYS[5], 'cycles_started', 1)
return {1, epoch, seq, new_leader, previous}
"""

_CLAIM_PUBLISH = """
-- KEYS: lease, published_seq ; ARGV: epoch, seq, node ('' : any node)
local holder = redis.call('GET', KEYS[1])
if not holder then return -1 end
local sep = string.find(holder, ':', 1, true)
if tonumber(string.sub(holder, 1, sep - 1)) ~= tonumber(ARGV[1]) then return -1 end
-- after a failover that lost writes another node may hold the lease at the same epoch
if ARGV[3] ~= '' and string.sub(holder, sep + 1) ~= ARGV[3] then return -1 end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) <= last then return -2 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

_FINISH = """
-- KEYS: inflight ; ARGV: "<epoch>:<seq>"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


_RAISE_SEQ_FLOOR = """
-- KEYS: seq ; ARGV: floor
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


_CONCEDE = """
-- KEYS: lease, epoch, seq ; ARGV: "<epoch>:<node>", epoch floor, seq floor
-- The receiver holds a newer term (or the same epoch from another leader): Redis lost writes in
-- a failover. Raise both counters past what the receiver holds and end this term, so that the
-- next tick takes the lease at an epoch the receiver accepts.
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class Role(enum.Enum):
    """What a refresh tick found."""

    STANDBY = "standby"  # another node holds the lease
    LEADER = "leader"  # this node leads and starts cycle ``seq``
    OVERRUN = "overrun"  # this node leads but the previous cycle is still in flight


@dataclass(frozen=True, slots=True)
class TickOutcome:
    role: Role
    epoch: int
    seq: int  # the new cycle (LEADER) or the one still in flight (OVERRUN); 0 for STANDBY
    new_leader: bool  # this tick took a free lease (and so raised the epoch)
    other: str  # STANDBY: the leader's node; new leader: "<epoch>:<node>" of the previous one


class FenceVerdict(enum.Enum):
    ALLOWED = 1
    DEPOSED = -1  # the cycle's epoch is no longer the lease's epoch
    SUPERSEDED = -2  # a newer or equal seq already claimed the publish


class Leadership:
    """The cluster's lease and fence, for one Redis and one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._refresh = client.register_script(_REFRESH)
        self._claim = client.register_script(_CLAIM_PUBLISH)
        self._finish = client.register_script(_FINISH)
        self._raise_seq_floor = client.register_script(_RAISE_SEQ_FLOOR)
        self._concede = client.register_script(_CONCEDE)

    def tick(self, *, node: str, lease_ttl_seconds: float, deadline_seconds: float) -> TickOutcome:
        """Take or renew ``node``'s lease; if it leads and nothing is in flight, start a cycle."""
        keys = self._keys
        reply: list[Any] = self._refresh(
            keys=[keys.lease, keys.epoch, keys.seq, keys.inflight, keys.counters, keys.last_leader],
            args=[node, _ms(lease_ttl_seconds), _ms(deadline_seconds)],
        )
        code, epoch, seq, new_leader, other = reply
        role = {0: Role.STANDBY, 1: Role.LEADER, 2: Role.OVERRUN}[int(code)]
        return TickOutcome(
            role=role,
            epoch=int(epoch),
            seq=int(seq),
            new_leader=bool(new_leader),
            other=_text(other),
        )

    def claim_publish(self, *, epoch: int, seq: int, node: str = "") -> FenceVerdict:
        """Atomically allow cycle ``seq`` of ``epoch`` to publish, at most once and in order;
        with ``node``, only while that node still holds the lease at ``epoch``."""
        keys = self._keys
        verdict = self._claim(keys=[keys.lease, keys.published_seq], args=[epoch, seq, node])
        return FenceVerdict(int(verdict))

    def finish_cycle(self, *, epoch: int, seq: int) -> None:
        """Clear the in-flight marker if it is still this cycle's, so the next tick may start."""
        self._finish(keys=[self._keys.inflight], args=[f"{epoch}:{seq}"])

    def epoch_is_current(self, epoch: int, node: str = "") -> bool:
        """True while the lease is held at ``epoch`` (by ``node`` if given, else by whichever
        node took it then)."""
        held_epoch, _, holder = _text(self._client.get(self._keys.lease)).partition(":")
        return held_epoch == str(epoch) and (not node or holder == node)

    def concede(self, *, epoch: int, node: str, epoch_floor: int, seq_floor: int) -> bool:
        """End ``node``'s term at ``epoch`` and make the next term's epoch and seq larger than
        ``epoch_floor`` and ``seq_floor``, never moving either backwards; True if the lease
        was this term's and is now free.

        For a receiver that holds a term this cluster lost: a Redis failover dropped the newest
        epoch (a replica promoted before the write reached it), so a new leader took an epoch
        the receiver has already seen, or an older one (docs/contracts.md, the fence).
        """
        keys = self._keys
        released = self._concede(
            keys=[keys.lease, keys.epoch, keys.seq],
            args=[f"{epoch}:{node}", epoch_floor, seq_floor],
        )
        return bool(released)

    def raise_seq_floor(self, seq: int) -> bool:
        """Make the next cycle's seq larger than ``seq``; never moves the counter backwards.

        For a receiver that holds a seq this cluster never reached: Redis lost its data (a
        restart without persistence) and the counter started again from 1.
        """
        return bool(self._raise_seq_floor(keys=[self._keys.seq], args=[seq]))

    def count(self, counter: str, amount: int = 1) -> None:
        self._client.hincrby(self._keys.counters, counter, amount)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
