"""PREDICTIVE_B's operating points (§5): a grid of exact solutions, cached per process.

The operating point a* = λ*/μ depends only on (N, r, goal), so it is solved once per point of a
grid (every N, r in steps of 1/16 octave, the goal to 0.01 %) by a vectorised bracketing root
search in log a (ITP: bisection's worst case, about a third of its evaluations), kept in a
process-wide cache (:class:`OperatingPoints`) and interpolated in log r between grid
points. The answer never depends on what was cached before: every grid point has one value.

The solver and the queue's formulas are :mod:`pacing.algorithms._erlang`; this module quantises
(N, r, goal), solves the missing grid points there, keeps them (:data:`OPERATING_POINTS`) and
interpolates. :func:`operating_point` is what the pacing rule calls.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from pacing.algorithms._erlang import Array, erlang_a, solve_operating_load

#: Goals are clipped to this range (a 0 % goal would mean no traffic at all, 100 % no limit).
GOAL_RANGE = (1e-4, 0.999)
#: Operating points are solved on a grid of 1/_RATIO_STEPS of an octave in r (about 4.4 %) and
#: interpolated in between, so that a drifting estimate of θ·h keeps hitting the cache.
_RATIO_STEPS = 16
_RATIO_OCTAVES = 24  # r is clipped to 2^±24: patience or handle times beyond a day are noise
_GOAL_STEPS = 10_000  # goals quantised to 0.01 %
_MAX_SERVERS = 2**20
_CACHE_LIMIT = 1_000_000
#: What :meth:`OperatingPoints.presolve` covers: groups of up to 256 slots and patience ratios
#: r = θ·h from 1/64 to 64 (handle times up to 64 times shorter or longer than patience), so
#: 256 × 193 grid points (1.2 MB of cache) per (goal, objective).
PRESOLVE_MAX_SERVERS = 256
PRESOLVE_RATIO_OCTAVES = (-6, 6)


class OperatingPoint(NamedTuple):
    """The operating point of each row: a* = λ*/μ and the abandonment probability there."""

    load: Array
    abandon_probability: Array


_EMPTY_TABLE: tuple[NDArray[np.int64], Array] = (np.empty(0, dtype=np.int64), np.empty((0, 2)))


class OperatingPoints:
    """A cache of operating points keyed on (N, quantised r, quantised goal, objective).

    One instance per process (:data:`OPERATING_POINTS`); lookups are vectorised with a sorted key
    array, and only the distinct missing keys are solved. ``busy_ceiling`` is the abandonment
    ceiling of BUSY_FACTOR rows (a parameter, so it keys the cache too).

    Safe for the threads of one process (a ``--pool threads`` worker): each ceiling's sorted keys
    and their values are one tuple, replaced whole under a lock, so a reader always holds a
    matching pair and two threads storing at once lose nothing.
    """

    def __init__(self) -> None:
        self._tables: dict[float, tuple[NDArray[np.int64], Array]] = {}
        self._lock = threading.Lock()
        # points solved here and not yet handed to export_fresh(): other processes' caches
        # can absorb them instead of solving them again
        self._fresh: list[tuple[float, NDArray[np.int64], Array]] = []

    def clear(self) -> None:
        """Forget everything (tests; and automatically past _CACHE_LIMIT entries)."""
        with self._lock:
            self._tables.clear()
            self._fresh.clear()

    def export_fresh(self) -> list[tuple[float, NDArray[np.int64], Array]]:
        """The (busy ceiling, keys, (a*, P_ab*) rows) solved since the last call."""
        with self._lock:
            fresh, self._fresh = self._fresh, []
        return fresh

    def absorb(self, busy_ceiling: float, keys: NDArray[np.int64], values: Array) -> int:
        """Add points solved elsewhere (by this very code: a grid point has one value).

        Returns how many were new here. Keys already cached keep their value.
        """
        known, _ = self._table(busy_ceiling)
        new = ~_found(known, keys)
        if not new.any():
            return 0
        keys, first = np.unique(keys[new], return_index=True)
        self._store(busy_ceiling, keys, values[new][first])
        return int(keys.size)

    def keys(self, busy_ceiling: float) -> NDArray[np.int64]:
        """The sorted keys cached for ``busy_ceiling``."""
        return self._table(busy_ceiling)[0]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(keys) for keys, _ in self._tables.values())

    def _table(self, busy_ceiling: float) -> tuple[NDArray[np.int64], Array]:
        return self._tables.get(busy_ceiling, _EMPTY_TABLE)

    def lookup(
        self,
        servers: Array,
        patience_ratio: Array,
        goal: Array,
        *,
        busy_factor: NDArray[np.bool_],
        busy_ceiling: float,
    ) -> OperatingPoint:
        """The operating point of every row (inputs must be finite, N ≥ 1, r > 0).

        a* and P_ab* are interpolated linearly in log r between the two neighbouring points of
        the ratio grid, each solved exactly once per (N, goal, objective).
        """
        n_index = np.clip(np.rint(servers), 1, _MAX_SERVERS - 1).astype(np.int64)
        limit = _RATIO_OCTAVES * _RATIO_STEPS
        with np.errstate(all="ignore"):
            position = np.log2(patience_ratio) * _RATIO_STEPS
        position = np.clip(np.nan_to_num(position, nan=0.0), -limit, limit - 1)
        lower = np.floor(position)
        weight = position - lower
        g_index = _goal_index(goal)
        objective = np.asarray(busy_factor, dtype=np.int64)
        r_index = lower.astype(np.int64)
        found = self._grid(
            np.concatenate([n_index, n_index]),
            np.concatenate([r_index, r_index + 1]),
            np.concatenate([g_index, g_index]),
            np.concatenate([objective, objective]),
            busy_ceiling,
        )
        rows = n_index.size
        blended = found[:rows] * (1.0 - weight)[:, None] + found[rows:] * weight[:, None]
        return OperatingPoint(load=blended[:, 0], abandon_probability=blended[:, 1])

    def presolve(
        self,
        goal: float,
        busy_factor: bool,
        *,
        busy_ceiling: float,
        max_servers: int = PRESOLVE_MAX_SERVERS,
        ratio_octaves: tuple[int, int] = PRESOLVE_RATIO_OCTAVES,
        chunk: int = 8192,
    ) -> int:
        """Solve the grid points of one (goal, objective) for N in 1…``max_servers`` and r
        within ``ratio_octaves`` octaves of 1 that are not cached yet; returns how many.

        Lookups there never solve afterwards, so a cycle pays nothing for targets that leave
        cold start or whose estimates drift. Each value is the one a lookup would solve.
        """
        g_index = _goal_index(np.array([goal]))
        limit = _RATIO_OCTAVES * _RATIO_STEPS
        r_steps = np.arange(
            max(ratio_octaves[0] * _RATIO_STEPS, -limit),
            min(ratio_octaves[1] * _RATIO_STEPS, limit) + 1,
            dtype=np.int64,
        )
        n_steps = np.arange(1, min(max_servers, _MAX_SERVERS - 1) + 1, dtype=np.int64)
        n_grid, r_grid = (a.ravel() for a in np.meshgrid(n_steps, r_steps, indexing="ij"))
        keys = _key(
            n_grid,
            r_grid,
            np.repeat(g_index, n_grid.size),
            np.full(n_grid.size, int(busy_factor), dtype=np.int64),
        )
        known, _ = self._table(busy_ceiling)
        missing = np.flatnonzero(~_found(known, keys))
        for start in range(0, missing.size, chunk):
            self._solve(busy_ceiling, keys[missing[start : start + chunk]])
        return int(missing.size)

    def _grid(
        self,
        n_index: NDArray[np.int64],
        r_index: NDArray[np.int64],
        g_index: NDArray[np.int64],
        objective: NDArray[np.int64],
        busy_ceiling: float,
    ) -> Array:
        """(a*, P_ab*) at grid points, solving the distinct ones not cached yet.

        A solve is a few dozen vectorised root-search steps whose fixed cost dominates for small
        batches (measured on the benchmark machine: one point 2 ms, 50 points 6 ms, 500 points
        13 ms; 9, 16 and 38 ms by bisection), so with every missing point its neighbours
        (N ± 2, r ± 4 steps) are solved too: estimates that drift and staffing that changes by
        an agent or two then hit.
        """
        key = _key(n_index, r_index, g_index, objective)
        keys, values = self._table(busy_ceiling)
        # Normally one pass. A second one only if the table that took the solved points was
        # emptied first (past _CACHE_LIMIT, here or by another thread) and lost the hits.
        passes = 0
        while not (hit := _found(keys, key)).all():
            if passes == 2:
                raise RuntimeError(
                    f"One lookup needs more operating points than the cache holds "
                    f"({_CACHE_LIMIT:,}); look up fewer rows at a time."
                )
            passes += 1
            rows = np.flatnonzero(~hit)
            # every missing row with each of its neighbours: row-major (row, ΔN, Δr), so that
            # the first neighbour of each row is the row's own point
            limit = _RATIO_OCTAVES * _RATIO_STEPS
            spread = _NEAR_N.size * _NEAR_R.size
            n_near = np.repeat(n_index[rows], spread) + np.tile(_NEAR_DN, rows.size)
            r_near = np.repeat(r_index[rows], spread) + np.tile(_NEAR_DR, rows.size)
            n_near = np.clip(n_near, 1, _MAX_SERVERS - 1)
            r_near = np.clip(r_near, -limit, limit)
            g_near = np.repeat(g_index[rows], spread)
            o_near = np.repeat(objective[rows], spread)
            near = _key(n_near, r_near, g_near, o_near)
            new = ~_found(keys, near)
            missing = np.unique(near[new])
            # the table the solved points went into, whatever other threads store meanwhile
            keys, values = self._solve(busy_ceiling, missing)
        grid_values: Array = values[np.searchsorted(keys, key)]
        return grid_values

    def _solve(
        self, busy_ceiling: float, keys: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], Array]:
        """Solve the grid points ``keys`` (distinct, not cached yet), cache them and keep them
        for :meth:`export_fresh`; returns the ceiling's table that holds them."""
        n_index, r_index, g_index, objective = _unkey(keys)
        solved = _solve_quantised(
            n_index.astype(np.float64),
            np.exp2(r_index / _RATIO_STEPS),
            g_index / _GOAL_STEPS,
            busy_factor=objective == 1,
            busy_ceiling=busy_ceiling,
        )
        table = self._store(busy_ceiling, keys, solved)
        with self._lock:
            self._fresh.append((busy_ceiling, keys, solved))
        return table

    def _store(
        self, busy_ceiling: float, new_keys: NDArray[np.int64], new_values: Array
    ) -> tuple[NDArray[np.int64], Array]:
        """Merge points into the ceiling's table, keeping the keys sorted and distinct (another
        thread may have stored some of them since the caller looked); returns the new table."""
        with self._lock:
            keys, values = self._table(busy_ceiling)
            fresh = ~_found(keys, new_keys)
            new_keys, new_values = new_keys[fresh], new_values[fresh]
            if keys.size + new_keys.size > _CACHE_LIMIT:
                keys, values = _EMPTY_TABLE
            keys = np.concatenate([keys, new_keys])
            values = np.concatenate([values, new_values])
            order = np.argsort(keys, kind="stable")
            table = (keys[order], values[order])
            self._tables[busy_ceiling] = table
            return table


