"""The live benchmark's printed report (``benchmarks/live.py`` prints it).

:func:`text_report` is the quality report of ``pacing.quality`` under a heading that names the
run; :func:`notes_table` the per-minute figures beside it; :func:`log_summary` the WARNING,
ERROR and Traceback lines of the nodes, the simulator and the exporter.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks._live_measurements import Measurement
from benchmarks._stack import log_problems
from pacing import quality

LOG_PATTERNS = ("node-*.log", "simulator.log", "exporter.log")


# --- the report -------------------------------------------------------------------------------


def text_report(
    args: argparse.Namespace, header: Mapping[str, Any], report: Mapping[str, Any]
) -> str:
    wipe = "" if args.wipe_at is None else f"; Redis wiped after minute {args.wipe_at}"
    minute = "" if args.minute_seconds == 60 else f" (a 'minute' is {args.minute_seconds:g} s)"
    first_publish = header["first_publish_after_seconds"]
    return quality.format_run_report(
        report,
        heading=[
            f"Live quality: {args.targets:,} targets, {args.nodes} node(s), seed {args.seed}, "
            f"{args.minutes} minutes from an empty Redis{wipe}{minute}",
            f"code {header['code']}; started {header['started']}; first publish accepted "
            + ("never" if first_publish is None else f"{first_publish:.1f} s after the start"),
            f"load average (1, 5, 15 min) at start {header['load_average_at_start']}, "
            f"at end {header['load_average_at_end']} ({header['cores']} cores)",
        ],
    )


def notes_table(measurement: Measurement) -> str:
    """Per minute: publishes, cycles, overruns, cold start, queue, load, the reading's lateness."""
    header = [
        "minute",
        "read late s",
        "publishes",
        "rejected",
        "cycles",
        "latency ms median/max",
        "overruns",
        "cold start",
        "waiting",
        "in flight",
        "load",
        "cycle statuses",
    ]
    rows = []
    for minute, (offset, notes) in enumerate(
        zip(measurement.offsets[1:], measurement.notes, strict=True), 1
    ):
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(notes.get("statuses", {}).items()))
        rows.append(
            [
                str(minute),
                f"{offset:.3f}",
                str(notes["publishes"]),
                str(notes["publishes_rejected"]),
                _value(notes.get("cycles")),
                f"{_value(notes.get('latency_ms_median'))}/{_value(notes.get('latency_ms_max'))}",
                _value(notes.get("overruns_total")),
                _value(notes.get("cold_start_in_last_cycle")),
                f"{notes['waiting']:,}",
                f"{notes['in_flight']:,}",
                str(notes["load_average"]),
                statuses or notes.get("error", "-"),
            ]
        )
    table = quality.format_table(header, rows, ">>>>>>>>>>><")
    return f"Per minute, beside the figures (overruns: since the start or the wipe)\n{table}"


def _value(value: object) -> str:
    return "-" if value is None else str(value)


def log_summary(logs: Path) -> str:
    problems = log_problems(logs, LOG_PATTERNS)
    if not problems:
        return (
            "Log problems: no WARNING, ERROR or Traceback line in the nodes, simulator, exporter."
        )
    lines = ["Log problems (WARNING, ERROR or Traceback lines):"]
    for name, found in problems.items():
        lines.append(f"  {name}: {found['lines']}, first: {found['first'][0][:160]}")
    return "\n".join(lines)
