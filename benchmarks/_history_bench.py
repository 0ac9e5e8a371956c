"""The cycle benchmark's history-database figures (``benchmarks/cycle.py`` runs them last).

:func:`audit_commit` times ``record_cycle`` for a 10,000-row full snapshot of the run's real
decisions in the run's database; :func:`history_hour` times one target's hour
(``pacing.history.target_history``) in a second throwaway database filled with an hour of synthetic
cycles, changed in the share the pipeline showed (``benchmarks/_measurements.py``).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Engine

from benchmarks._measurements import median
from benchmarks._stack import NODE, PERIOD_SECONDS, ThrowawayDatabase
from pacing.history import (
    ChannelTotal,
    CycleRecord,
    DecisionRow,
    create_history_engine,
    record_cycle,
    synthetic,
    target_history,
)
from pacing.history.migrate import upgrade_to_head

AUDIT_ROWS = 10_000
AUDIT_RUNS = 7  # timed commits, after one untimed (connection and plan warm-up)
AUDIT_SEQ_BASE = 10**12  # far above any real seq; deleted again afterwards
HOUR_CYCLES = 1800  # one hour at the 2 s refresh period
HOUR_FULL_EVERY = 30
HISTORY_TARGETS = 7  # random targets whose hour is read …
HISTORY_REPEATS = 3  # … this many times each, after one untimed read


# --- the audit database -----------------------------------------------------------------------


def audit_commit(
    engine: Engine, history: psycopg.Connection[Any], *, source_seq: int
) -> dict[str, Any]:
    """Median time of ``record_cycle`` for a 10,000-row full snapshot of real decisions.

    The rows are those of full snapshot ``source_seq``; with fewer targets they are repeated
    under suffixed ids (``<id>-r<k>``) up to 10,000. Written under fresh seqs, deleted after.
    """
    decisions = [
        DecisionRow(**row)
        for row in history.execute(
            "SELECT target_id, proactive_budget, reactive_state, reason, agents_ready, "
            "agents_busy, interactions_waiting FROM decisions WHERE seq = %s ORDER BY target_id",
            (source_seq,),
        ).fetchall()
    ]
    channels = [
        ChannelTotal(**row)
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
            record_cycle(engine, record)
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
    rows: Sequence[DecisionRow],
    channels: Sequence[ChannelTotal],
) -> CycleRecord:
    now = datetime.now(UTC)
    return CycleRecord(
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
    """Median time of ``pacing.history.target_history`` over one hour of ``targets``-target cycles,
    in a second throwaway database filled by :func:`synthetic.fill_synthetic_hour`, with the
    share of targets changed per cycle that the pipeline showed."""
    if changed_fraction is None:
        return {"note": "no delta cycle was measured to take the changed fraction from"}
    database = ThrowawayDatabase.create(server_url, name)
    try:
        upgrade_to_head(database.url)
        engine = create_history_engine(database.url)
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
    steps = [len(target_history(engine, t, since=start, until=until)) for t in chosen]
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
