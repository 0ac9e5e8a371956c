"""Names of every Redis key the service uses, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key names; ``prefix`` lets several clusters (or test runs) share one Redis."""

    prefix: str = "pacing"

    @property
    def lease(self) -> str:
        """``"<epoch>:<node>"`` of the leader, with the lease TTL."""
        return f"{self.prefix}:lease"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def inflight(self) -> str:
        """``"<epoch>:<seq>"`` of the cycle in flight, expiring at its deadline."""
        return f"{self.prefix}:inflight"

    @property
    def last_leader(self) -> str:
        return f"{self.prefix}:last_leader"

    @property
    def published_seq(self) -> str:
        """The fence: the highest seq ever allowed to publish."""
        return f"{self.prefix}:published_seq"

    @property
    def counters(self) -> str:
        """Hash of cluster-wide counters (overruns, cycles published, …)."""
        return f"{self.prefix}:counters"

    @property
    def last_publish(self) -> str:
        """Hash describing the last acknowledged publish (seq, epoch, at, kind, bytes)."""
        return f"{self.prefix}:last_publish"

    @property
    def last_cycle(self) -> str:
        """Hash describing the last finished cycle (published or not)."""
        return f"{self.prefix}:last_cycle"

    @property
    def cycle_events(self) -> str:
        """Stream with one entry per finished cycle (figures for the metrics exporter)."""
        return f"{self.prefix}:cycle_events"

    @property
    def snapshot(self) -> str:
        """The decisions the receiver acknowledged last (the base of the next delta)."""
        return f"{self.prefix}:snapshot"

    @property
    def force_full(self) -> str:
        """Set after a 409 base_mismatch: the next publish must be a full snapshot."""
        return f"{self.prefix}:force_full"

    @property
    def state(self) -> str:
        """Hash: target id → packed float64 pacing state."""
        return f"{self.prefix}:state"

    @property
    def feedback(self) -> str:
        """Hash: target id → packed engagement feedback counters."""
        return f"{self.prefix}:feedback"

    @property
    def in_flight(self) -> str:
        """Hash: target id → packed budget of the publish whose feedback is stored."""
        return f"{self.prefix}:in_flight"

    @property
    def last_statistics(self) -> str:
        """Hash: target id → its last valid statistics (packed float64, timestamp first)."""
        return f"{self.prefix}:last_statistics"

    @property
    def targets(self) -> str:
        """The enabled targets as last read from the history database (fallback copy)."""
        return f"{self.prefix}:targets"

    @property
    def operating_points(self) -> str:
        """List of packed batches of Erlang-A operating points solved by any worker
        (versioned with their grid)."""
        return f"{self.prefix}:operating_points:v2"

    def shard_targets(self, digest: str) -> str:
        """One shard's target rows, named by their content (the chord header carries the name)."""
        return f"{self.prefix}:shard_targets:{digest}"

    def shard_rows(self, seq: int, shard: int) -> str:
        """One shard's decisions in cycle ``seq``, from its task until the chord body merges."""
        return f"{self.prefix}:cycle:{seq}:shard:{shard}"

    def audit(self, seq: int) -> str:
        """The audit record of cycle ``seq`` waiting to be written to the history database."""
        return f"{self.prefix}:audit:{seq}"

    def audit_outcome(self, seq: int) -> str:
        """How cycle ``seq``'s publish ended, written after the POST over its staged record."""
        return f"{self.prefix}:audit:{seq}:outcome"

    def audit_settled(self, seq: int) -> str:
        """A list pushed to when cycle ``seq``'s outcome is written: wakes its waiting audit."""
        return f"{self.prefix}:audit:{seq}:settled"

    @property
    def audit_pending(self) -> str:
        """Sorted set of seqs whose audit record is not in the database yet (score: time)."""
        return f"{self.prefix}:audit:pending"

    @property
    def history_repair(self) -> str:
        """Sorted set of seqs up to which the history is to be checked for cycles whose audit
        record a Redis failover lost (score: when, in Unix seconds; pacing.cycle.repair)."""
        return f"{self.prefix}:history_repair"
