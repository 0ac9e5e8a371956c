"""The evaluation figure: abandonment and occupancy against group size, per algorithm and goal."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pacing.domain import Objective
from pacing.evaluation._report import ScenarioReport
from pacing.evaluation._scenario import Pacer, Stress


def _series_key(report: ScenarioReport) -> tuple[str, str, int] | None:
    """(line label, objective, goal %) for the scenarios the figure shows, else None."""
    scenario = report.scenario
    if scenario.stress is not Stress.NONE or scenario.name.startswith("axis-"):
        return None
    if scenario.pacer is Pacer.POISSON:
        return (
            "Poisson, unpaced (simulator self-check)",
            str(scenario.objective),
            scenario.goal_percent,
        )
    if scenario.pacer is Pacer.PROGRESSIVE:
        return ("PROGRESSIVE baseline", str(scenario.objective), scenario.goal_percent)
    if scenario.reactive_share > 0:
        return (
            f"dual, {scenario.reactive_share:.0%} reactive (reactive visitors)",
            str(scenario.objective),
            scenario.goal_percent,
        )
    return (f"{scenario.algorithm} (configured)", str(scenario.objective), scenario.goal_percent)


def write_figure(reports: Sequence[ScenarioReport], path: Path) -> None:
    """Draw one column per goal (abandonment above, occupancy below) into a PNG at ``path``."""
    import matplotlib  # noqa: PLC0415 - plotting is optional and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    goals = sorted(
        {
            (str(r.scenario.objective), r.scenario.goal_percent)
            for r in reports
            if r.scenario.pacer is Pacer.PACED and r.scenario.reactive_share == 0
        },
        key=lambda g: (g[0] != str(Objective.ABANDONMENT_RATE), g[1]),
    )
    if not goals:
        goals = [(str(Objective.ABANDONMENT_RATE), 3)]
    lines: dict[tuple[str, str, int], list[ScenarioReport]] = defaultdict(list)
    for report in reports:
        key = _series_key(report)
        if key is not None:
            lines[key].append(report)
    figure, axes = plt.subplots(2, len(goals), figsize=(5.2 * len(goals), 8.0), squeeze=False)
    for column, (objective, goal) in enumerate(goals):
        top, bottom = axes[0][column], axes[1][column]
        busy = objective == str(Objective.BUSY_FACTOR)
        title = f"busy factor goal {goal} %" if busy else f"abandonment goal {goal} %"
        top.set_title(title)
        erlang_drawn = False
        for (label, line_objective, line_goal), unordered in sorted(lines.items()):
            if (line_objective, line_goal) != (objective, goal):
                continue
            members = sorted(unordered, key=lambda r: r.scenario.slots)
            slots = [r.scenario.slots for r in members]
            is_reactive = "reactive" in label
            abandonment = [
                (r.reactive_abandonment if is_reactive else r.abandonment) for r in members
            ]
            top.errorbar(
                slots,
                [100 * e.mean for e in abandonment],
                yerr=[100 * _zero(e.half_width) for e in abandonment],
                marker="o",
                capsize=3,
                label=label,
            )
            bottom.errorbar(
                slots,
                [100 * r.occupancy.mean for r in members],
                yerr=[100 * _zero(r.occupancy.half_width) for r in members],
                marker="o",
                capsize=3,
                label=label,
            )
            if not erlang_drawn and "configured" in label:
                bottom.plot(
                    slots,
                    [100 * r.erlang_occupancy for r in members],
                    linestyle="--",
                    color="grey",
                    label="Erlang-A formula, Poisson traffic at the same goal",
                )
                erlang_drawn = True
        if busy:
            bottom.axhline(goal, color="red", linewidth=1, label="goal")
        else:
            top.axhline(goal, color="red", linewidth=1, label="goal")
            top.axhspan(goal - 0.5, goal + 0.5, color="red", alpha=0.08)
        for axis in (top, bottom):
            axis.set_xscale("log")
            axis.set_xlabel("slots in the group")
            axis.grid(True, which="both", alpha=0.3)
        top.set_ylabel("abandoned / accepted, %")
        bottom.set_ylabel("occupancy (busy slot-time), %")
        top.set_ylim(bottom=0, top=max(12.0, goal * 2.5) if not busy else 12.0)
        bottom.set_ylim(0, 101)
        top.legend(fontsize=7)
        bottom.legend(fontsize=7, loc="lower right")
    figure.suptitle("Pacing evaluation (virtual time, 95 % confidence intervals over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0
