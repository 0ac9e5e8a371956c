"""End-to-end cycle benchmark: the real pipeline on 1,000, 10,000 and 100,000 targets.

    python benchmarks/cycle.py [--targets 1000,10000,100000] [--workers 2] [--cycles 20]
                               [--cycles-large 6] [--warmup 10] [--shard-size N] [--json FILE]
                               [--skip-scaling] [--skip-history] [--quick]

It starts its own stack on loopback (benchmarks/_stack.py): redis-server, a throwaway PostgreSQL
database, the simulator with N targets and one ``celery worker`` whose prefork pool has
``--workers`` processes. There is no celery beat: the benchmark sends ``pacing.refresh`` itself,
one cycle at a time, each a refresh period (2 s) after the previous one started, or as soon as
the previous one is recorded if it took longer. For each target count it measures:

* end-to-end latency: ``cycles.recorded_at - cycles.started_at`` in the history, from the tick
  (before the lease) to the commit of the audit row; median and p95 of the measured cycles
  that published (any other status is a failure and listed), after ``--warmup`` cycles of each
  kind; ``--cycles-large`` replaces ``--cycles`` from 100,000 targets on;
* where the time goes, from the cycle's event in the ``<prefix>:cycle_events`` stream: dispatch
  (tick to the first shard's start), shards (first shard's start to the last one's end, with the
  fetch and pace times summed over shards), join (last shard's end to the merge), merge (merge,
  delta, payload, gzip), publish (the POST), audit (publish done to the audit row committed) and
  rest (what the others leave: fence, staging the audit record, saving the snapshot);
* a single-process baseline: ``pacing.pipeline.run_cycle_in_process`` in this process, the same
  functions one shard after another without a broker, measured the same way, in blocks that
  alternate with the pipeline's so both see the same machine load (the workers are idle then);
* bytes per publish: a full payload as naive JSON (stdlib ``json.dumps``, no gzip), the full
  payload as sent (gzip) and the median delta as sent in steady state;
* peak RSS (VmHWM) of every worker process and of the simulator.

Each target count starts from a cold cluster (lease, per-target state and snapshot cleared; seq
and epoch kept, so history rows stay unique), so its targets begin in cold start (paced by the
cold-start rule with prior parameters) and leave it over minutes of simulated traffic: the work
per cycle is not yet the steady state's. The report shows the share still in cold start; a large
``--warmup`` gets closer to steady state.

Then the time to commit a 10,000-row full snapshot to PostgreSQL (``record_cycle``), the time
to read one target's history over an hour of 10,000-target cycles (a second throwaway database
filled by ``pacing.history.synthetic``), and the speed-up from 1 to 2 worker processes at 10,000
targets with 20 ms added to every Stat Server request (the two pool sizes alternate in blocks,
each on a fresh worker). Each figure is printed beside its goal with PASS or MISS; the JSON file
holds the same figures and every cycle. Worker and simulator logs stay in a temporary directory
whose path is printed. Exit status 0 whatever the figures (this is a measurement), 1 if the
stack failed, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import orjson
import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks._stack, tests/

from benchmarks._stack import (
    DEFAULT_POSTGRES_URL,
    NODE,
    PERIOD_SECONDS,
    POSTGRES_URL_VARIABLE,
    BenchStack,
    ThrowawayDatabase,
    describe_machine,
    log_problems,
)
from pacing import pipeline
from pacing.clients.engagement import encode_payload
from pacing.cycle import MergedCycle, build_payload, channel_sums, effective_shard_size
from pacing.domain import Reason
from pacing.history import repository, synthetic
from pacing.history.migrate import upgrade_to_head
from pacing.runtime import settle_heap
from pacing.services import Services

REPO = Path(__file__).resolve().parents[1]
BLOCKS_PER_KIND = 4  # pipeline and baseline cycles alternate in this many blocks each
BLOCK_WARMUP = 3  # warm-up cycles of a scaling block after the first (its worker is new)
#: A tick that found no lease, expired in the queue or hit an overrun leaves no event; give up
#: long after the cycle's deadline (2 periods), when its tasks have expired and run out.
EVENT_TIMEOUT_SECONDS = 25.0
#: The audit task retries with backoff (1 + 2 + 4 + 8 s) when the database refuses a write.
RECORD_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.005  # how often the history is asked whether the audit row is committed
AUDIT_ROWS = 10_000
AUDIT_RUNS = 7  # timed commits, after one untimed (connection and plan warm-up)
AUDIT_SEQ_BASE = 10**12  # far above any real seq; deleted again afterwards
HOUR_CYCLES = 1800  # one hour at the 2 s refresh period
HOUR_FULL_EVERY = 30
HISTORY_TARGETS = 7  # random targets whose hour is read …
HISTORY_REPEATS = 3  # … this many times each, after one untimed read
SCALING_LATENCY_MS = 20  # added to every Stat Server request: the I/O a second process overlaps
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
        record = pipeline.run_cycle_in_process(services, node=NODE)
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
            answer: Any = self.stack.redis.xread(
                {self.events_key: after}, count=1, block=max(1, int(left * 1000))
            )
            if not answer:
                return None
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


def schedule(warmup: int, cycles: int, *, baseline: bool) -> list[tuple[str, bool]]:
    """(kind, warm-up?) in running order: the warm-ups, then blocks alternating the kinds."""
    kinds = ("pipeline", "baseline") if baseline else ("pipeline",)
    order = [(kind, True) for kind in kinds for _ in range(warmup)]
    block = max(1, math.ceil(cycles / BLOCKS_PER_KIND))
    for start in range(0, cycles, block):
        for kind in kinds:
            order += [(kind, False)] * min(block, cycles - start)
    return order


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


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def p95(values: Sequence[float]) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    return float(np.percentile(values, 95)) if values else None


def summarize(cycles: Sequence[Cycle], kind: str) -> dict[str, Any]:
    measured = [c for c in cycles if c.kind == kind and not c.warmup]
    good = [c for c in measured if c.measured_ok]
    e2e = [c.e2e_ms for c in good if c.e2e_ms is not None]
    return {
        "measured": len(measured),
        "published": len(good),
        "failed": [
            {"seq": c.seq, "status": c.status, "error": c.error}
            for c in measured
            if not c.measured_ok
        ],
        "e2e_median_ms": median(e2e),
        "e2e_p95_ms": p95(e2e),
        "e2e_max_ms": max(e2e, default=None),
        "full_snapshots": sum(c.payload_kind == "full" for c in good),
        "cold_start_share": median(
            [c.cold_start / c.targets for c in good if c.cold_start is not None and c.targets]
        ),
        "recorded_at_observed": sum(c.recorded_at_source == "observed" for c in good),
        "stages_median_ms": {
            name: median([v for c in good if (v := c.stages.get(name)) is not None])
            for name in STAGES
        },
    }


# --- one target count -------------------------------------------------------------------------


def run_target_count(
    stack: BenchStack,
    driver: Driver,
    *,
    targets: int,
    workers: int,
    cycles: int,
    warmup: int,
    scaling_cycles: int | None,
) -> dict[str, Any]:
    """Pipeline and baseline cycles on ``targets`` targets (and the scaling runs, if asked)."""
    print(f"== {targets:,} targets", file=sys.stderr, flush=True)
    stack.reset_cluster_state()
    imported = stack.start_simulator(targets)
    services = Services(stack.settings)
    try:
        stack.start_workers(workers, label=f"{targets}-w{workers}")
        order = schedule(warmup, cycles, baseline=True)
        done = run_cycles(driver, order, services=services, label=f"{targets:,}")
        stack.wait_idle()
        rss = stack.peak_rss_mb()
        counters = stack.counters()
        result: dict[str, Any] = {
            "targets": targets,
            "imported": imported,
            "workers": workers,
            "shards": math.ceil(
                imported
                / effective_shard_size(
                    imported, stack.settings.shard_size, stack.settings.max_shards
                )
            ),
            "pipeline": summarize(done, "pipeline"),
            "baseline": summarize(done, "baseline"),
            "wire": wire_bytes(driver.history, done),
            "peak_rss_mb": rss,
            "counters": counters,
            "cycles": [dataclasses.asdict(c) for c in done],
        }
        result["ratio"] = _ratio(
            result["pipeline"]["e2e_median_ms"], result["baseline"]["e2e_median_ms"]
        )
        if scaling_cycles is not None:
            result["scaling"] = run_scaling(
                stack, driver, targets=targets, cycles=scaling_cycles, warmup=warmup
            )
        return result
    finally:
        services.close()
        stack.stop_workers()
        stack.stop_simulator()


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def run_scaling(
    stack: BenchStack, driver: Driver, *, targets: int, cycles: int, warmup: int
) -> dict[str, Any]:
    """The pipeline with 1 and 2 worker processes, with latency added to the Stat Server.

    The two pool sizes alternate in blocks (a fresh worker per block, each with a few warm-up
    cycles for its new processes), like the pipeline and the baseline: run one after the other,
    a machine that slows down between the halves would tilt the speed-up either way.
    """
    stack.control({"latency_ms": SCALING_LATENCY_MS})
    done: dict[int, list[Cycle]] = {1: [], 2: []}
    block = max(1, math.ceil(cycles / BLOCKS_PER_KIND))
    try:
        for index, start in enumerate(range(0, cycles, block)):
            for processes in (1, 2):
                label = f"{targets:,} scaling, {processes} process{'es' * (processes > 1)}"
                stack.start_workers(processes, label=f"{targets}-scaling-w{processes}-{index}")
                try:
                    done[processes] += run_cycles(
                        driver,
                        # the first block warms the cluster (operating points, estimators) too
                        schedule(
                            warmup if index == 0 else min(warmup, BLOCK_WARMUP),
                            min(block, cycles - start),
                            baseline=False,
                        ),
                        services=None,
                        label=f"{label}, block {index + 1}",
                    )
                    stack.wait_idle()
                finally:
                    stack.stop_workers()
    finally:
        stack.control({"latency_ms": 0})
    runs = {
        str(processes): {
            **summarize(cycles_run, "pipeline"),
            "cycles": [dataclasses.asdict(c) for c in cycles_run],
        }
        for processes, cycles_run in done.items()
    }
    return {
        "targets": targets,
        "latency_ms": SCALING_LATENCY_MS,
        "blocks": math.ceil(cycles / block),
        "runs": runs,
        "speedup": _ratio(runs["1"]["e2e_median_ms"], runs["2"]["e2e_median_ms"]),
    }


# --- bytes on the wire ------------------------------------------------------------------------


def wire_bytes(history: psycopg.Connection[Any], cycles: Sequence[Cycle]) -> dict[str, Any]:
    """Naive JSON and gzip of a full payload, and the steady-state delta as sent.

    The full payload is rebuilt with :func:`pacing.cycle.build_payload` from the decision rows
    the history holds for the run's last published full snapshot; its gzip is checked against
    the ``payload_bytes`` that cycle actually sent.
    """
    fulls = [c for c in cycles if c.status == "published" and c.payload_kind == "full"]
    deltas = [c for c in cycles if c.measured_ok and c.payload_kind == "delta"]
    result: dict[str, Any] = {
        "delta_cycles": len(deltas),
        "delta_gzip_median_bytes": median([c.payload_bytes or 0 for c in deltas]),
        "changed_median": median([c.changed or 0 for c in deltas]),
        "changed_fraction": median([(c.changed or 0) / (c.targets or 1) for c in deltas]),
    }
    if not fulls:
        return result
    full = fulls[-1]
    assert full.seq is not None
    payload = full_payload(history, full.seq)
    naive = len(json.dumps(payload).encode())
    result |= {
        "full_seq": full.seq,
        "full_seq_was_warmup": full.warmup,
        "naive_json_bytes": naive,
        "full_gzip_bytes": full.payload_bytes,
        "full_gzip_rebuilt_bytes": len(encode_payload(payload)),
        "reduction_naive_over_delta": _ratio(naive, result["delta_gzip_median_bytes"]),
    }
    return result


def full_payload(history: psycopg.Connection[Any], seq: int) -> dict[str, Any]:
    """The full ``POST /v1/pacing`` body of cycle ``seq``, from its decision rows."""
    cycle = history.execute(
        "SELECT epoch, published_at FROM cycles WHERE seq = %s", (seq,)
    ).fetchone()
    rows = history.execute(
        "SELECT d.target_id, t.channel, d.proactive_budget, d.reactive_state, d.reason, "
        "d.agents_ready, d.agents_busy, d.interactions_waiting "
        "FROM decisions d JOIN targets t USING (target_id) WHERE d.seq = %s "
        "ORDER BY d.target_id",
        (seq,),
    ).fetchall()
    assert cycle is not None
    merged = MergedCycle(
        ids=[r["target_id"] for r in rows],
        channel=[r["channel"] for r in rows],
        budget=np.array([r["proactive_budget"] for r in rows], dtype=np.int64),
        reactive=np.array([r["reactive_state"] for r in rows], dtype=np.float64),
        reason=np.array([Reason.from_label(r["reason"]) for r in rows], dtype=np.int8),
        ready=[r["agents_ready"] for r in rows],
        busy=[r["agents_busy"] for r in rows],
        waiting=[r["interactions_waiting"] for r in rows],
        fetch_ms=0.0,
        pace_ms=0.0,
    )
    return build_payload(
        merged,
        seq=seq,
        epoch=cycle["epoch"],
        generated_at=cycle["published_at"].timestamp(),
        refresh_period_seconds=PERIOD_SECONDS,
        channels=channel_sums(merged),
        base_seq=None,
        include=None,
    )


# --- the audit database -----------------------------------------------------------------------


def audit_commit(
    engine: Engine, history: psycopg.Connection[Any], *, source_seq: int
) -> dict[str, Any]:
    """Median time of ``record_cycle`` for a 10,000-row full snapshot of real decisions.

    The rows are those of full snapshot ``source_seq``; with fewer targets they are repeated
    under suffixed ids (``<id>-r<k>``) up to 10,000. Written under fresh seqs, deleted after.
    """
    decisions = [
        repository.DecisionRow(**row)
        for row in history.execute(
            "SELECT target_id, proactive_budget, reactive_state, reason, agents_ready, "
            "agents_busy, interactions_waiting FROM decisions WHERE seq = %s ORDER BY target_id",
            (source_seq,),
        ).fetchall()
    ]
    channels = [
        repository.ChannelTotal(**row)
        for row in history.execute(
            "SELECT channel, proactive_budget, ready_capacity, target_count "
            "FROM channel_totals WHERE seq = %s",
            (source_seq,),
        ).fetchall()
    ]
    rows = decisions[:AUDIT_ROWS]
    copy = 0
    while len(rows) < AUDIT_ROWS:
        copy += 1
        rows += [
            dataclasses.replace(row, target_id=f"{row.target_id}-r{copy}")
            for row in decisions[: AUDIT_ROWS - len(rows)]
        ]
    timings: list[float] = []
    try:
        for run in range(AUDIT_RUNS + 1):
            record = _snapshot_record(AUDIT_SEQ_BASE + run, rows, channels)
            began = time.perf_counter()
            repository.record_cycle(engine, record)
            timings.append((time.perf_counter() - began) * 1000)
    finally:
        with history.transaction():
            for table in ("decisions", "channel_totals", "cycles"):
                history.execute(f"DELETE FROM {table} WHERE seq >= %s", (AUDIT_SEQ_BASE,))
    return {
        "rows": AUDIT_ROWS,
        "source_seq": source_seq,
        "source_rows": len(decisions),
        "runs_ms": timings[1:],
        "median_ms": median(timings[1:]),
    }


def _snapshot_record(
    seq: int,
    rows: Sequence[repository.DecisionRow],
    channels: Sequence[repository.ChannelTotal],
) -> repository.CycleRecord:
    now = datetime.now(UTC)
    return repository.CycleRecord(
        seq=seq,
        epoch=1,
        node=NODE,
        started_at=now,
        published_at=now,
        fetch_ms=None,
        pace_ms=None,
        merge_ms=None,
        publish_ms=None,
        target_count=len(rows),
        changed_count=len(rows),
        error_count=0,
        payload_kind="full",
        payload_bytes=0,
        publish_status="published",
        error=None,
        decisions=rows,
        channels=channels,
    )


def history_hour(
    server_url: str, *, name: str, targets: int, changed_fraction: float | None
) -> dict[str, Any]:
    """Median time of ``repository.target_history`` over one hour of ``targets``-target cycles,
    in a second throwaway database filled by :func:`synthetic.fill_synthetic_hour`, with the
    share of targets changed per cycle that the pipeline showed."""
    if changed_fraction is None:
        return {"note": "no delta cycle was measured to take the changed fraction from"}
    database = ThrowawayDatabase.create(server_url, name)
    try:
        upgrade_to_head(database.url)
        engine = repository.create_history_engine(database.url)
        try:
            return _time_history_hour(engine, targets=targets, changed_fraction=changed_fraction)
        finally:
            engine.dispose()
    finally:
        database.drop()


def _time_history_hour(engine: Engine, *, targets: int, changed_fraction: float) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    until = start + timedelta(seconds=HOUR_CYCLES * PERIOD_SECONDS)
    print(
        f"== history: filling one hour ({HOUR_CYCLES} cycles of {targets:,} targets, "
        f"{changed_fraction:.1%} changed per cycle)",
        file=sys.stderr,
        flush=True,
    )
    began = time.perf_counter()
    decision_rows = synthetic.fill_synthetic_hour(
        engine,
        targets=targets,
        cycles=HOUR_CYCLES,
        period_seconds=PERIOD_SECONDS,
        changed_fraction=changed_fraction,
        full_every=HOUR_FULL_EVERY,
        start=start,
    )
    fill_seconds = time.perf_counter() - began
    ids = [target_id for target_id, _ in synthetic.synthetic_target_ids(targets)]
    chosen = random.Random(7).sample(ids, HISTORY_TARGETS)
    timings = synthetic.time_target_history(engine, chosen, start, until, repeats=HISTORY_REPEATS)
    # untimed: how many steps one hour holds, so the reader sees the query does real work
    steps = [len(repository.target_history(engine, t, since=start, until=until)) for t in chosen]
    return {
        "targets": targets,
        "cycles": HOUR_CYCLES,
        "changed_fraction": changed_fraction,
        "decision_rows": decision_rows,
        "fill_seconds": round(fill_seconds, 1),
        "target_ids": chosen,
        "queries_ms": timings,
        "steps_median": median(steps),
        "median_ms": median(timings),
    }


# --- goals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    name: str
    value: float | None
    limit: float
    unit: str
    ran: bool  # measured: no value then means no cycle published (a MISS), not "n/a"
    at_least: bool = False  # the value must reach the limit instead of staying under it

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "MISS" if self.ran else "n/a"
        met = self.value >= self.limit if self.at_least else self.value <= self.limit
        return "PASS" if met else "MISS"

    def as_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "verdict": self.verdict}


def goals(report: dict[str, Any]) -> dict[str, Goal]:
    by_count = {r["targets"]: r for r in report["target_counts"]}
    ten, hundred = by_count.get(10_000, {}), by_count.get(100_000, {})
    ten_median = ten.get("pipeline", {}).get("e2e_median_ms")
    hundred_median = hundred.get("pipeline", {}).get("e2e_median_ms")
    scaling = ten.get("scaling", {})
    audit, hour = report.get("audit") or {}, report.get("history") or {}
    worker_rss = [mb for name, mb in ten.get("peak_rss_mb", {}).items() if name != "simulator"]
    at_10k, at_100k = bool(ten), bool(hundred)
    return {
        "e2e_median_10k": Goal("10k e2e median ≤ 300 ms", ten_median, 300, "ms", at_10k),
        "e2e_p95_10k": Goal(
            "10k e2e p95 ≤ 500 ms", ten.get("pipeline", {}).get("e2e_p95_ms"), 500, "ms", at_10k
        ),
        "ratio_10k": Goal("10k pipeline / baseline ≤ 1.5", ten.get("ratio"), 1.5, "×", at_10k),
        "e2e_median_100k": Goal("100k e2e median ≤ 2.5 s", hundred_median, 2500, "ms", at_100k),
        "growth_100k": Goal(
            "100k median ≤ 10.5 × 10k median",
            _ratio(hundred_median, ten_median),
            10.5,
            "×",
            at_10k and at_100k,
        ),
        "delta_10k": Goal(
            "10k naive JSON / delta gzip ≥ 20",
            ten.get("wire", {}).get("reduction_naive_over_delta"),
            20,
            "×",
            at_10k,
            at_least=True,
        ),
        "audit_10k": Goal(
            "full 10k snapshot commit ≤ 100 ms", audit.get("median_ms"), 100, "ms", bool(audit)
        ),
        "history_hour": Goal(
            "one target's hour ≤ 20 ms",
            hour.get("median_ms") if hour.get("targets") == 10_000 else None,
            20,
            "ms",
            hour.get("targets") == 10_000,
        ),
        "rss_10k": Goal(
            "10k peak RSS per worker process ≤ 200 MB",
            None if None in worker_rss else max(worker_rss, default=None),
            200,
            "MB",
            at_10k,
        ),
        "scaling_10k": Goal(
            "10k speed-up 1 → 2 processes ≥ 1.6",
            scaling.get("speedup"),
            1.6,
            "×",
            bool(scaling),
            at_least=True,
        ),
    }


# --- the report -------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if abs(value) < 10 else f"{value:,.0f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _heading(text: str) -> None:
    print()
    _say(text)


def _say(text: str, *, indent: str = "") -> None:
    print(textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + "  "))


def _goal_text(goal: Goal) -> str:
    return f"{goal.verdict} (goal: {goal.name})"


def _marked(text: str, goal: Goal | None) -> str:
    """A table cell with its goal's verdict beside it, when a goal applies to it."""
    return text if goal is None or not goal.ran else f"{text} {goal.verdict}"


