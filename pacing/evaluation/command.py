"""``pacing evaluate``: run the virtual-time evaluation grid and print or plot its results."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO, cast

import click

from pacing import quality
from pacing.evaluation._grid import GRIDS, tiny_grid
from pacing.evaluation._live import LiveWorldRun, live_world_snapshots
from pacing.evaluation._report import (
    as_json,
    cross_checks,
    format_markdown,
    format_table,
    group_rows,
    verdict_of,
)
from pacing.evaluation._runner import run_rows

#: ``--workers`` default: the machines this runs on have 2 cores shared with other work.
DEFAULT_WORKERS = 2
_BAR_STEPS = 1000


@click.command(name="evaluate")
@click.option("--quick", "grid", flag_value="quick", help="The quick grid (minutes on 2 cores).")
@click.option("--full", "grid", flag_value="full", help="The full grid of algorithm.md §8 (hours).")
@click.option(
    "--tiny", "grid", flag_value="tiny", hidden=True, help="A seconds-long smoke grid (tests)."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "markdown"]),
    default="table",
    show_default=True,
    help="How to print the results on stdout.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw abandonment and occupancy against group size into this PNG file.",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=0),
    default=0,
    help="Replicas per scenario (0: the grid's own counts; at least 4 for the intervals).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=2),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Processes to simulate in (at most 2: the machines are shared).",
)
@click.option("--only", default="", help="Run only the scenarios whose name contains this text.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@click.option(
    "--live",
    "grid",
    flag_value="live",
    help="Instead of a grid: the world `pacing up` serves, minute by minute (see below).",
)
@click.option(
    "--targets",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="--live: targets of the world.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="--live: the world's seed.")
@click.option(
    "--minutes",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="--live: simulated minutes from an empty state.",
)
@click.option(
    "--wipe-at",
    type=click.IntRange(min=1),
    default=None,
    help="--live: lose the service's Redis after this minute (a restart without persistence).",
)
def evaluate(  # noqa: PLR0917 - click passes every option by keyword
    grid: str | None,
    output_format: str,
    plot_path: Path | None,
    seeds: int,
    workers: int,
    only: str,
    no_progress: bool,
    targets: int,
    seed: int,
    minutes: int,
    wipe_at: int | None,
) -> None:
    """Evaluate the pacing algorithms in virtual time (no Celery, no HTTP, no wall clock).

    Every scenario simulates a contact centre event by event and paces it with the same
    pacing.algorithms.pace() the workers call, seeing only the statistics and feedback
    counters production sees. Prints, per scenario, the achieved abandonment and occupancy with
    95 % confidence intervals over seeds, the Erlang-A occupancy of unpaced traffic at the same
    goal, invitations per accepted and pass/fail against algorithm.md §8.

    With --live, the world `pacing up` serves instead (--targets, --seed), paced from an
    empty state by the service's own cycle for --minutes simulated minutes, reported as
    benchmarks/live.py reports the live stack: per minute and per group size, invitations,
    accepted, abandonment against the goal and occupancy, and issue 16's bounds.

    Exit status 0 when every criterion holds, 1 when one does not.

    \b
    Examples:
      pacing evaluate --quick --plot eval.png
      pacing evaluate --live --minutes 20 --wipe-at 10
    """
    if grid == "live":
        _evaluate_live(
            LiveWorldRun(targets=targets, seed=seed, minutes=minutes, wipe_at_minute=wipe_at),
            output_format=output_format,
        )
        return
    name = grid or "quick"
    scenarios = tiny_grid() if name == "tiny" else GRIDS[name](seeds=seeds)
    if only:
        scenarios = [scenario for scenario in scenarios if only in scenario.name]
        if not scenarios:
            raise click.UsageError(f"No scenario of the {name} grid has {only!r} in its name.")
    started = time.monotonic()
    with click.progressbar(
        length=_BAR_STEPS,
        label=f"Simulating the {name} grid ({len(scenarios)} scenarios)",
        file=cast(TextIO, _Discard()) if no_progress else sys.stderr,
    ) as bar:
        shown = [0]

        def progress(fraction: float) -> None:
            step = min(int(fraction * _BAR_STEPS), _BAR_STEPS)
            if step > shown[0]:
                bar.update(step - shown[0])
                shown[0] = step

        results = run_rows(scenarios, workers=workers, progress=progress)
    reports = group_rows(scenarios, results)
    checks = cross_checks(reports)
    elapsed = time.monotonic() - started
    if output_format == "json":
        click.echo(json.dumps(as_json(reports, checks, grid=name, seconds=elapsed), indent=2))
    elif output_format == "markdown":
        click.echo(format_markdown(reports, checks))
    else:
        click.echo(format_table(reports, checks))
        click.echo(f"({len(results)} simulated rows in {elapsed:.0f} s)")
    if plot_path is not None:
        from pacing.evaluation._plot import write_figure  # noqa: PLC0415 - matplotlib is slow

        write_figure(reports, plot_path)
        click.echo(f"Wrote {plot_path}", err=True)
    sys.exit(0 if verdict_of(reports, checks) else 1)


def _evaluate_live(run: LiveWorldRun, *, output_format: str) -> None:
    if run.wipe_at_minute is not None and run.wipe_at_minute >= run.minutes:
        raise click.UsageError("--wipe-at must come before the last minute (--minutes).")
    started = time.monotonic()
    result = live_world_snapshots(run)
    wipe = None if run.wipe_at_minute is None else int(run.wipe_at_minute)
    report = quality.run_report(result.readings, result.goals, wipe_at=wipe)
    elapsed = time.monotonic() - started
    if output_format == "json":
        document = {
            "config": {
                "targets": run.targets,
                "seed": run.seed,
                "minutes": run.minutes,
                "wipe_at": wipe,
                "refresh_period_seconds": run.refresh_period_seconds,
                "virtual_time": True,
            },
            "elapsed_seconds": round(elapsed, 1),
            **quality.run_report_json(report),
        }
        click.echo(json.dumps(document, indent=2))
    else:
        wiped = "" if wipe is None else f"; the service's Redis wiped after minute {wipe}"
        click.echo(
            quality.format_run_report(
                report,
                heading=[
                    f"Virtual time: {run.targets:,} targets, seed {run.seed}, {run.minutes} "
                    f"minutes from an empty state{wiped} ({elapsed:.0f} s)",
                ],
            )
        )
    criteria = [*report["criteria"], *report.get("after_wipe", {}).get("criteria", [])]
    sys.exit(0 if all(criterion.passed for criterion in criteria) else 1)


class _Discard:
    """A file that swallows the progress bar when stderr is not a terminal."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False
