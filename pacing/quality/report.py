"""Issue 16's bounds on the quality windows, and the report of a whole run.

:func:`issue_criteria` checks the windows of :mod:`pacing.quality.measures` against the bounds
(each :class:`Criterion` with its :class:`Check` list); :func:`run_report` computes every window and
criterion of a run from its readings, one a minute, and :func:`run_report_json` makes it JSON.
:mod:`pacing.quality.text` prints the same report. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacing.quality.measures import ALL, LARGE, Window, rounded, window, windows

#: Comparisons against a bound allow for the rounding of the ratios (a rate of exactly
#: goal + 1 point passes).
_TOLERANCE = 1e-12


# --- issue 16's bounds ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One figure of one window against its bounds (None: no bound on that side)."""

    window: str
    size_class: str
    measure: str  # "abandonment" or "occupancy"
    value: float | None
    low: float | None
    high: float | None

    @property
    def passed(self) -> bool:
        """Within the bounds; a figure that could not be measured (None) never passes."""
        if self.value is None:
            return False
        above_low = self.low is None or self.value >= self.low - _TOLERANCE
        below_high = self.high is None or self.value <= self.high + _TOLERANCE
        return above_low and below_high

    def as_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "class": self.size_class,
            "measure": self.measure,
            "value": rounded(self.value),
            "low": rounded(self.low),
            "high": rounded(self.high),
            "passed": self.passed,
        }


@dataclass(frozen=True, slots=True)
class Criterion:
    """A bound and every check it made; it passes if it checked something and all passed."""

    name: str
    description: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "passed": self.passed,
            "checks": [check.as_json() for check in self.checks],
        }


def issue_criteria(
    windows_: Iterable[Window],
    *,
    settled_from: int,
    ceiling_points: float = 1.0,
    band_points: float = 0.5,
    min_occupancy: float = 0.9,
) -> list[Criterion]:
    """Issue 16's bounds on 5-minute windows.

    * ceiling: in every window, abandonment ≤ goal + ``ceiling_points`` for ``all`` and ``10+``;
    * settled: in every window from minute ``settled_from`` on (its ``first`` ≥ it), ``10+``
      within goal ± ``band_points`` and its occupancy ≥ ``min_occupancy``.

    A criterion with no window to check (a run too short) does not pass.
    """
    ceiling = ceiling_points / 100
    band = band_points / 100
    ceiling_checks: list[Check] = []
    settled_checks: list[Check] = []
    for item in windows_:
        for name in (ALL, LARGE):
            figures = item.classes[name]
            high = None if figures.goal is None else figures.goal + ceiling
            ceiling_checks.append(
                Check(item.label, name, "abandonment", figures.abandonment, None, high)
            )
        if item.first >= settled_from:
            figures = item.classes[LARGE]
            goal = figures.goal
            settled_checks.append(
                Check(
                    item.label,
                    LARGE,
                    "abandonment",
                    figures.abandonment,
                    None if goal is None else goal - band,
                    None if goal is None else goal + band,
                )
            )
            settled_checks.append(
                Check(item.label, LARGE, "occupancy", figures.occupancy, min_occupancy, None)
            )
    return [
        Criterion(
            "ceiling",
            f"every window: abandonment ≤ goal + {ceiling_points:g} point for {ALL} and {LARGE}",
            tuple(ceiling_checks),
        ),
        Criterion(
            "settled",
            f"windows from minute {settled_from} on: {LARGE} within goal ± {band_points:g} "
            f"point, occupancy ≥ {min_occupancy:.0%}",
            tuple(settled_checks),
        ),
    ]


# --- a whole run ------------------------------------------------------------------------------

#: Minutes per window of issue 16's bounds.
SPAN = 5
#: The settled band applies from this many minutes after a start from an empty state.
SETTLE_MINUTES = 10
#: The minutes after a wipe of the per-target state that are reported on their own.
AFTER_WIPE_MINUTES = 10


def run_report(
    readings: Sequence[Mapping[str, Any]],
    goals: Mapping[str, float],
    *,
    wipe_at: int | None = None,
) -> dict[str, Any]:
    """Every table and criterion of a run from its readings, one a minute from the start.

    ``readings[0]`` is taken at the start (an empty state), ``readings[k]`` after minute k.
    A wipe of the per-target state after reading ``wipe_at`` is a cold start again: the start's
    bounds are checked on the windows before it, and the :data:`AFTER_WIPE_MINUTES` after it are
    reported on their own and held to the cold start's bounds — the ceiling in every window, the
    settled band once :data:`SETTLE_MINUTES` have passed since the wipe (a criterion with
    nothing to check yet is left out).
    """
    minutes = len(readings) - 1
    settled_from = SETTLE_MINUTES + 1
    # the start's own windows end where a wipe begins a second cold start
    start_end = minutes if wipe_at is None else min(wipe_at, minutes)
    result: dict[str, Any] = {
        "minutes": windows(readings, goals),
        "five_minutes": windows(readings, goals, span=SPAN),
        "settled": (
            window(
                readings[SETTLE_MINUTES],
                readings[start_end],
                goals,
                first=settled_from,
                last=start_end,
            )
            if start_end > SETTLE_MINUTES
            else None
        ),
    }
    result["criteria"] = [
        criterion
        for criterion in issue_criteria(
            windows(readings[: start_end + 1], goals, span=SPAN), settled_from=settled_from
        )
        if criterion.checks or wipe_at is None
    ]
    if wipe_at is not None:
        end = min(wipe_at + AFTER_WIPE_MINUTES, minutes)
        after = windows(readings[: end + 1], goals, span=SPAN, start=wipe_at)
        criteria = issue_criteria(after, settled_from=wipe_at + SETTLE_MINUTES + 1)
        result["after_wipe"] = {
            "five_minutes": after,
            "whole": window(readings[wipe_at], readings[end], goals, first=wipe_at + 1, last=end),
            "criteria": [criterion for criterion in criteria if criterion.checks],
        }
    return result


def run_report_json(report: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_report` as JSON-ready dicts."""
    after = report.get("after_wipe")
    return {
        "minutes": [item.as_json() for item in report["minutes"]],
        "five_minutes": [item.as_json() for item in report["five_minutes"]],
        "settled": report["settled"].as_json() if report["settled"] else None,
        "criteria": [criterion.as_json() for criterion in report["criteria"]],
        "after_wipe": (
            {
                "five_minutes": [item.as_json() for item in after["five_minutes"]],
                "whole": after["whole"].as_json(),
                "criteria": [criterion.as_json() for criterion in after["criteria"]],
            }
            if after
            else None
        ),
    }