def print_report(report: dict[str, Any]) -> None:
    machine, run, results = report["machine"], report["run"], report["target_counts"]
    met = goals(report)
    print(
        f"\nMachine   {machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB "
        f"RAM, Linux {machine['kernel']}\n"
        f"Software  Python {machine['python']}, PostgreSQL {machine['postgresql']}, "
        f"Redis {machine['redis']}, Celery {machine['celery']}\n"
        f"Code      {machine['code']}\n"
        f"Load      load average (1, 5, 15 min) {_load(machine['load_average_at_start'])} at the "
        f"start, {_load(machine['load_average_at_end'])} at the end\n"
        f"Run       {run['workers']} worker processes, shard size {run['shard_size']} (at most "
        f"{run.get('max_shards', '-')} shards), refresh "
        f"period {PERIOD_SECONDS:g} s, {run['warmup']} warm-up cycles of each kind discarded\n"
        f"Logs      {report['logs']}"
    )
    _print_latency(results, met)
    _print_stages(results)
    _print_wire(results, met)
    _print_audit(report, met)
    _print_rss(results, met)
    _print_scaling(results, met)
    _print_problems(results, report["log_problems"])
    verdicts = [g.verdict for g in met.values()]
    print(
        f"\nGoals: {verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS, "
        f"{verdicts.count('n/a')} n/a"
    )
    for goal in met.values():
        print(f"  {goal.verdict:<4}  {goal.name}: {_goal_value(goal)}")


