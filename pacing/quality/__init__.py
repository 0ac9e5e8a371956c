"""Pacing quality over a window: abandonment against the goal and occupancy, per group size.

The input is two readings of the simulator's per-target metrics (``GET /sim/metrics?per_target=1``);
their difference is what happened between them, however they were taken::

    first, second = get_metrics(), get_metrics()   # a minute apart
    figures = window(first, second, uniform_goals(second, 0.03))
    print(format_windows([figures], title="the last minute"))

* :mod:`pacing.quality.measures` — the figures of each size class between two readings
  (:func:`window`, :func:`windows`), and what each figure means;
* :mod:`pacing.quality.report` — :func:`issue_criteria` checks the bounds of issue 16 on
  5-minute windows, :func:`run_report` gives every table and criterion of a run;
* :mod:`pacing.quality.text` — the same as text tables and verdicts.

The names are re-exported here; the submodules import each other by full path, never this
package. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from pacing.quality.measures import (
    AGGREGATES,
    ALL,
    CLASS_NAMES,
    LARGE,
    SIZE_CLASSES,
    ClassFigures,
    Window,
    size_class,
    uniform_goals,
    window,
    windows,
)
from pacing.quality.report import (
    AFTER_WIPE_MINUTES,
    SETTLE_MINUTES,
    SPAN,
    Check,
    Criterion,
    issue_criteria,
    run_report,
    run_report_json,
)
from pacing.quality.text import format_criteria, format_run_report, format_table, format_windows

__all__ = [
    "AFTER_WIPE_MINUTES",
    "AGGREGATES",
    "ALL",
    "CLASS_NAMES",
    "LARGE",
    "SETTLE_MINUTES",
    "SIZE_CLASSES",
    "SPAN",
    "Check",
    "ClassFigures",
    "Criterion",
    "Window",
    "format_criteria",
    "format_run_report",
    "format_table",
    "format_windows",
    "issue_criteria",
    "run_report",
    "run_report_json",
    "size_class",
    "uniform_goals",
    "window",
    "windows",
]