# N ± 2 and r ± 4 steps (a quarter octave): 45 points per missing row. Measured on the
# simulator's 10,000 targets over 100 cycles from a cold cache (benchmarks' stack, 2 s apart):
# against N ± 1, r ± 2 (15 points), 38 % fewer solves while targets leave cold start and half as
# many later, for about the same number of points solved in all (see _grid for the cost).
_NEAR_N = np.array([0, -1, 1, -2, 2], dtype=np.int64)
_NEAR_R = np.array([0, -1, 1, -2, 2, -3, 3, -4, 4], dtype=np.int64)
#: every (ΔN, Δr) pair, ΔN-major
_NEAR_DN = np.repeat(_NEAR_N, _NEAR_R.size)
_NEAR_DR = np.tile(_NEAR_R, _NEAR_N.size)


def _goal_index(goal: Array) -> NDArray[np.int64]:
    """Goals quantised to the grid's steps (clipped to GOAL_RANGE)."""
    low_goal, high_goal = GOAL_RANGE
    return np.rint(np.clip(goal, low_goal, high_goal) * _GOAL_STEPS).astype(np.int64)


def _key(
    n_index: NDArray[np.int64],
    r_index: NDArray[np.int64],
    g_index: NDArray[np.int64],
    objective: NDArray[np.int64],
) -> NDArray[np.int64]:
    limit = _RATIO_OCTAVES * _RATIO_STEPS
    key = (n_index * (2 * limit + 1) + (r_index + limit)) * (_GOAL_STEPS + 1) + g_index
    return key * 2 + objective


