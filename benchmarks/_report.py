"""The cycle benchmark's goals and printed report (``benchmarks/cycle.py`` prints it).

:func:`goals` holds the report's figures against the targets of the performance section
(PASS, MISS or n/a; the JSON keeps them under ``goals``); :func:`print_report` prints the header,
one table per measurement with the verdicts beside the figures, the failed cycles and the log
problems, then the goals.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._cycle_stack import POLL_SECONDS
from benchmarks._history_bench import HISTORY_REPEATS, HISTORY_TARGETS, HOUR_FULL_EVERY
from benchmarks._measurements import ratio
from benchmarks._stack import PERIOD_SECONDS

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
            ratio(hundred_median, ten_median),
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
