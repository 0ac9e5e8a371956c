"""Split a grid into batches, run them on at most a few processes, report progress."""

from __future__ import annotations

import functools
import multiprocessing
import queue as queue_module
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from pacing.evaluation._batch import RowResult, simulate_batch
from pacing.evaluation._scenario import Pacer, Scenario

Row = tuple[Scenario, int]
#: Called with the fraction of the whole grid done (0–1).
GridProgress = Callable[[float], None]
#: Progress messages are drained this often (seconds) while the workers run.
_POLL_SECONDS = 0.25


def _row_cost(scenario: Scenario) -> float:
    """A rough CPU cost: paced rows share each tick's pace() call, so a row adds little per
    tick; events grow with the group size (about 6 per accepted visitor)."""
    if scenario.pacer is Pacer.POISSON:
        return scenario.hours * scenario.slots * 0.02
    return scenario.hours * (0.3 + scenario.slots / 20.0) * (2.0 / scenario.refresh_period)


def plan(scenarios: Sequence[Scenario], *, workers: int) -> list[list[Row]]:
    """Batches of rows: one per refresh period and share of the workers, plus the self-check.

    Rows of one batch are paced by one ``pace()`` call per tick, so fewer, wider batches are
    cheaper; ``workers`` batches per refresh period keep every process busy.
    """
    by_period: dict[float, list[Row]] = defaultdict(list)
    poisson: list[Row] = []
    for scenario in scenarios:
        rows = [(scenario, seed) for seed in range(scenario.seeds)]
        if scenario.pacer is Pacer.POISSON:
            poisson.extend(rows)
        else:
            by_period[scenario.refresh_period].extend(rows)
    batches: list[list[Row]] = []
    for period in sorted(by_period):
        rows = sorted(by_period[period], key=lambda row: (row[0].slots, row[0].name, row[1]))
        total = sum(_row_cost(scenario) for scenario, _ in rows)
        parts = max(1, min(workers, len(rows)))
        batch: list[Row] = []
        cost = 0.0
        cut = 0
        for row in rows:
            batch.append(row)
            cost += _row_cost(row[0])
            if cost >= total / parts and cut < parts - 1:
                batches.append(batch)
                batch, cost, cut = [], 0.0, cut + 1
        if batch:
            batches.append(batch)
    if poisson:
        batches.append(poisson)
    return [batch for batch in batches if batch]


def batch_cost(batch: Sequence[Row]) -> float:
    """The estimated cost of a batch (for progress weights)."""
    return sum(_row_cost(scenario) for scenario, _ in batch) + max(
        (s.hours for s, _ in batch if s.pacer is not Pacer.POISSON), default=0.0
    )


def _run_batch(arguments: tuple[int, list[Row], Any]) -> list[RowResult]:
    index, batch, messages = arguments

    def report(fraction: float) -> None:
        if messages is not None:
            messages.put((index, fraction))

    return simulate_batch(batch, report)


def run_rows(
    scenarios: Sequence[Scenario], *, workers: int = 2, progress: GridProgress | None = None
) -> list[RowResult]:
    """Simulate every seed of every scenario; at most ``workers`` processes (1: in-process)."""
    workers = max(1, workers)
    batches = plan(scenarios, workers=workers)
    weights = [batch_cost(batch) for batch in batches]
    total = sum(weights) or 1.0
    done = [0.0] * len(batches)

    def update(index: int, fraction: float) -> None:
        done[index] = fraction
        if progress is not None:
            progress(sum(w * f for w, f in zip(weights, done, strict=True)) / total)

    if workers == 1 or len(batches) == 1:
        results: list[RowResult] = []
        for index, batch in enumerate(batches):
            results.extend(simulate_batch(batch, functools.partial(update, index)))
        return results

    # spawn, not fork: a forked child would inherit whatever threads the parent runs.
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(min(workers, len(batches))) as pool:
        messages = manager.Queue()
        # Longest batches first, so that the short ones fill in behind them.
        order = sorted(range(len(batches)), key=lambda i: -weights[i])
        pending = pool.map_async(_run_batch, [(i, batches[i], messages) for i in order])
        while not pending.ready():
            try:
                index, fraction = messages.get(timeout=_POLL_SECONDS)
            except queue_module.Empty:
                continue
            update(index, fraction)
        outcome = pending.get()
    return [result for part in outcome for result in part]