def _unkey(
    key: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(N, r step, goal step, objective) of grid keys: the inverse of :func:`_key`."""
    limit = _RATIO_OCTAVES * _RATIO_STEPS
    rest, objective = np.divmod(key, 2)
    rest, g_index = np.divmod(rest, _GOAL_STEPS + 1)
    n_index, r_offset = np.divmod(rest, 2 * limit + 1)
    return n_index, r_offset - limit, g_index, objective


def _found(keys: NDArray[np.int64], wanted: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which of ``wanted`` are in the sorted ``keys``."""
    position = np.searchsorted(keys, wanted)
    inside = position < keys.size
    found = np.zeros(wanted.size, dtype=bool)
    found[inside] = keys[position[inside]] == wanted[inside]
    return found


def _solve_quantised(
    servers: Array,
    patience_ratio: Array,
    goal: Array,
    *,
    busy_factor: NDArray[np.bool_],
    busy_ceiling: float,
) -> Array:
    """(a*, P_ab(a*)) per row; BUSY_FACTOR rows are held under the abandonment ceiling."""
    load = solve_operating_load(servers, patience_ratio, goal, busy_factor=busy_factor)
    ceiling = np.flatnonzero(busy_factor)
    if ceiling.size:
        capped = solve_operating_load(
            servers[ceiling],
            patience_ratio[ceiling],
            np.full(ceiling.size, busy_ceiling),
            busy_factor=np.zeros(ceiling.size, dtype=bool),
        )
        load[ceiling] = np.minimum(load[ceiling], capped)
    abandon = erlang_a(servers, load, patience_ratio).abandon_probability
    return np.column_stack([load, abandon])


#: The process-wide cache of operating points (deterministic: see the module docstring).
OPERATING_POINTS = OperatingPoints()


def operating_point(
    servers: Array,
    patience_ratio: Array,
    goal: Array,
    *,
    busy_factor: NDArray[np.bool_],
    busy_ceiling: float = 0.2,
) -> OperatingPoint:
    """a* and P_ab(a*) per row from the process-wide cache (§5.1, §5.2)."""
    return OPERATING_POINTS.lookup(
        np.asarray(servers, dtype=np.float64),
        np.asarray(patience_ratio, dtype=np.float64),
        np.asarray(goal, dtype=np.float64),
        busy_factor=np.asarray(busy_factor, dtype=bool),
        busy_ceiling=float(busy_ceiling),
    )
