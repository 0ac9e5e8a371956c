"""One cycle at a time on the cycle benchmark's stack (``benchmarks/_stack.py``).

:class:`Driver` sends ``pacing.refresh`` as celery beat would (or, for the baseline, runs the
same cycle in this process), waits for the cycle's entry in the ``<prefix>:cycle_events`` stream
and for its audit row in the history, and turns both into a :class:`Cycle` with its stage
durations; :func:`run_cycles` runs a sequence of them a refresh period apart. Which cycles to run
and how to sum them up is ``benchmarks/_measurements.py``'s business.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from benchmarks._stack import NODE, PERIOD_SECONDS, BenchStack
from pacing.cluster.connection import SOCKET_TIMEOUT_SECONDS
from pacing.cycle.in_process import run_cycle_in_process
from pacing.services import Services

#: A tick that found no lease, expired in the queue or hit an overrun leaves no event; give up
#: long after the cycle's deadline (2 periods), when its tasks have expired and run out.
EVENT_TIMEOUT_SECONDS = 25.0
#: The audit task retries with backoff (1 + 2 + 4 + 8 s) when the database refuses a write.
RECORD_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.005  # how often the history is asked whether the audit row is committed
#: The longest single XREAD wait: the service's Redis client (the stack's) gives up on a reply
#: after SOCKET_TIMEOUT_SECONDS, so a longer wait is cut into several.
XREAD_BLOCK_SECONDS = SOCKET_TIMEOUT_SECONDS / 2
STAGES = (
    "dispatch_ms",
    "shards_ms",
    "fetch_total_ms",
    "pace_total_ms",
    "join_ms",
    "merge_ms",
    "publish_ms",
    "audit_ms",
    "rest_ms",
)
#: The stages that follow each other on the critical path; ``rest_ms`` is e2e minus their sum.
SEQUENTIAL_STAGES = ("dispatch_ms", "shards_ms", "join_ms", "merge_ms", "publish_ms", "audit_ms")


# --- one cycle ------------------------------------------------------------------------------


@dataclass
class Cycle:
    """One cycle as its history row and its cycle event describe it."""

    kind: str  # "pipeline" or "baseline"
    warmup: bool
    seq: int | None = None
    status: str = "no cycle"  # the row's publish_status
    error: str | None = None
    e2e_ms: float | None = None
    recorded_at_source: str | None = None  # "column", or "observed" when the row has none
    payload_kind: str | None = None
    payload_bytes: int | None = None
    targets: int | None = None
    changed: int | None = None
    error_rows: int | None = None
    cold_start: int | None = None  # targets still paced with the prior parameters
    stages: dict[str, float | None] = field(default_factory=dict)

    @property
    def measured_ok(self) -> bool:
        return not self.warmup and self.status == "published" and self.e2e_ms is not None


class Driver:
    """Runs one cycle at a time, through the Celery pipeline or in this process, and measures
    it from the history row (``started_at``, ``recorded_at``) and the cycle event (stages)."""

    def __init__(self, stack: BenchStack, history: psycopg.Connection[Any]) -> None:
        self.stack = stack
        self.history = history
        self.events_key = stack.keys.cycle_events
        has_column = history.execute(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'cycles' AND column_name = 'recorded_at'"
        ).fetchone()
        recorded = "recorded_at" if has_column else "NULL AS recorded_at"
        self._row_query = (
            f"SELECT started_at, {recorded}, publish_status, error, payload_kind, payload_bytes, "
            "target_count, changed_count, error_count FROM cycles WHERE seq = %s"
        )

    def pipeline_cycle(self, *, warmup: bool) -> Cycle:
        after = self._last_event_id()
        # a cycle's seq is taken at its tick: anything not above this is an older cycle's event
        last_seq = int(self.stack.redis.get(self.stack.keys.seq) or 0)
        # as celery beat sends it: a tick older than one period is useless
        self.stack.app.send_task("pacing.refresh", args=[NODE], expires=PERIOD_SECONDS)
        event = self._next_event(after, EVENT_TIMEOUT_SECONDS, newer_than=last_seq)
        if event is None:
            return self._unfinished(warmup, last_seq)
        return self._measure("pipeline", warmup, int(event["seq"]), event, fallback=None)

    def baseline_cycle(self, services: Services, *, warmup: bool) -> Cycle:
        after = self._last_event_id()
        record = run_cycle_in_process(services, node=NODE)
        returned_at = time.time()
        if record is None:
            return Cycle("baseline", warmup, error="not the leader, or a cycle still in flight")
        event = self._next_event(after, 1.0, newer_than=record.seq - 1) or {}
        return self._measure("baseline", warmup, record.seq, event, fallback=returned_at)

    def _unfinished(self, warmup: bool, last_seq: int) -> Cycle:
        """A pipeline tick that produced no cycle event: did it start a cycle at all?"""
        seq = int(self.stack.redis.get(self.stack.keys.seq) or 0)
        if seq > last_seq:
            error = (
                f"cycle {seq} started but did not finish within {EVENT_TIMEOUT_SECONDS:g} s "
                "(its tasks expire at the cycle deadline, so the chord may never complete)"
            )
            return Cycle("pipeline", warmup, seq=seq, status="unfinished", error=error)
        error = "the tick started no cycle (expired in the queue, another leader or an overrun)"
        return Cycle("pipeline", warmup, error=error)

    def _last_event_id(self) -> bytes | str:
        last: Any = self.stack.redis.xrevrange(self.events_key, count=1)
        return last[0][0] if last else "0-0"

    def _next_event(
        self, after: bytes | str, timeout: float, *, newer_than: int
    ) -> dict[str, str] | None:
        """The first cycle event after stream id ``after`` whose seq is above ``newer_than``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            block = min(left, XREAD_BLOCK_SECONDS)
            answer: Any = self.stack.redis.xread(
                {self.events_key: after}, count=1, block=max(1, int(block * 1000))
            )
            if not answer:
                continue
            after, fields = answer[0][1][0]
            event = {key.decode(): value.decode() for key, value in fields.items()}
            if int(event["seq"]) > newer_than:
                return event
        return None

    def _measure(
        self, kind: str, warmup: bool, seq: int, event: dict[str, str], *, fallback: float | None
    ) -> Cycle:
        """``fallback``: when the audit row was known to be committed, if it has no recorded_at
        (the baseline knows: its call returned; for the pipeline, when the row was first seen)."""
        found = self._wait_for_row(seq)
        if found is None:
            return Cycle(
                kind,
                warmup,
                seq=seq,
                status=event.get("status", "no cycle"),
                error=f"no audit row within {RECORD_TIMEOUT_SECONDS:g} s",
            )
        row, seen_at = found
        recorded_at = row["recorded_at"]
        recorded = recorded_at.timestamp() if recorded_at else fallback or seen_at
        started = row["started_at"].timestamp()
        e2e_ms = (recorded - started) * 1000
        return Cycle(
            kind,
            warmup,
            seq=seq,
            status=row["publish_status"],
            error=row["error"],
            e2e_ms=e2e_ms,
            recorded_at_source="column" if recorded_at else "observed",
            payload_kind=row["payload_kind"],
            payload_bytes=row["payload_bytes"],
            targets=row["target_count"],
            changed=row["changed_count"],
            error_rows=row["error_count"],
            cold_start=orjson.loads(event.get("reasons", "{}")).get("cold_start"),
            stages=stages_of(event, started=started, recorded=recorded, e2e_ms=e2e_ms),
        )

    def _wait_for_row(self, seq: int) -> tuple[dict[str, Any], float] | None:
        deadline = time.monotonic() + RECORD_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            row = self.history.execute(self._row_query, (seq,)).fetchone()
            if row is not None:
                return row, time.time()
            time.sleep(POLL_SECONDS)
        return None


