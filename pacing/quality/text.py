"""The quality report as text: tables of windows and the verdicts of issue 16's bounds.

:func:`format_windows` prints windows of :mod:`pacing.quality.measures`,
:func:`format_criteria` the criteria of :mod:`pacing.quality.report`, and
:func:`format_run_report` a whole :func:`~pacing.quality.report.run_report` with both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pacing.quality.measures import CLASS_NAMES, ClassFigures, Window
from pacing.quality.report import AFTER_WIPE_MINUTES, SETTLE_MINUTES, Check, Criterion

_COLUMNS = (
    ("class", "<"),
    ("targets", ">"),
    ("slots", ">"),
    ("invited", ">"),
    ("accepted", ">"),
    ("abandoned", ">"),
    ("abandonment", ">"),
    ("goal", ">"),
    ("vs goal", ">"),
    ("occupancy", ">"),
)


def format_windows(
    windows_: Iterable[Window],
    *,
    title: str,
    period: str = "minute",
    classes: Sequence[str] = CLASS_NAMES,
) -> str:
    """A text table: one row per window and size class (classes without targets left out)."""
    rows: list[list[str]] = []
    for item in windows_:
        shown = [item.classes[name] for name in classes if item.classes[name].targets > 0]
        for index, figures in enumerate(shown):
            rows.append([item.label if index == 0 else "", *_cells(figures)])
    if not rows:
        return f"{title}\n  (no whole window: the run is too short)"
    header = [period, *(name for name, _ in _COLUMNS)]
    aligns = "<" + "".join(align for _, align in _COLUMNS)
    return f"{title}\n{format_table(header, rows, aligns)}"


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]], aligns: str) -> str:
    """Columns as wide as their widest cell, two spaces apart; ``aligns`` holds ``<`` or ``>``
    per column."""
    rows = list(rows)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = zip(cells, aligns, widths, strict=True)
        return "  ".join(f"{cell:{align}{width}}" for cell, align, width in padded).rstrip()

    return "\n".join(
        [line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)]
    )


def format_criteria(criteria: Iterable[Criterion], *, title: str) -> str:
    """PASS or FAIL per criterion, with the checks that failed."""
    lines = [title]
    for criterion in criteria:
        verdict = "PASS" if criterion.passed else "FAIL"
        lines.append(f"  {verdict}  {criterion.description}")
        if not criterion.checks:
            lines.append("          nothing to check: the run is too short")
        for check in criterion.checks:
            if not check.passed:
                lines.append(
                    f"          window {check.window}, {check.size_class}: {check.measure} "
                    f"{_percent(check.value)} outside {_bounds(check)}"
                )
    return "\n".join(lines)


def format_run_report(report: Mapping[str, Any], *, heading: Sequence[str]) -> str:
    """The tables and verdicts of :func:`run_report` as text, under the ``heading`` lines."""
    parts = [
        *heading,
        "",
        format_windows(report["minutes"], title="Per minute"),
        "",
        format_windows(report["five_minutes"], title="Per 5 minutes", period="minutes"),
    ]
    if report["settled"] is not None:
        parts += [
            "",
            format_windows(
                [report["settled"]],
                title=f"After minute {SETTLE_MINUTES}",
                period="minutes",
            ),
        ]
    parts += ["", format_criteria(report["criteria"], title="Issue 16's bounds")]
    if "after_wipe" in report:
        after = report["after_wipe"]
        parts += [
            "",
            format_windows(
                [*after["five_minutes"], after["whole"]],
                title=f"The {AFTER_WIPE_MINUTES} minutes after the wipe (a cold start again)",
                period="minutes",
            ),
            "",
            format_criteria(after["criteria"], title="Issue 16's bounds after the wipe"),
        ]
    return "\n".join(parts)


def _cells(figures: ClassFigures) -> list[str]:
    difference = figures.difference
    return [
        figures.size_class,
        f"{figures.targets:,}",
        f"{figures.slots:,}",
        f"{figures.invitations:,}",
        f"{figures.accepted:,}",
        f"{figures.abandoned:,}",
        _percent(figures.abandonment),
        _percent(figures.goal),
        "–" if difference is None else f"{difference * 100:+.2f} pt",
        _percent(figures.occupancy, digits=1),
    ]


def _percent(value: float | None, *, digits: int = 2) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


def _bounds(check: Check) -> str:
    if check.low is not None and check.high is not None:
        return f"[{_percent(check.low)}, {_percent(check.high)}]"
    if check.high is not None:
        return f"≤ {_percent(check.high)}"
    if check.low is not None:
        return f"≥ {_percent(check.low)}"
    return "its bounds (no goal)"
