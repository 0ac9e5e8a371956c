"""The first stage of a cycle (``pacing.refresh``): the lease, then the shards to pace.

:func:`plan_cycle` takes or renews this node's lease; when it leads and no cycle is in flight, it
cuts the enabled targets into shards (:mod:`pacing.cycle.split`), parks their rows in Redis
(:func:`park_targets`) and opens the :class:`CycleContext` every later task of the cycle carries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pacing.algorithms import PacingParameters
from pacing.cluster.leadership import Role, TickOutcome
from pacing.cluster.witness import master_confirmed
from pacing.services import Services
from pacing.settings import Settings


def pacing_parameters(settings: Settings) -> PacingParameters:
    return PacingParameters(
        refresh_period_seconds=settings.refresh_period_seconds,
        prior_accept_probability=settings.prior_accept_probability,
        prior_resolve_delay_seconds=settings.prior_resolve_delay_seconds,
        prior_handle_time_seconds=settings.prior_handle_time_seconds,
        prior_patience_seconds=settings.prior_patience_seconds,
    )


@dataclass(frozen=True, slots=True)
class CycleContext:
    """What travels with every task of one cycle."""

    seq: int
    epoch: int
    node: str
    started_at: float  # Unix seconds
    shard_count: int
    new_leader: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "node": self.node,
            "started_at": self.started_at,
            "shard_count": self.shard_count,
            "new_leader": self.new_leader,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CycleContext:
        return cls(**{name: data[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class PlannedCycle:
    """What a beat tick decided: the lease outcome and, if this node may start a cycle, its
    context and the shards of the chord."""

    outcome: TickOutcome
    context: CycleContext | None
    shards: list[list[list[Any]]]
    #: the name each shard's rows are parked under in Redis (what the chord header carries)
    digests: list[str] = dataclasses.field(default_factory=list)
    #: some shard's rows were parked anew (new or changed targets, or a flushed Redis)
    targets_changed: bool = False


#: TickOutcome.other of a tick that did not touch the lease: the Redis master is unconfirmed
UNCONFIRMED_MASTER = "(no Sentinel majority confirms the Redis master)"


def plan_cycle(services: Services, *, node: str) -> PlannedCycle:
    """Take or renew ``node``'s lease; when it leads and nothing is in flight, cut the shards."""
    settings = services.settings
    started_at = services.clock()  # the cycle's latency counts from the tick, lease included
    if not master_confirmed(services.redis):
        # no Sentinel majority names the master this node writes to: it may be cut off, and a
        # lease renewed there could outlive a failover (pacing.cluster.witness)
        return PlannedCycle(TickOutcome(Role.STANDBY, 0, 0, False, UNCONFIRMED_MASTER), None, [])
    outcome = services.leadership.tick(
        node=node,
        lease_ttl_seconds=settings.lease_ttl,
        deadline_seconds=settings.cycle_deadline,
    )
    if outcome.role is not Role.LEADER:
        return PlannedCycle(outcome, None, [])
    shards = services.enabled_shards(settings.shard_size, settings.max_shards)
    digests = services.shard_digests(settings.shard_size, settings.max_shards)
    targets_changed = park_targets(services, shards, digests)
    context = CycleContext(
        seq=outcome.seq,
        epoch=outcome.epoch,
        node=node,
        started_at=started_at,
        shard_count=len(shards),
        new_leader=outcome.new_leader,
    )
    return PlannedCycle(outcome, context, shards, digests, targets_changed)


#: Parked target rows outlive a stopped leader by a day; every cycle renews them.
PARKED_TARGETS_SECONDS = 24 * 3600


def park_targets(services: Services, shards: Sequence[Any], digests: Sequence[str]) -> bool:
    """Make sure every shard's target rows are in Redis under their digest; True if some
    shard's rows were not there yet.

    The chord header then carries a 32-character name instead of the rows: encoding 10,000
    targets' rows in the task messages (kombu's stdlib JSON) cost 9 ms in the refresh and 9 ms
    across the shard tasks, 100,000 targets ten times that, and every worker process keeps the
    decoded rows of the shards it has seen. One round trip renews them all; rows are written
    only when missing (new targets, a flushed Redis).
    """
    if not digests:
        return False
    keys = [services.keys.shard_targets(digest) for digest in digests]
    pipe = services.redis.pipeline(transaction=False)
    for key in keys:
        pipe.expire(key, PARKED_TARGETS_SECONDS)
    renewed = pipe.execute()
    missing = [i for i, ok in enumerate(renewed) if not ok]
    if missing:
        pipe = services.redis.pipeline(transaction=False)
        for i in missing:
            pipe.set(keys[i], orjson.dumps(shards[i]), ex=PARKED_TARGETS_SECONDS)
        pipe.execute()
    return bool(missing)
