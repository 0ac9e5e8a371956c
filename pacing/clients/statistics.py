"""Many targets' statistics at once, columnar: what a shard fetches, remembers and paces on.

A shard handles hundreds to thousands of targets per cycle. Holding their statistics as one
``float64`` matrix (a row per target, :data:`STATISTICS_FIELDS` as columns) instead of one object
per target lets the hot path validate, store in Redis and feed the algorithms with array
operations; the per-target view (:class:`~pacing.domain.TargetStatistics` or
:class:`~pacing.domain.StatisticsError`) is still there through the ``Mapping`` interface, built
only for the targets someone looks at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from pacing.domain import StatisticsError, TargetStatistics

#: The columns of :attr:`StatisticsBatch.matrix`, in this order (timestamp first).
STATISTICS_FIELDS: Final = (
    "timestamp",
    "agents_logged_in",
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "aht_seconds",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
)
COLUMN: Final = {name: index for index, name in enumerate(STATISTICS_FIELDS)}
#: Fields that are floats in TargetStatistics; the others are counts (integers).
_FLOAT_FIELDS: Final = frozenset({"timestamp", "aht_seconds"})
INTEGER_FIELDS: Final = tuple(name for name in STATISTICS_FIELDS if name not in _FLOAT_FIELDS)


class StatisticsBatch(Mapping[str, TargetStatistics | StatisticsError]):
    """Statistics of ``ids``: ``matrix[i]`` belongs to ``ids[i]``; a target in ``errors`` has a
    row of NaN. As a mapping, each id gives its TargetStatistics or its StatisticsError."""

    __slots__ = ("_index", "errors", "ids", "matrix")

    def __init__(
        self,
        ids: Sequence[str],
        matrix: NDArray[np.float64],
        errors: Mapping[str, StatisticsError] | None = None,
    ) -> None:
        if matrix.shape != (len(ids), len(STATISTICS_FIELDS)):
            raise ValueError(
                f"matrix has shape {matrix.shape}; expected ({len(ids)}, "
                f"{len(STATISTICS_FIELDS)}) for {len(ids)} ids."
            )
        self.ids = list(ids)
        self.matrix = matrix
        self.errors = dict(errors or {})
        self._index: dict[str, int] | None = None

    @classmethod
    def empty(cls, ids: Sequence[str] = ()) -> StatisticsBatch:
        """A batch of ``ids`` with no values yet (every row NaN, no errors)."""
        return cls(ids, np.full((len(ids), len(STATISTICS_FIELDS)), math.nan))

    @classmethod
    def concat(cls, batches: Iterable[StatisticsBatch]) -> StatisticsBatch:
        parts = list(batches)
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        errors: dict[str, StatisticsError] = {}
        for part in parts:
            errors.update(part.errors)
        return cls(
            [tid for part in parts for tid in part.ids],
            np.concatenate([part.matrix for part in parts]),
            errors,
        )

    def column(self, name: str) -> NDArray[np.float64]:
        """One field for every target (NaN where the target has no statistics)."""
        return self.matrix[:, COLUMN[name]]

    def valid(self) -> NDArray[np.bool_]:
        """Mask of the targets that have statistics (no error)."""
        if not self.errors:
            return np.ones(len(self.ids), dtype=np.bool_)
        return np.fromiter(
            (tid not in self.errors for tid in self.ids), dtype=np.bool_, count=len(self.ids)
        )

    def rows_for(self, ids: Sequence[str]) -> NDArray[np.float64]:
        """The rows of ``ids`` in their order (NaN for an id not in the batch)."""
        if list(ids) == self.ids:
            return self.matrix
        index = self._lookup()
        out = np.full((len(ids), len(STATISTICS_FIELDS)), math.nan)
        for i, tid in enumerate(ids):
            row = index.get(tid)
            if row is not None:
                out[i] = self.matrix[row]
        return out

    # --- Mapping --------------------------------------------------------------------------

    def __getitem__(self, target_id: str) -> TargetStatistics | StatisticsError:
        error = self.errors.get(target_id)
        if error is not None:
            return error
        row = self._lookup()[target_id]  # KeyError for an id not in the batch
        return _target_statistics(target_id, self.matrix[row].tolist())

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, target_id: object) -> bool:
        return target_id in self._lookup()

    def __repr__(self) -> str:
        return f"StatisticsBatch({len(self.ids)} targets, {len(self.errors)} errors)"

    def _lookup(self) -> dict[str, int]:
        if self._index is None:
            self._index = {tid: i for i, tid in enumerate(self.ids)}
        return self._index


def _target_statistics(target_id: str, row: list[float]) -> TargetStatistics:
    fields: dict[str, Any] = {
        name: value if name in _FLOAT_FIELDS else int(value)
        for name, value in zip(STATISTICS_FIELDS, row, strict=True)
    }
    return TargetStatistics(target_id=target_id, **fields)


def statistics_row(statistics: TargetStatistics) -> list[float]:
    """One TargetStatistics as a row of :data:`STATISTICS_FIELDS`."""
    return [float(getattr(statistics, name)) for name in STATISTICS_FIELDS]
