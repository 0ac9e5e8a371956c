"""PNG plots of the pacing history for people (``pacing history --plot``, ``pacing channels``).

matplotlib's object API with the Agg canvas: no pyplot, no global figure state and no display,
so it works on a server and from any thread. Decisions are drawn as step functions ("post"
steps): a value holds from the cycle that made it until the next change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pacing.history import ChannelPoint, HistoryPoint

__all__ = ["plot_channel_totals", "plot_target_history"]

_SIZE_INCHES = (11, 8)
_DPI = 110  # about 1200 × 900 pixels: readable in a browser and in a README
# ConciseDateFormatter's tick labels by the unit that changes (years … seconds): seconds read
# "15:55:30" rather than a bare "30", which looked like a minute
_TICK_FORMATS = ["%Y", "%b", "%d", "%H:%M", "%H:%M", "%H:%M:%S"]
_ZERO_FORMATS = ["", "%Y", "%b", "%b %d", "%H:%M", "%H:%M"]
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot_target_history(
    points: Sequence[HistoryPoint],
    path: Path,
    *,
    target_id: str,
    until: datetime,
) -> None:
    """Budget, reactive state and the inputs (ready, busy, waiting) of one target over time.

    ``points`` is :func:`pacing.history.target_history`'s step function; the last
    step is drawn until ``until``.
    """
    if not points:
        raise ValueError(f"There is no history for {target_id!r} in this window to plot.")
    times = [p.at for p in points] + [until]
    figure = Figure(figsize=_SIZE_INCHES, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    budget_axes, reactive_axes, input_axes = figure.subplots(
        3, 1, sharex=True, height_ratios=(3, 1.4, 3)
    )
    figure.suptitle(
        f"Pacing history of {target_id}  ({_span(times[0], until)}, {len(points)} changes)",
        fontsize=14,
    )

    _step(budget_axes, times, [p.proactive_budget for p in points], "proactive budget", "tab:blue")
    budget_axes.set_ylabel("invitations\nper period")
    budget_axes.set_title("Proactive budget (new invitations allowed in the next period)")
    budget_axes.set_ylim(bottom=0)
    budget_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _mark_reasons(budget_axes, points, times)

    _step(reactive_axes, times, [p.reactive_state for p in points], "reactive state", "tab:purple")
    reactive_axes.set_ylabel("admission\nprobability")
    reactive_axes.set_title("Reactive state (probability a visitor's chat request is admitted)")
    reactive_axes.set_ylim(-0.05, 1.05)

    for label, values, colour in (
        ("agents ready", [p.agents_ready for p in points], "tab:green"),
        ("agents busy", [p.agents_busy for p in points], "tab:orange"),
        ("interactions waiting", [p.interactions_waiting for p in points], "tab:red"),
    ):
        _step(input_axes, times, values, label, colour)
    input_axes.set_ylabel("agents /\ninteractions")
    input_axes.set_title("Inputs from the Stat Server when the decision was made")
    input_axes.set_ylim(bottom=0)
    input_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    input_axes.set_xlabel("time (UTC)")
    _finish(figure, (budget_axes, reactive_axes, input_axes), path)


def plot_channel_totals(points: Sequence[ChannelPoint], path: Path, *, until: datetime) -> None:
    """Per channel: the summed proactive budget and the summed ready capacity over time."""
    if not points:
        raise ValueError("There are no channel totals in this window to plot.")
    by_channel: dict[str, list[ChannelPoint]] = defaultdict(list)
    for point in points:
        by_channel[point.channel].append(point)
    figure = Figure(figsize=_SIZE_INCHES, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    budget_axes, ready_axes = figure.subplots(2, 1, sharex=True)
    cycles = len({p.seq for p in points})
    figure.suptitle(f"Channel totals  ({_span(points[0].at, until)}, {cycles} cycles)", fontsize=14)
    for index, (channel, series) in enumerate(sorted(by_channel.items())):
        colour = _COLOURS[index % len(_COLOURS)]
        times = [p.at for p in series] + [until]
        _step(budget_axes, times, [p.proactive_budget for p in series], channel, colour)
        _step(ready_axes, times, [p.ready_capacity for p in series], channel, colour)
    budget_axes.set_title("Proactive budget per channel (sum over its targets)")
    budget_axes.set_ylabel("invitations\nper period")
    ready_axes.set_title("Ready capacity per channel (free agent slots, sum over its targets)")
    ready_axes.set_ylabel("free slots")
    ready_axes.set_xlabel("time (UTC)")
    for axes in (budget_axes, ready_axes):
        axes.set_ylim(bottom=0)
    _finish(figure, (budget_axes, ready_axes), path)


def _step(
    axes: Axes,
    times: Sequence[datetime],
    values: Sequence[float | None],
    label: str,
    colour: str,
) -> None:
    # the last value is repeated so the final step reaches the end of the window; a missing
    # input (None: the Stat Server gave nothing) becomes a gap, not a zero
    shown = [float("nan") if v is None else float(v) for v in values]
    axes.step(_numbers(times), [*shown, shown[-1]], where="post", label=label, color=colour, lw=1.8)


def _mark_reasons(axes: Axes, points: Sequence[HistoryPoint], times: Sequence[datetime]) -> None:
    """Shade the periods whose decision was not ``ok`` and name the reason on wide ones, so a
    budget of 0 explains itself."""
    window = _number(times[-1]) - _number(times[0])
    labelled = False
    for point, start, end in zip(points, times, times[1:], strict=False):
        if point.reason in ("ok", "cold_start"):
            continue
        left, right = _number(start), _number(end)
        axes.axvspan(
            left,
            right,
            color="0.88",
            label=None if labelled else "reason not ok (shaded)",
            zorder=0,
        )
        labelled = True
        if window > 0 and (right - left) / window >= 0.03:  # narrow bands would be a smudge
            axes.text(
                left,
                0.97,
                f" {point.reason}",
                transform=axes.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="left",
                fontsize=8,
                color="0.35",
            )


def _finish(figure: Figure, axes_list: Sequence[Axes], path: Path) -> None:
    for axes in axes_list:
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]  # untyped in matplotlib
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(
            ConciseDateFormatter(  # type: ignore[no-untyped-call]
                locator, formats=_TICK_FORMATS, zero_formats=_ZERO_FORMATS
            )
        )
        axes.xaxis_date(tz="UTC")
        axes.grid(True, alpha=0.3)
        # outside the axes, so a legend never hides the first minutes of data
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, borderaxespad=0)
    figure.savefig(path, format="png")


def _numbers(times: Sequence[datetime]) -> list[float]:
    """matplotlib's date numbers (days since 1970, UTC) for aware datetimes."""
    return [_number(t) for t in times]


def _number(moment: datetime) -> float:
    return float(date2num(moment))  # type: ignore[no-untyped-call]  # untyped in matplotlib


def _span(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M:%S} – {end:%H:%M:%S} UTC"
