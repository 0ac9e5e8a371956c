"""Fault-injection runner: a real two-node pacing cluster, every fault of issue 4, one table.

    python benchmarks/faults.py [--json] [--runs N] [--outage-seconds S] [--only a,b]
                                [--json-file PATH] [--ha]

It starts its own redis-server and PostgreSQL cluster on free loopback ports, the simulator and
two nodes (a ``celery worker`` and a ``celery beat`` each), then injects each fault, heals it and
measures what the simulator's receiver and the history database saw (tests/reliability/harness.py
holds the machinery; the reliability tests run the same faults with short outages):

* recovered — pacing resumed by itself (and the fault-specific outcome held, see ``details``);
* next publish — seconds from the fault (kill, stop, restart) or from its end (outages) to the
  next cycle the receiver accepted;
* gap — the longest time between two accepted publishes in the fault's window;
* dup — seqs accepted twice; deposed — publishes accepted after a newer epoch took the lease;
* audit lost / dup — accepted cycles without their history rows, or rows written twice;
* left — processes of killed or stopped groups still alive afterwards.

* regress — accepted seqs at or below one accepted before; ended term — publishes accepted from
  a leadership term after another term had published (two leaders interleaved).

SIGKILL of the master runs ``--runs`` times; its failover figure is the median, checked against
the bound lease TTL + 2 refresh periods. Exit status 1 if any invariant failed.

``--ha`` runs the Redis Sentinel faults of issue 18 instead (tests/reliability/ha_harness.py) on a
master, a replica and three Sentinels: ``redis_master_killed`` (``--runs`` times; the median of
its longest receiver gap is checked against 10 s), ``redis_failover_lost_writes``,
``redis_old_master_returns`` and ``sentinel_killed``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the harness lives in tests/

from tests.reliability.ha_harness import HA_FAULTS, SentinelCluster, run_ha_fault
from tests.reliability.harness import (
    FAULTS,
    PERIOD_SECONDS,
    FaultResult,
    median,
    run_fault,
    running_cluster,
)

#: the issue's bound on the median longest receiver gap of a Redis master's SIGKILL (``--ha``)
HA_GAP_BOUND_SECONDS = 10.0

COLUMNS = (
    ("fault", 30),
    ("recovered", 9),
    ("next publish s", 20),
    ("gap s", 6),
    ("published", 9),
    ("dup", 3),
    ("regress", 7),
    ("ended term", 10),
    ("deposed", 7),
    ("audit lost", 10),
    ("audit dup", 9),
    ("left", 4),
    ("max queue", 9),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--runs", type=int, default=5, help="SIGKILL failover runs (median)")
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="length of outages")
    parser.add_argument("--only", default="", help="comma-separated fault names to run")
    parser.add_argument("--json-file", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--ha", action="store_true", help="the Redis Sentinel faults instead")
    args = parser.parse_args(argv)
    known = HA_FAULTS if args.ha else FAULTS
    repeated = "redis_master_killed" if args.ha else "sigkill_master"
    names = [n for n in args.only.split(",") if n] or list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(known)}")

    # SIGTERM unwinds like Ctrl-C, so the cluster's processes and servers are stopped
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    results: list[FaultResult] = []
    failover: list[FaultResult] = []
    with running_cluster(cluster_class=SentinelCluster if args.ha else None) as cluster:
        bound = HA_GAP_BOUND_SECONDS if args.ha else cluster.settings.lease_ttl + 2 * PERIOD_SECONDS
        for name in names:
            runs = args.runs if name == repeated else 1
            for _ in range(runs):
                if args.ha:
                    assert isinstance(cluster, SentinelCluster)
                    result = run_ha_fault(cluster, name, outage_seconds=args.outage_seconds)
                else:
                    result = run_fault(cluster, name, outage_seconds=args.outage_seconds)
                _progress(result, quiet=args.json)
                (failover if name == repeated else results).append(result)
    left = cluster.processes_left_after_close or 0

    summary = _failover_summary(failover, bound, gap=args.ha)
    if failover:
        results.insert(0, _failover_row(failover, summary, repeated))
    ok = all(_invariants_hold(r) for r in results) and left == 0
    ok = ok and (not failover or summary["within_bound"])
    report: dict[str, Any] = {
        "faults": [r.as_json() for r in results],
        "failover": summary,
        "processes_left_after_teardown": left,
        "outage_seconds": args.outage_seconds,
        "refresh_period_seconds": PERIOD_SECONDS,
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "ok": ok,
    }
    if args.json_file is not None:
        args.json_file.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_table(results, report)
    return 0 if ok else 1


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _invariants_hold(result: FaultResult) -> bool:
    return (
        result.recovered
        and result.duplicates == 0
        and result.regressions == 0
        and result.ended_term_publishes == 0
        and result.deposed_publishes == 0
        and result.audit_lost == 0
        and result.audit_duplicated == 0
        and result.processes_left == 0
    )


def _failover_summary(runs: list[FaultResult], bound: float, *, gap: bool) -> dict[str, Any]:
    """The repeated fault's figure against its bound: the seconds to the next publish, or
    (``gap``) the longest gap between publishes at the receiver."""
    seconds = [
        r.longest_gap_seconds if gap else r.next_publish_seconds
        for r in runs
        if r.next_publish_seconds is not None
    ]
    middle = median(seconds) if seconds else None
    return {
        "measure": "longest receiver gap" if gap else "next publish",
        "runs_seconds": seconds,
        "median_seconds": middle,
        "bound_seconds": bound,
        "within_bound": middle is not None and len(seconds) == len(runs) and middle <= bound,
    }


def _failover_row(runs: list[FaultResult], summary: dict[str, Any], name: str) -> FaultResult:
    """One row for the repeated runs: medians of the timings, sums of the counts."""
    row = FaultResult(f"{name} (median of {len(runs)})", measured_from="kill")
    row.recovered = all(r.recovered for r in runs)
    row.next_publish_seconds = median(
        [r.next_publish_seconds for r in runs if r.next_publish_seconds is not None] or [0.0]
    )
    row.longest_gap_seconds = median([r.longest_gap_seconds for r in runs])
    for field in (
        "published",
        "duplicates",
        "regressions",
        "ended_term_publishes",
        "deposed_publishes",
        "audit_lost",
        "audit_duplicated",
        "processes_left",
    ):
        setattr(row, field, sum(getattr(r, field) for r in runs))
    row.max_queue_length = max(r.max_queue_length for r in runs)
    row.details = {
        "measure": summary["measure"],
        "runs_seconds": summary["runs_seconds"],
        "bound_seconds": summary["bound_seconds"],
        "within_bound": summary["within_bound"],
    }
    if name == "sigkill_master":
        row.details["first_publish_of_new_leader"] = sorted(
            {str(r.details["first_new_kind"]) for r in runs}
        )
    else:
        row.details["failover_seconds"] = [r.details.get("failover_seconds") for r in runs]
    return row


def _progress(result: FaultResult, *, quiet: bool) -> None:
    if not quiet:
        seconds = result.next_publish_seconds
        print(
            f"  {result.fault}: recovered={result.recovered} next publish={seconds} s",
            file=sys.stderr,
            flush=True,
        )


def _print_table(results: list[FaultResult], report: dict[str, Any]) -> None:
    header = " | ".join(title.ljust(width) for title, width in COLUMNS)
    print(header)
    print("-+-".join("-" * width for _, width in COLUMNS))
    for r in results:
        seconds = "never" if r.next_publish_seconds is None else f"{r.next_publish_seconds:.2f}"
        cells = [
            r.fault,
            "yes" if r.recovered else "NO",
            f"{seconds} (from {r.measured_from})",
            f"{r.longest_gap_seconds:.1f}",
            str(r.published),
            str(r.duplicates),
            str(r.regressions),
            str(r.ended_term_publishes),
            str(r.deposed_publishes),
            str(r.audit_lost),
            str(r.audit_duplicated),
            str(r.processes_left),
            str(r.max_queue_length),
        ]
        print(" | ".join(c.ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    failover = report["failover"]
    if failover["median_seconds"] is not None:
        runs = ", ".join(f"{s:.2f}" for s in failover["runs_seconds"])
        verdict = "within" if failover["within_bound"] else "OUTSIDE"
        gap = failover["measure"] == "longest receiver gap"
        what = (
            "Longest receiver gap after SIGKILL of the Redis master"
            if gap
            else "Failover after SIGKILL of the master"
        )
        bound = "bound" if gap else "bound lease TTL + 2 periods ="
        print(
            f"\n{what}: median {failover['median_seconds']:.2f} s "
            f"of {len(failover['runs_seconds'])} runs ({runs}); {bound} "
            f"{failover['bound_seconds']:g} s: {verdict}"
        )
    print(
        f"Outages {report['outage_seconds']:g} s, refresh period "
        f"{report['refresh_period_seconds']:g} s; processes left after teardown: "
        f"{report['processes_left_after_teardown']}; {report['elapsed_seconds']:.0f} s in all; "
        f"{'all invariants held' if report['ok'] else 'SOME INVARIANTS FAILED'}"
    )
    print("\nDetails:")
    for r in results:
        print(f"  {r.fault}: {orjson.dumps(r.details).decode()}")


if __name__ == "__main__":
    sys.exit(main())
