"""Live-quality benchmark: the processes of ``pacing up`` against the simulator, minute by minute.

    python benchmarks/live.py [--targets 1000] [--minutes 20] [--nodes 2] [--seed 7]
                              [--wipe-at MINUTE] [--minute-seconds 60] [--json FILE]

It starts what ``pacing up`` starts (``pacing.cli.localstack.start_local_stack``): a redis-server of
its own on a free loopback port without persistence (so Redis starts empty), a SQLite history in
a temporary directory, the simulator with the world ``pacing up`` builds (``--targets``,
``--seed``), ``--nodes`` nodes of a ``celery worker`` and a ``celery beat``, Flower and the
metrics exporter; every other setting is the embedded default (2 s refresh, …) and nothing of
the caller's ``PACING_*`` environment is used.

Reading 0 of ``GET /sim/metrics?per_target=1`` is taken as soon as the processes are started,
before the nodes have published; reading k at the simulator's time (its ``generated_at``)
start + k minutes: each is requested just after that time, and the reading's own time is what
counts, so a late reading does not shift the next one. Between readings, ``pacing.quality``
gives per size class (staffed slots) the invitations, accepted, abandoned, abandonment against
each target's goal (the history's configuration: 3 % for every target ``pacing up`` imports)
and occupancy: per minute, per 5-minute window (1–5, 6–10, …) and over minutes 11 to the end;
then issue 16's bounds:

* ceiling: in every 5-minute window, abandonment ≤ goal + 1 point for ``all`` and ``10+``
  (groups of 10 staffed slots and more);
* settled: in the windows after the tenth minute, ``10+`` within goal ± 0.5 point with an
  occupancy of 90 % or more.

``--wipe-at M`` restarts the redis-server right after reading M, without persistence: whatever
it held is lost (lease, seq, per-target state, feedback counters, queued tasks), as in a Redis
restart without persistence. Every target starts cold again, so the ten minutes after the wipe
are reported on their own and held to a cold start's bounds (``pacing.quality.run_report``):
the ceiling in both 5-minute windows, the settled band from the tenth minute after the wipe.

Beside the figures, per minute: the publishes the simulator accepted, the cycles of the
``cycle_events`` stream (status, latency), overruns, targets in cold start in the last cycle,
visitors waiting and invitations in flight, the load average. Logs stay in a temporary
directory whose path is printed, with a count of the WARNING/ERROR lines of the nodes, the
simulator and the exporter. ``--json`` writes everything, the readings too (per target, the
fields ``pacing.quality`` reads), so other classes can be computed later. ``--minute-seconds``
shortens the reporting period (the test runs the whole machinery in seconds). Exit status 0
whatever the figures (this is a measurement), 1 if the stack failed, 130 after Ctrl-C.

The code beside this entry point: ``_live_stack.py`` (the processes of ``pacing up``, the wipe),
``_live_measurements.py`` (readings and per-minute notes), ``_live_report.py`` (the printed
report).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks._stack, tests/

from benchmarks._live_measurements import first_publish, measure, trimmed
from benchmarks._live_report import LOG_PATTERNS, log_summary, notes_table, text_report
from benchmarks._live_stack import start_stack, target_goals
from benchmarks._stack import code_version, log_problems
from pacing import quality
from pacing.simulator import SimulatorConfig

_FLOWER_PASSWORD = re.compile(r"(password )\S+?(?=\))")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SimulatorConfig()
    parser.add_argument("--targets", type=int, default=defaults.targets, help="like pacing up")
    parser.add_argument("--minutes", type=int, default=20, help="minutes measured")
    parser.add_argument("--nodes", type=int, default=2, help="worker + beat pairs, like pacing up")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the simulator's world")
    parser.add_argument("--wipe-at", type=int, help="restart Redis, data lost, after this minute")
    parser.add_argument(
        "--minute-seconds",
        type=float,
        default=60.0,
        help="length of a reporting period in seconds (shorter for tests)",
    )
    parser.add_argument("--json", type=Path, help="write the whole report here")
    args = parser.parse_args(argv)
    if args.targets < 1 or args.minutes < 1 or not 1 <= args.nodes <= 8:
        parser.error("need --targets >= 1, --minutes >= 1 and 1 <= --nodes <= 8")
    if args.minute_seconds < 1:
        parser.error("--minute-seconds must be at least 1")
    if args.wipe_at is not None and not 1 <= args.wipe_at < args.minutes:
        parser.error("--wipe-at must be a minute after the first and before the last")
    return args


# --- main -------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], str]:
    echo = _echo
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    code = code_version()  # what the processes load now; the tree may change during the run
    live = start_stack(workdir, args, echo)
    processes_left: int | None = None
    try:
        goals = target_goals(live.settings)
        echo(f"Measuring {args.minutes} minutes of {args.minute_seconds:g} s; Ctrl-C stops.")
        measurement = measure(live, args, goals, echo)
        start = float(measurement.readings[0]["generated_at"])
        first_after, publishes = first_publish(live, start)
        load_at_end = [round(x, 2) for x in os.getloadavg()]
    finally:
        processes_left = live.stop()
    logs = workdir / "logs"
    header = {
        "code": code,
        "started": datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds"),
        "start_generated_at": start,
        "first_publish_after_seconds": first_after,
        "publishes_accepted": publishes,
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_at_end,
        "cores": os.cpu_count(),
    }
    figures = quality.run_report(measurement.readings, goals, wipe_at=args.wipe_at)
    text = "\n\n".join(
        [
            text_report(args, header, figures),
            notes_table(measurement),
            log_summary(logs),
            f"Logs: {logs}\nProcesses left after stopping: {processes_left}",
        ]
    )
    report = {
        "config": {
            "targets": args.targets,
            "minutes": args.minutes,
            "nodes": args.nodes,
            "seed": args.seed,
            "minute_seconds": args.minute_seconds,
            "wipe_at": args.wipe_at,
            "refresh_period_seconds": live.settings.refresh_period_seconds,
        },
        **header,
        "goals": sorted(set(goals.values())),
        **quality.run_report_json(figures),
        "wipe": measurement.wipe,
        "reading_offsets_seconds": measurement.offsets,
        "notes": measurement.notes,
        "log_problems": log_problems(logs, LOG_PATTERNS),
        "logs": str(logs),
        "processes_left": processes_left,
        "readings": [trimmed(reading) for reading in measurement.readings],
    }
    return report, text


def _echo(line: str) -> None:
    # Flower's password of this run has no business in a report that is kept
    print(_FLOWER_PASSWORD.sub(r"\1…", line), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="  this process: %(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM unwinds like Ctrl-C: every process of the stack is stopped; and Ctrl-C works
    # when started in the background too, where the shell starts us with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="pacing-live-"))
    print(f"Logs: {workdir / 'logs'}", flush=True)
    try:
        report, text = run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; the stack was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"failed: {error}", file=sys.stderr)
        return 1
    print()
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # not indented: the readings hold every target (1,000 targets, 20 minutes: 2.5 MB)
        args.json.write_bytes(orjson.dumps(report))
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
