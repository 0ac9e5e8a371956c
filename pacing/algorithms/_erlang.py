"""Erlang B and Erlang-A (M/M/N+M) in log space, and the root search for PREDICTIVE_B's
operating load (§5).

Everything is in units of the service rate μ, so that the queue is described by three numbers:

    N  servers (slots)                 a = λ/μ   offered load
    r = θ/μ  patience ratio (mean handle time over mean patience)

and, with x = N/r and y = a/r (algorithm.md §5)::

    log B(N, a) = log PoissonPMF(N; a) − log PoissonCDF(N; a)
    A(x, y)     = Σ_k y^k / Π_{i≤k}(x + i) = x·e^y·y^(−x)·γ(x, y)
    P(wait > 0) = A·B / (1 + (A − 1)·B) = expit(−L),  L = −log B + log1p(−B) − log A
    P(abandon)  = P(wait > 0) · (1 − (A − 1)/(A·ρ)),  ρ = a/N

Each formula switches to a series where its closed form would underflow or cancel, so the result
is exact to about 1e-12 for 1–400 slots (a test checks it against the birth–death chain) and stays
finite far beyond.

:func:`solve_operating_load` finds the operating point a* = λ*/μ of a goal by a vectorised
bracketing root search in log a (ITP: bisection's worst case, about a third of its evaluations);
:mod:`pacing.algorithms._operating_points` solves it once per point of a grid and caches it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, gammainc, gammaincc, gammaln

Array = NDArray[np.float64]

#: Series are summed until a term is below this fraction of the sum (or _MAX_TERMS is reached,
#: which only happens far outside any contact centre, where finiteness is all that matters).
_SERIES_TOLERANCE = 1e-18
_MAX_TERMS = 4096
_SERIES_BLOCK = 64
#: The root search runs over this range of loads per slot for every goal (fixed, so that the
#: bisection is monotone in the goal): λ ≤ Nμ/(1 − g) ≤ 1000·Nμ for every goal up to 99.9 %.
_LOWEST_LOAD_PER_SLOT = 1e-6
_HIGHEST_LOAD_PER_SLOT = 1e3
_BISECTION_STEPS = 44  # log(1e9) / 2^44 ≈ 1e-12: far below any estimate's precision
#: The root search ends when its bracket in log a is as narrow as 44 halvings would leave it.
_ROOT_HALF_WIDTH = np.log(_HIGHEST_LOAD_PER_SLOT / _LOWEST_LOAD_PER_SLOT) / 2.0 ** (
    _BISECTION_STEPS + 1
)
#: ITP's truncation δ = κ₁·width² (κ₂ = 2), width in log a. Measured on 2,000 grid points of the
#: simulator's kind (N 1–250, r 2^±4, abandonment and busy goals): κ₁ = 0.5 needs 15 evaluations
#: per point on average (bisection 44), 1.0 16, 2.0 17; the paper's 0.2/width ≈ 0.01 leaves
#: one-sided regula falsi steps (most points took 45).
_ITP_KAPPA = 0.5


class ErlangA(NamedTuple):
    """Steady state of M/M/N+M for arrays of (N, a, r)."""

    wait_probability: Array  # P(wait > 0)
    abandon_probability: Array  # P_ab: share of arrivals that abandon
    occupancy: Array  # a·(1 − P_ab)/N: share of slot time busy


def log_erlang_b(servers: Array, load: Array) -> Array:
    """log B(N, a), the Erlang B blocking probability, for N ≥ 1 and a > 0."""
    with np.errstate(all="ignore"):
        log_pmf = servers * np.log(load) - load - gammaln(servers + 1.0)
        cdf = gammaincc(servers + 1.0, load)  # P(Poisson(a) ≤ N)
        log_b: Array = log_pmf - np.log(cdf)
        # Where the CDF underflows (a far above N), 1/B = Σ_i N!/(N − i)! · a^(−i), whose terms
        # shrink at least as fast as (N/a)^i.
        fallback = np.flatnonzero(~(cdf > 1e-300) & (servers >= 0) & (load > 0))
        if fallback.size:
            log_b[fallback] = -np.log(_inverse_erlang_b(servers[fallback], load[fallback]))
    return log_b


def _inverse_erlang_b(servers: Array, load: Array) -> Array:
    """1/B = Σ_{i=0..N} N!/(N − i)! · a^(−i), for rows with a far above N (terms shrink fast)."""
    total = np.ones(servers.size)
    term = np.ones(servers.size)
    active = np.arange(servers.size)
    for i in range(1, _MAX_TERMS + 1):
        term[active] *= np.maximum(servers[active] - i + 1.0, 0.0) / load[active]
        total[active] += term[active]
        active = active[term[active] > _SERIES_TOLERANCE * total[active]]
        if not active.size:
            break
    return total


def _log_a(x: Array, y: Array) -> tuple[Array, Array]:
    """(log A, P(abandon | wait > 0)) for A(x, y) = Σ_k t_k, t_k = y^k / Π_{i≤k}(x + i).

    P(abandon | wait > 0) = 1 − (A − 1)/(A·ρ) with ρ = y/x. Where ρ ≥ 1 it is computed as
    (ρ − 1 + 1/A)/ρ, a sum of non-negative terms. Where ρ < 1 that form cancels (A·(1 − ρ) is
    close to 1 for patient visitors), but the series gives it without cancellation:
    1 − A·(1 − ρ) = Σ_k k·t_k / x, so P(abandon | wait > 0) = Σ_k k·t_k / (y·Σ_k t_k). The series
    is also exact for log A where γ(x, y) underflows or loses digits (y well below x); its terms
    shrink at least as fast as ρ^k, and past k ≈ x as fast as 2^(−k).
    """
    with np.errstate(all="ignore"):
        lower = gammainc(x, y)
        log_a: Array = np.log(x) + y - x * np.log(y) + gammaln(x) + np.log(lower)
        rho = y / x
        given_wait: Array = (rho - 1.0 + np.exp(-log_a)) / rho
        series = np.flatnonzero((y < x) | ~(lower > 1e-300))
        if series.size:
            total, moment = _moment_series(x[series], y[series])
            log_a[series] = np.log(total)
            given_wait[series] = moment / (y[series] * total)
    return log_a, np.clip(given_wait, 0.0, 1.0)


def _moment_series(x: Array, y: Array) -> tuple[Array, Array]:
    """(Σ_k t_k, Σ_k k·t_k) with t_0 = 1 and t_k = t_(k−1) · y/(x + k), row by row.

    Terms are summed in blocks of _SERIES_BLOCK (a cumulative product per block: the Python loop
    runs once per block, not per term) until a block no longer changes either sum; a row still
    active after _MAX_TERMS terms (ρ within 1 % of 1 and visitors thousands of times more
    patient than handle times) gets the geometric tail at its last ratio, an upper bound.
    """
    total = np.ones(x.size)
    moment = np.zeros(x.size)
    active = np.arange(x.size)
    xs, ys, last = x, y, np.ones(x.size)
    offsets = np.arange(1, _SERIES_BLOCK + 1, dtype=np.float64)
    for start in range(0, _MAX_TERMS, _SERIES_BLOCK):
        k = start + offsets
        terms = last[:, None] * np.cumprod(ys[:, None] / (xs[:, None] + k), axis=1)
        total[active] += terms.sum(axis=1)
        # a row-wise sum, not `terms @ k`: BLAS sums in an order that depends on how many rows
        # are in the batch, so a grid point's last bit depended on what was solved with it
        moment[active] += (terms * k).sum(axis=1)
        last = terms[:, -1]
        going = k[-1] * last > _SERIES_TOLERANCE * moment[active]
        if not going.all():
            active, xs, ys, last = active[going], xs[going], ys[going], last[going]
            if not active.size:
                break
    else:
        ratio = ys / (xs + _MAX_TERMS)
        tail = last * ratio / (1.0 - ratio)
        total[active] += tail
        moment[active] += tail * (_MAX_TERMS + 1.0 / (1.0 - ratio))
    return total, moment


def erlang_a(servers: Array, load: Array, patience_ratio: Array) -> ErlangA:
    """Erlang-A (M/M/N+M) for N servers, offered load a = λ/μ and patience ratio r = θ/μ.

    Arrays of one length (or broadcastable); N ≥ 1, a > 0, r > 0.
    """
    servers, load, patience_ratio = np.broadcast_arrays(
        np.asarray(servers, dtype=np.float64),
        np.asarray(load, dtype=np.float64),
        np.asarray(patience_ratio, dtype=np.float64),
    )
    servers, load, patience_ratio = (
        np.ravel(servers).copy(),
        np.ravel(load).copy(),
        np.ravel(patience_ratio).copy(),
    )
    with np.errstate(all="ignore"):
        log_b = log_erlang_b(servers, load)
        log_a, abandon_given_wait = _log_a(servers / patience_ratio, load / patience_ratio)
        logit = -log_b + np.log1p(-np.exp(log_b)) - log_a
        wait = expit(-logit)
        abandon = np.clip(wait * abandon_given_wait, 0.0, 1.0)
        occupancy = np.clip(load * (1.0 - abandon) / servers, 0.0, 1.0)
    return ErlangA(wait_probability=wait, abandon_probability=abandon, occupancy=occupancy)


def solve_operating_load(
    servers: Array, patience_ratio: Array, goal: Array, *, busy_factor: NDArray[np.bool_]
) -> Array:
    """a* by a bracketing root search in log a, uncached (see
    :func:`pacing.algorithms._operating_points.operating_point` for the quantised form).

    ABANDONMENT_RATE rows: the largest a with P_ab(a) ≤ goal. BUSY_FACTOR rows: the smallest a
    with occupancy(a) ≥ goal. Both predicates are monotone in a (P_ab and the throughput
    a·(1 − P_ab) both grow with the load), and the bracket is the same for every goal, so a* never
    decreases when the goal rises. A goal that cannot be met inside the bracket gives its end.

    The bracket shrinks by ITP steps (Oliveira & Takahashi, ACM TOMS 47(1), 2020): a regula falsi
    point on log P_ab − log goal (log occupancy for BUSY_FACTOR), nudged towards the midpoint and
    kept within a radius of it that shrinks like bisection's. Each step keeps the side of the
    predicate, so the answer is the same bracket end as bisection's to the same width, after at
    most one evaluation more than bisection and, measured on grid points, a third of them. Where
    the interpolation is undefined (a side where P_ab underflows to 0) the step is bisection's.
    """
    servers, patience_ratio, goal, busy = (
        np.ravel(column).copy()
        for column in np.broadcast_arrays(
            np.asarray(servers, dtype=np.float64),
            np.asarray(patience_ratio, dtype=np.float64),
            np.asarray(goal, dtype=np.float64),
            np.asarray(busy_factor, dtype=bool),
        )
    )
    low = np.log(_LOWEST_LOAD_PER_SLOT * servers)
    high = np.log(_HIGHEST_LOAD_PER_SLOT * servers)
    with np.errstate(divide="ignore"):
        log_goal = np.log(goal)
    # the function's value at each end, for the interpolation (unknown at the start: NaN)
    at_low = np.full(servers.size, math.nan)
    at_high = np.full(servers.size, math.nan)
    active = np.arange(servers.size)
    most_steps = _BISECTION_STEPS + 1  # ITP's n_max = n_½ + n₀ with n₀ = 1
    for step in range(most_steps + 1):
        if not active.size:
            break
        a, b, ya, yb = low[active], high[active], at_low[active], at_high[active]
        width = b - a
        middle = 0.5 * (a + b)
        radius = np.maximum(_ROOT_HALF_WIDTH * 2.0 ** (most_steps - step) - 0.5 * width, 0.0)
        with np.errstate(all="ignore"):
            falsi = (yb * a - ya * b) / (yb - ya)
        falsi = np.where(np.isfinite(falsi) & (falsi > a) & (falsi < b), falsi, middle)
        toward = np.sign(middle - falsi)
        truncation = _ITP_KAPPA * width**2
        nudged = np.where(truncation <= np.abs(middle - falsi), falsi + toward * truncation, middle)
        probe = np.where(np.abs(nudged - middle) <= radius, nudged, middle - toward * radius)

        rows = busy[active]
        state = erlang_a(servers[active], np.exp(probe), patience_ratio[active])
        value = np.where(rows, state.occupancy, state.abandon_probability)
        # "Below" means on the side of a* where the abandonment goal holds / the busy goal does
        # not yet: the answer is the boundary between the two sides.
        below = np.where(rows, value < goal[active], value <= goal[active])
        with np.errstate(divide="ignore"):
            level = np.log(value) - log_goal[active]
        low[active] = np.where(below, probe, a)
        at_low[active] = np.where(below, level, ya)
        high[active] = np.where(below, b, probe)
        at_high[active] = np.where(below, yb, level)
        active = active[high[active] - low[active] > 2.0 * _ROOT_HALF_WIDTH]
    return np.where(busy, np.exp(high), np.exp(low))