def _load(averages: Sequence[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in averages)


def _goal_value(goal: Goal) -> str:
    if goal.value is None:
        return "no figure: no cycle published" if goal.ran else "not measured"
    number = f"{goal.value:,.2f}" if goal.value < 100 else f"{goal.value:,.0f}"
    return f"{number}{goal.unit}" if goal.unit == "×" else f"{number} {goal.unit}"


def _print_latency(results: Sequence[dict[str, Any]], met: dict[str, Goal]) -> None:
    _heading(
        "End-to-end latency, ms: cycles.recorded_at − cycles.started_at, from the tick (before "
        "the lease) to the audit row's commit; median and p95 of the measured cycles that "
        "published. Baseline: the same cycle in this process, one shard after another "
        "(run_cycle_in_process), in blocks alternating with the pipeline's; ratio = pipeline "
        "median / baseline median. cold start: median share of the targets still paced with "
        "prior parameters (reason cold_start, another rule); until it is near 0 the work per "
        "cycle is not yet the steady state's."
    )
    at = {
        10_000: (met["e2e_median_10k"], met["e2e_p95_10k"], met["ratio_10k"]),
        100_000: (met["e2e_median_100k"], None, None),
    }
    rows = []
    for r in results:
        p, b = r["pipeline"], r["baseline"]
        median_goal, p95_goal, ratio_goal = at.get(r["targets"], (None, None, None))
        rows.append(
            [
                f"{r['targets']:,}",
                str(r["shards"]),
                _share(p["cold_start_share"]),
                f"{p['published']}/{p['measured']}",
                _marked(_ms(p["e2e_median_ms"]), median_goal),
                _marked(_ms(p["e2e_p95_ms"]), p95_goal),
                f"{b['published']}/{b['measured']}",
                _ms(b["e2e_median_ms"]),
                _ms(b["e2e_p95_ms"]),
                _marked("—" if r["ratio"] is None else f"{r['ratio']:.2f}", ratio_goal),
            ]
        )
    print(
        _table(
            [
                "targets",
                "shards",
                "cold start",
                "published",
                "median",
                "p95",
                "baseline published",
                "median",
                "p95",
                "ratio",
            ],
            rows,
        )
    )
    growth = met["growth_100k"]
    measured = "" if growth.value is None else f" (here {_goal_value(growth)}: {growth.verdict})"
    _say(
        "goals: at 10,000 targets (with 2 worker processes) median ≤ 300 ms, p95 ≤ 500 ms, "
        f"ratio ≤ 1.5; at 100,000 median ≤ 2,500 ms and ≤ 10.5 × the 10,000 median{measured}.",
        indent="  ",
    )
    observed = sum(r[k]["recorded_at_observed"] for r in results for k in ("pipeline", "baseline"))
    if observed:
        _say(
            f"note: {observed} cycles had no cycles.recorded_at; their end is when the row was "
            f"first seen (pipeline, polled every {POLL_SECONDS * 1000:g} ms) or when "
            "run_cycle_in_process returned (baseline).",
            indent="  ",
        )


def _print_stages(results: Sequence[dict[str, Any]]) -> None:
    _heading(
        "Stages, median ms, from each cycle's entry in the cycle_events stream (medians per "
        "stage, so they do not add up to the e2e median). dispatch: tick → first shard starts; "
        "shards: first shard starts → last one ends, with Σ fetch and Σ pace summed over the "
        "shards; join: last shard ends → merge starts; merge: merge, delta, payload, gzip; "
        "publish: the POST; audit: publish done → audit row committed; rest: e2e minus those "
        "(fence, audit staging, snapshot)."
    )
    rows = []
    for r in results:
        for kind in ("pipeline", "baseline"):
            s = r[kind]["stages_median_ms"]
            rows.append(
                [
                    f"{r['targets']:,} {kind}",
                    _ms(s["dispatch_ms"]),
                    _ms(s["shards_ms"]),
                    _ms(s["fetch_total_ms"]),
                    _ms(s["pace_total_ms"]),
                    _ms(s["join_ms"]),
                    _ms(s["merge_ms"]),
                    _ms(s["publish_ms"]),
                    _ms(s["audit_ms"]),
                    _ms(s["rest_ms"]),
                ]
            )
    print(
        _table(
            [
                "targets",
                "dispatch",
                "shards",
                "Σ fetch",
                "Σ pace",
                "join",
                "merge",
                "publish",
                "audit",
                "rest",
            ],
            rows,
        )
    )


def _print_wire(results: Sequence[dict[str, Any]], met: dict[str, Goal]) -> None:
    _heading(
        "Bytes per publish. naive JSON: a full payload (every target) as stdlib json.dumps, no "
        "gzip, rebuilt with build_payload from the history rows of the run's last full "
        "snapshot; full gzip: what that snapshot sent (payload_bytes); delta gzip: median "
        "payload_bytes of the measured delta cycles (steady state), carrying the changed targets."
    )
    rows = []
    for r in results:
        w = r["wire"]
        rows.append(
            [
                f"{r['targets']:,}",
                _full_source(w),
                _bytes(w.get("naive_json_bytes")),
                _bytes(w.get("full_gzip_bytes")),
                _bytes(w.get("delta_gzip_median_bytes")),
                "—" if w.get("changed_median") is None else f"{w['changed_median']:,.0f}",
                _marked(
                    "—"
                    if w.get("reduction_naive_over_delta") is None
                    else f"{w['reduction_naive_over_delta']:.1f}×",
                    met["delta_10k"] if r["targets"] == 10_000 else None,
                ),
            ]
        )
    print(
        _table(
            [
                "targets",
                "full snapshot",
                "naive JSON",
                "full gzip",
                "delta gzip",
                "changed",
                "naive/delta",
            ],
            rows,
        )
    )
    _say("goal: at 10,000 targets delta gzip ≤ 1/20 of naive JSON (naive/delta ≥ 20).", indent="  ")
    for r in results:
        w = r["wire"]
        sent, rebuilt = w.get("full_gzip_bytes"), w.get("full_gzip_rebuilt_bytes")
        if sent and rebuilt and abs(sent - rebuilt) > 0.02 * sent:
            _say(
                f"note: at {r['targets']:,} the full payload rebuilt from the history gzips to "
                f"{rebuilt:,} bytes, the cycle sent {sent:,}: the naive figure may be off.",
                indent="  ",
            )


def _full_source(wire: dict[str, Any]) -> str:
    if "full_seq" not in wire:
        return "none"
    return f"seq {wire['full_seq']}" + (" (warm-up)" if wire["full_seq_was_warmup"] else "")


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _bytes(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} B"


def _print_audit(report: dict[str, Any], met: dict[str, Goal]) -> None:
    audit, hour = report.get("audit"), report.get("history")
    _heading("History database (PostgreSQL)")
    if audit:
        _say(
            f"commit of a full {audit['rows']:,}-row snapshot (record_cycle with the decisions "
            f"of full cycle {audit['source_seq']}, {audit['source_rows']:,} of them distinct): "
            f"median {_ms(audit['median_ms'])} ms of {len(audit['runs_ms'])}  "
            f"{_goal_text(met['audit_10k'])}",
            indent="  ",
        )
    else:
        print("  commit of a full snapshot: not measured (no published full cycle)")
    if hour is None:
        print("  one target's hour: skipped (--skip-history)")
    elif "note" in hour:
        print(f"  one target's hour: not measured: {hour['note']}")
    else:
        _say(
            f"one target's hour (target_history over {hour['cycles']:,} synthetic cycles of "
            f"{hour['targets']:,} targets, {hour['changed_fraction']:.1%} changed per cycle as "
            f"measured, a full snapshot every {HOUR_FULL_EVERY}; {hour['decision_rows']:,} "
            f"decision rows, filled in {hour['fill_seconds']} s): median "
            f"{_ms(hour['median_ms'])} ms of {len(hour['queries_ms'])} reads "
            f"({HISTORY_TARGETS} random targets × {HISTORY_REPEATS}), "
            f"{hour['steps_median']:.0f} steps each  {_goal_text(met['history_hour'])}",
            indent="  ",
        )


def _print_rss(results: Sequence[dict[str, Any]], met: dict[str, Goal]) -> None:
    _heading("Peak RSS (VmHWM), MB, read at the end of each target count's run")
    names = list(dict.fromkeys(name for r in results for name in r["peak_rss_mb"]))
    rows = [[f"{r['targets']:,}"] + [_ms(r["peak_rss_mb"].get(n)) for n in names] for r in results]
    print(_table(["targets", *names], rows))
    rss = met["rss_10k"]
    if rss.ran:
        _say(
            f"largest worker process at 10,000 targets: {_goal_value(rss)}  {_goal_text(rss)}",
            indent="  ",
        )


def _print_scaling(results: Sequence[dict[str, Any]], met: dict[str, Goal]) -> None:
    scaled = [r["scaling"] for r in results if "scaling" in r]
    if not scaled:
        _heading("Scaling: skipped")
        return
    s = scaled[0]
    _heading(
        f"Scaling at {s['targets']:,} targets with {s['latency_ms']} ms added to every Stat "
        "Server request: pipeline e2e, ms, with a pool of 1 and of 2 processes, alternating in "
        f"{s.get('blocks', 1)} blocks (a fresh worker each); speed-up = median(1) / median(2)."
    )
    rows = [
        [
            f"{processes} process{'es' * (processes != '1')}",
            f"{run['published']}/{run['measured']}",
            _ms(run["e2e_median_ms"]),
            _ms(run["e2e_p95_ms"]),
            _ms(run["stages_median_ms"]["shards_ms"]),
        ]
        for processes, run in s["runs"].items()
    ]
    print(_table(["pool", "published", "median", "p95", "shards"], rows))
    speedup = "—" if s["speedup"] is None else f"{s['speedup']:.2f}"
    goal = _goal_text(met["scaling_10k"]) if s["targets"] == 10_000 else "(goal is for 10,000)"
    print(f"  speed-up: {speedup}  {goal}")


def _print_problems(results: Sequence[dict[str, Any]], problems: dict[str, Any]) -> None:
    runs = [(r["targets"], kind, r[kind]) for r in results for kind in ("pipeline", "baseline")]
    runs += [
        (r["targets"], f"scaling, {processes} process{'es' * (processes != '1')}", run)
        for r in results
        for processes, run in r.get("scaling", {}).get("runs", {}).items()
    ]
    failed: dict[tuple[int, str, str, str], list[str]] = {}
    for targets, kind, run in runs:
        for f in run["failed"]:
            key = (targets, kind, f["status"], f["error"] or "")
            failed.setdefault(key, []).append(str(f["seq"] or "—"))
    total = sum(len(seqs) for seqs in failed.values())
    _heading(f"Failed cycles (publish_status other than published): {total or 'none'}")
    for (targets, kind, status, error), seqs in failed.items():
        _say(
            f"{targets:,} {kind}: {len(seqs)} × {status} (seq {', '.join(seqs)}): {error}",
            indent="  ",
        )
    print(
        "Worker and simulator log lines with WARNING, ERROR, CRITICAL or Traceback: "
        + ("none" if not problems else "")
    )
    for name, found in problems.items():
        print(f"  {name}: {found['lines']} lines, first: {found['first'][0][:160]}")


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="1000,10000,100000", help="comma-separated counts")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the pool")
    parser.add_argument("--cycles", type=int, default=20, help="measured cycles of each kind")
    parser.add_argument(
        "--cycles-large", type=int, default=6, help="measured cycles at 100,000 targets and more"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="warm-up cycles of each kind (estimators and the operating-point cache settle)",
    )
    parser.add_argument("--shard-size", type=int, help="override PACING_SHARD_SIZE")
    parser.add_argument("--json", type=Path, help="write the report here (default: var/bench/)")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-history", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000 targets, 4 cycles, 2 warm-up"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.targets, args.cycles, args.cycles_large, args.warmup = "1000", 4, 4, 2
    args.hour_targets = 1_000 if args.quick else 10_000  # the goal is for 10,000
    try:
        args.target_counts = [int(n.replace("_", "")) for n in args.targets.split(",") if n]
    except ValueError:
        parser.error(f"--targets must be comma-separated integers, got {args.targets!r}")
    if min(args.cycles, args.cycles_large, args.workers) < 1 or args.warmup < 0:
        parser.error("--cycles, --cycles-large and --workers must be at least 1, --warmup 0")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # the baseline runs the pipeline's code in this process: its warnings (a fenced or expired
    # publish, say) go to stderr beside the progress lines, named as such
    logging.basicConfig(
        level=logging.WARNING, format="  this process: %(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM unwinds like Ctrl-C: every process and database of the run is stopped or dropped
    signal.signal(signal.SIGTERM, _terminate)
    # the baseline runs as the workers do, with their garbage-collector settings
    settle_heap()
    workdir = Path(tempfile.mkdtemp(prefix="pacing-bench-"))
    print(f"logs: {workdir / 'logs'}", file=sys.stderr, flush=True)
    try:
        report = run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; the stack was stopped", file=sys.stderr)
        return 130
    target = args.json or REPO / "var" / "bench" / f"cycle-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print_report(report)
    print(f"\nJSON: {target}")
    return 0


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server_url = os.environ.get(POSTGRES_URL_VARIABLE, DEFAULT_POSTGRES_URL)
    name = f"pacing_bench_{secrets.token_hex(4)}"
    largest = max(args.target_counts)
    scaling_at = 10_000 if 10_000 in args.target_counts else largest
    with contextlib.ExitStack() as cleanup:
        database = ThrowawayDatabase.create(server_url, name)
        cleanup.callback(database.drop)
        upgrade_to_head(database.url)
        stack = BenchStack(workdir, database_url=database.url, shard_size=args.shard_size)
        cleanup.callback(stack.close)
        stack.start()
        history = psycopg.connect(database.conninfo, autocommit=True, row_factory=dict_row)
        cleanup.callback(history.close)
        engine = repository.create_history_engine(database.url)
        cleanup.callback(engine.dispose)
        machine = describe_machine(stack, history)
        driver = Driver(stack, history)
        results = [
            run_target_count(
                stack,
                driver,
                targets=count,
                workers=args.workers,
                cycles=args.cycles_large if count >= 100_000 else args.cycles,
                warmup=args.warmup,
                scaling_cycles=None if args.skip_scaling or count != scaling_at else args.cycles,
            )
            for count in args.target_counts
        ]
        wire = _reference_run(results)["wire"]
        audit = (
            audit_commit(engine, history, source_seq=wire["full_seq"])
            if "full_seq" in wire
            else None
        )
        hour = None
        if not args.skip_history:
            hour = history_hour(
                server_url,
                name=f"{name}_hour",
                targets=args.hour_targets,
                changed_fraction=wire["changed_fraction"],
            )
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report: dict[str, Any] = {
        "machine": machine,
        "run": {
            "workers": args.workers,
            "shard_size": stack.settings.shard_size,
            "max_shards": stack.settings.max_shards,
            "refresh_period_seconds": PERIOD_SECONDS,
            "warmup": args.warmup,
            "cycles": args.cycles,
            "cycles_large": args.cycles_large,
            "quick": args.quick,
        },
        "logs": str(stack.logs),
        "target_counts": results,
        "audit": audit,
        "history": hour,
        "log_problems": log_problems(stack.logs),
    }
    report["goals"] = {name: goal.as_json() for name, goal in goals(report).items()}
    return report


def _reference_run(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run whose decisions and changed fraction feed the history figures: 10,000 targets,
    else the largest."""
    by_count = {r["targets"]: r for r in results}
    return by_count.get(10_000) or by_count[max(by_count)]


if __name__ == "__main__":
    raise SystemExit(main())
