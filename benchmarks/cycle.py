"""End-to-end cycle benchmark: the real pipeline on 1,000, 10,000 and 100,000 targets.

    python benchmarks/cycle.py [--targets 1000,10000,100000] [--workers 2] [--cycles 20]
                               [--cycles-large 6] [--warmup 10] [--shard-size N] [--json FILE]
                               [--skip-scaling] [--skip-history] [--quick]
                               [--redis {plain,sentinel}]

It starts its own stack on loopback (benchmarks/_stack.py): redis-server (``--redis sentinel``:
a master, its replica and three Sentinels, every client finding the master through them, as
``pacing up --ha`` runs it), a throwaway PostgreSQL database, the simulator with N targets and
one ``celery worker`` whose prefork pool has ``--workers`` processes. There is no celery beat:
the benchmark sends ``pacing.refresh`` itself, one cycle at a time, each a refresh period (2 s)
after the previous one started, or as soon as the previous one is recorded if it took longer.
For each target count it measures:

* end-to-end latency: ``cycles.recorded_at - cycles.started_at`` in the history, from the tick
  (before the lease) to the commit of the audit row; median and p95 of the measured cycles
  that published (any other status is a failure and listed), after ``--warmup`` cycles of each
  kind; ``--cycles-large`` replaces ``--cycles`` from 100,000 targets on;
* where the time goes, from the cycle's event in the ``<prefix>:cycle_events`` stream: dispatch
  (tick to the first shard's start), shards (first shard's start to the last one's end, with the
  fetch and pace times summed over shards), join (last shard's end to the merge), merge (merge,
  delta, payload, gzip), publish (the POST), audit (publish done to the audit row committed) and
  rest (what the others leave: fence, staging the audit record, saving the snapshot);
* a single-process baseline: ``pacing.cycle.in_process.run_cycle_in_process`` in this process,
  the same functions one shard after another without a broker, measured the same way, in blocks
  that alternate with the pipeline's so both see the same machine load (the workers are idle
  then);
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

The code beside this entry point: ``_stack.py`` (the processes), ``_cycle_stack.py`` (one cycle
at a time on them), ``_measurements.py`` (one target count: latency, stages, baseline, bytes,
RSS, scaling), ``_history_bench.py`` (audit write, history query), ``_report.py`` (goals and
the printed report).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks._stack, tests/

from benchmarks._cycle_stack import Driver
from benchmarks._history_bench import audit_commit, history_hour
from benchmarks._measurements import run_target_count
from benchmarks._report import goals, print_report
from benchmarks._stack import (
    DEFAULT_POSTGRES_URL,
    PERIOD_SECONDS,
    POSTGRES_URL_VARIABLE,
    REDIS_MODES,
    BenchStack,
    ThrowawayDatabase,
    describe_machine,
    log_problems,
)
from pacing.history import create_history_engine
from pacing.history.migrate import upgrade_to_head
from pacing.runtime import settle_heap

REPO = Path(__file__).resolve().parents[1]


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
        "--redis",
        choices=REDIS_MODES,
        default="plain",
        help="one redis-server, or a master, replica and 3 Sentinels (benchmarks/sentinel.py "
        "compares the two)",
    )
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
        stack = BenchStack(
            workdir, database_url=database.url, shard_size=args.shard_size, redis_mode=args.redis
        )
        cleanup.callback(stack.close)
        stack.start()
        history = psycopg.connect(database.conninfo, autocommit=True, row_factory=dict_row)
        cleanup.callback(history.close)
        engine = create_history_engine(database.url)
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
            "redis": args.redis,
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
