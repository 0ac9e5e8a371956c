"""The cycle benchmark's measurements on one target count (``benchmarks/cycle.py`` runs them).

:func:`run_target_count` starts the target count from a cold cluster and runs the pipeline and
the single-process baseline in alternating blocks (:func:`schedule`), then reads peak RSS and the
counters and sums the cycles up (:func:`summarize`: e2e median and p95, stage medians);
:func:`run_scaling` times a pool of 1 against one of 2 processes; :func:`wire_bytes` weighs a full
payload as naive JSON against what was sent. The cycles themselves come from
``benchmarks/_cycle_stack.py``; the history database's figures from
``benchmarks/_history_bench.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from benchmarks._cycle_stack import STAGES, Cycle, Driver, run_cycles
from benchmarks._stack import PERIOD_SECONDS, BenchStack
from pacing.clients.engagement_payload import encode_payload
from pacing.cycle.merge import MergedCycle
from pacing.cycle.payload import build_payload, channel_sums
from pacing.cycle.split import effective_shard_size
from pacing.domain import Reason
from pacing.services import Services

BLOCKS_PER_KIND = 4  # pipeline and baseline cycles alternate in this many blocks each
BLOCK_WARMUP = 3  # warm-up cycles of a scaling block after the first (its worker is new)
SCALING_LATENCY_MS = 20  # added to every Stat Server request: the I/O a second process overlaps


def schedule(warmup: int, cycles: int, *, baseline: bool) -> list[tuple[str, bool]]:
    """(kind, warm-up?) in running order: the warm-ups, then blocks alternating the kinds."""
    kinds = ("pipeline", "baseline") if baseline else ("pipeline",)
    order = [(kind, True) for kind in kinds for _ in range(warmup)]
    block = max(1, math.ceil(cycles / BLOCKS_PER_KIND))
    for start in range(0, cycles, block):
        for kind in kinds:
            order += [(kind, False)] * min(block, cycles - start)
    return order


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
        result["ratio"] = ratio(
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


def ratio(numerator: float | None, denominator: float | None) -> float | None:
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
        "speedup": ratio(runs["1"]["e2e_median_ms"], runs["2"]["e2e_median_ms"]),
    }


# --- bytes on the wire ------------------------------------------------------------------------


def wire_bytes(history: psycopg.Connection[Any], cycles: Sequence[Cycle]) -> dict[str, Any]:
    """Naive JSON and gzip of a full payload, and the steady-state delta as sent.

    The full payload is rebuilt with :func:`pacing.cycle.payload.build_payload` from the
    decision rows the history holds for the run's last published full snapshot; its gzip is
    checked against the ``payload_bytes`` that cycle actually sent.
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
        "reduction_naive_over_delta": ratio(naive, result["delta_gzip_median_bytes"]),
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
