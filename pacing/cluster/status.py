"""The cluster's state as operators see it (``pacing status``), read from Redis."""

from __future__ import annotations

from typing import Any

import redis

from pacing.cluster.keys import Keys


def cluster_status(client: redis.Redis, keys: Keys, *, now: float) -> dict[str, Any]:
    """Leader, epoch, last published seq and its age, cycle counters and the last cycle."""
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.lease)
    pipe.pttl(keys.lease)
    pipe.get(keys.seq)
    pipe.hgetall(keys.counters)
    pipe.hgetall(keys.last_publish)
    pipe.hgetall(keys.last_cycle)
    pipe.zcard(keys.audit_pending)
    lease, lease_ttl_ms, seq, counters, last_publish, last_cycle, audit_pending = pipe.execute()
    leader, epoch = None, None
    if lease:
        epoch_text, _, leader = lease.decode().partition(":")
        epoch = int(epoch_text)
    publish = _decode(last_publish)
    cycle = _decode(last_cycle)
    published_at = float(publish["at"]) if "at" in publish else None
    return {
        "leader": leader,
        "epoch": epoch,
        "lease_expires_in_seconds": round(lease_ttl_ms / 1000, 3) if lease_ttl_ms > 0 else None,
        "last_seq": int(seq) if seq else 0,
        "last_published_seq": int(publish["seq"]) if "seq" in publish else None,
        "last_published_age_seconds": round(now - published_at, 3) if published_at else None,
        "last_published_kind": publish.get("kind"),
        "last_published_bytes": int(publish["bytes"]) if "bytes" in publish else None,
        "targets": int(cycle["targets"]) if "targets" in cycle else 0,
        "last_cycle": {
            "seq": int(cycle["seq"]),
            "status": cycle["status"],
            "latency_ms": float(cycle["latency_ms"]),
            "error_rows": int(cycle["error_rows"]),
        }
        if "seq" in cycle
        else None,
        "error_rows": int(cycle.get("error_rows", 0)),
        "cycles_started": int(counters.get(b"cycles_started", 0)),
        "cycles_published": int(counters.get(b"cycles_published", 0)),
        "overruns": int(counters.get(b"overruns", 0)),
        "leadership_changes": int(counters.get(b"leadership_changes", 0)),
        "audit_pending": int(audit_pending),
    }


def _decode(mapping: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in mapping.items()}
