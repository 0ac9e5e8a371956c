"""The virtual-time evaluation of the pacing algorithms (algorithm.md §8).

A discrete-event simulation of contact centres (``_world``) paced by the same
:func:`pacing.algorithms.pace` the workers call, over grids of scenarios (``_grid``), run on at
most a few processes (``_runner``), summarised against the pass criteria of §8 (``_report``) and
drawn (``_plot``). The command is ``pacing evaluate`` (``command``).

Public surface::

    Scenario, Pacer, Stress              one cell of a grid
    quick_grid(), full_grid(), tiny_grid()
    run_rows(scenarios, workers=...)     simulate every seed of every scenario
    group_rows(...), cross_checks(...)   figures and verdicts
"""

from pacing.evaluation._batch import RowResult, erlang_reference, simulate_batch
from pacing.evaluation._grid import full_grid, quick_grid, tiny_grid
from pacing.evaluation._report import (
    Check,
    ScenarioReport,
    as_json,
    cross_checks,
    format_table,
    group_rows,
    verdict_of,
)
from pacing.evaluation._runner import run_rows
from pacing.evaluation._scenario import Pacer, Scenario, Stress

__all__ = [
    "Check",
    "Pacer",
    "RowResult",
    "Scenario",
    "ScenarioReport",
    "Stress",
    "as_json",
    "cross_checks",
    "erlang_reference",
    "format_table",
    "full_grid",
    "group_rows",
    "quick_grid",
    "run_rows",
    "simulate_batch",
    "tiny_grid",
    "verdict_of",
]