def stages_of(
    event: dict[str, str], *, started: float, recorded: float, e2e_ms: float
) -> dict[str, float | None]:
    """The stage durations (ms) of one cycle from its event; None where a time is missing."""

    def at(name: str) -> float:
        return float(event.get(name) or 0.0)

    def span(begin: float, end: float) -> float | None:
        return (end - begin) * 1000 if begin > 0 and end > 0 else None

    def number(name: str) -> float | None:
        return float(event[name]) if name in event else None

    stages = {
        "dispatch_ms": span(started, at("shards_started_at")),
        "shards_ms": span(at("shards_started_at"), at("shards_finished_at")),
        "fetch_total_ms": number("fetch_ms_total"),
        "pace_total_ms": number("pace_ms_total"),
        "join_ms": span(at("shards_finished_at"), at("merge_started_at")),
        "merge_ms": number("merge_ms"),
        "publish_ms": number("publish_ms"),
        "audit_ms": span(at("published_at"), recorded),
    }
    parts = [stages[name] for name in SEQUENTIAL_STAGES]
    known = [part for part in parts if part is not None]
    stages["rest_ms"] = e2e_ms - sum(known) if len(known) == len(parts) else None
    return stages


# --- running cycles -------------------------------------------------------------------------


def run_cycles(
    driver: Driver,
    order: Sequence[tuple[str, bool]],
    *,
    services: Services | None,
    label: str,
) -> list[Cycle]:
    """Run ``order``, each cycle a refresh period after the previous one started (or right after
    it was recorded, if it took longer)."""
    done: list[Cycle] = []
    next_start = time.monotonic()
    for index, (kind, warmup) in enumerate(order, 1):
        time.sleep(max(0.0, next_start - time.monotonic()))
        began = time.monotonic()
        if kind == "pipeline":
            cycle = driver.pipeline_cycle(warmup=warmup)
        else:
            assert services is not None
            cycle = driver.baseline_cycle(services, warmup=warmup)
        next_start = max(began + PERIOD_SECONDS, time.monotonic())
        done.append(cycle)
        _progress(label, index, len(order), cycle)
    return done


def _progress(label: str, index: int, total: int, cycle: Cycle) -> None:
    e2e = "—" if cycle.e2e_ms is None else f"{cycle.e2e_ms:,.0f} ms"
    cold = (
        ""
        if cycle.cold_start is None
        else f"cold start {cycle.cold_start / (cycle.targets or 1):.0%}"
    )
    print(
        f"  [{label}] {index:>3}/{total} {cycle.kind:<8} seq {cycle.seq or '—':>5} "
        f"{cycle.payload_kind or '':<5} {cycle.status:<10} {e2e:>9} {cold:<15}"
        + (" (warm-up)" if cycle.warmup else "")
        + (f"  {cycle.error}" if cycle.error and cycle.status != "published" else ""),
        file=sys.stderr,
        flush=True,
    )
