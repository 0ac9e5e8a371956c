"""SUPER_PROGRESSIVE (algorithm.md §4): the largest budget whose extra abandonments stay in goal.

For one target, with headroom c = F − Q (capacity free within the acceptance horizon, minus the
queue), pending invitations P, acceptance probability q and survival exponent a = −log r::

    S(m)     = m − r(1 − r^m)/(1 − r)                  expected abandonments of m queued visitors
    φ(k)     = S(max(0, k − c))                        ... once k more visitors have accepted
    E_ab(n)  = E[φ(K_n)] − φ(0),  K_n ~ BetaBinomial(P + n, α, β)
    slack(n) = g'·q·(P + n) − E_ab(n)                  g' = goal · e^β (§6), q = α / (α + β)

and the budget is the largest n ≤ cap with slack(n) ≥ 0, scanning n upward from 0 and stopping at
the first violation.

The acceptances are beta-binomial, not binomial: q is itself an estimate, the mean of a Beta
posterior whose α + β (the *concentration*) is the prior's weight plus the resolved invitations
remembered (_estimators). A target that has seen thousands of invitations knows q, and the law is
binomial in all but name; a target in its cold start knows only the prior (α + β = 20), and a
pipeline of 50 invitations may bring 5 or 25 visitors. Budgets then ramp up as the feedback
arrives instead of trusting the prior all at once (algorithm.md §2, cold start): with the binomial,
a group whose true p was 0.58 against the prior's 0.25 queued 2.3 times what it could take.

Why a bisection gives exactly that scan: φ is convex in k (S is convex and increasing from
S(0) = 0), a binomial mixture of a convex function is convex in the number of trials, and so
E_ab is convex in M = P + n with value 0 at M = 0. Hence E_ab(M)/M never decreases and slack
stays negative once it is negative: the feasible n form one interval [0, n*]. Rows are solved all
at once by a vectorised bisection that drops finished rows; cheap bounds (every acceptance fits →
feasible; Jensen's inequality → infeasible) narrow the bracket before any binomial sum is taken,
so a 10,000-target call costs a few exact evaluations per row instead of one per candidate n.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.special import betaln, gammaln

Array = NDArray[np.float64]
_Probe = Callable[[NDArray[np.intp], Array], NDArray[np.bool_]]

#: The binomial sum is taken over mean ± (8 sd + 16): the mass left out is below 1e-15 of the
#: total even for the skewed, Poisson-like rows with a tiny mean (the +16).
_TAIL_SDS = 8.0
_TAIL_PAD = 16.0
#: Rows are summed in blocks of similar window width so that one wide row does not pad thousands
#: of narrow ones; windows wider than the last block (sd above ~30, i.e. thousands of pending
#: invitations) are summed on a strided grid by the midpoint rule instead of exactly.
_WINDOW_BLOCKS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_BLOCK_WIDTHS = np.array(_WINDOW_BLOCKS, dtype=np.float64)
#: Blocks share one pmf table while that pads it by at most this many terms: a separate table
#: costs a few dozen NumPy calls, worth a few thousand terms of padding.
_PAD_LIMIT = 2048
#: _last_true probes every candidate at once when that is at most this many probes.
_TABLE_LIMIT = 1024
#: q = 1 makes the odds q / (1 − q) infinite; a hair below 1 keeps every term finite.
_Q_MAX = 1.0 - 1e-12


def queue_abandonments(queued: Array, survival_exponent: Array) -> Array:
    """S(m): expected abandonments among ``queued`` visitors waiting in positions 1..m (§4.2).

    ``survival_exponent`` is a = −log r, so r = e^(−a); the form m + expm1(−a·m)/expm1(a) is
    the same as m − r(1 − r^m)/(1 − r) without its cancellation when r is close to 1.
    """
    with np.errstate(over="ignore"):
        return _queue_abandonments(queued, survival_exponent, np.expm1(survival_exponent))


def _queue_abandonments(queued: Array, survival: Array, expm1_survival: Array) -> Array:
    # S(m) with expm1(a) given: the bisections evaluate it for the same rows many times.
    abandonments: Array = queued + np.expm1(-survival * queued) / expm1_survival
    return abandonments


def survival_exponent(servers: Array, handle_time: Array, abandon_rate: Array) -> Array:
    """a = −log r with r = Nμ / (Nμ + θ), computed as log1p(θ·h / N) (§4.2)."""
    return np.log1p(abandon_rate * handle_time / servers)


def expected_queue_abandonments(
    trials: Array,
    accept_probability: Array,
    headroom: Array,
    survival: Array,
    concentration: Array | None = None,
) -> Array:
    """E[S(max(0, K − c))] for K ~ BetaBinomial(trials, q·κ, (1 − q)·κ), row by row (§4.3).

    ``concentration`` κ = α + β per row; None, infinite or beyond 1e7 (where the two laws
    differ by less than the arithmetic does) is the binomial of q. ``trials`` must hold
    non-negative integers; every argument is a 1-D array of one length.
    """
    with np.errstate(all="ignore"):
        q = np.clip(accept_probability, 0.0, _Q_MAX)
        kappa = _concentration(concentration, trials.shape)
        mean = trials * q
        variance = (
            mean * (1.0 - q) * np.where(np.isfinite(kappa), (kappa + trials) / (kappa + 1.0), 1.0)
        )
        spread = _TAIL_SDS * np.sqrt(variance) + _TAIL_PAD
        # Only k > c queues anybody, so the sum starts at the first integer above the headroom.
        first = np.maximum(np.floor(headroom) + 1.0, np.maximum(np.ceil(mean - spread), 0.0))
        last = np.minimum(trials, np.floor(mean + spread))
        width = last - first + 1.0
        expected = np.zeros_like(trials)
        # A row's block is the narrowest at least as wide as its window; one sort-free pass
        # instead of a mask per block (empty and NaN windows sum nothing).
        block = np.searchsorted(_BLOCK_WIDTHS, width)
        block[~(width > 0)] = -1
        counts = np.bincount(block + 1, minlength=len(_WINDOW_BLOCKS) + 2)[1:]
        columns = (trials, q, kappa, first, width, headroom, survival)

        def window_of(rows: NDArray[np.intp]) -> _Window:
            return _Window(*(column[rows] for column in columns))

        for members in _groups(counts[:-1]):
            rows = np.flatnonzero((block >= members[0]) & (block <= members[-1]))
            expected[rows] = _window_sums(window_of(rows), block[rows], members)
        if counts[-1]:
            rows = np.flatnonzero(block == len(_WINDOW_BLOCKS))
            expected[rows] = _strided_sum(window_of(rows))
    return expected


def _groups(counts: NDArray[np.intp]) -> list[list[int]]:
    """The blocks in use, gathered into groups that share one padded pmf table.

    A group is as wide as its widest block; a block joins the group below it while the padding
    this adds stays under _PAD_LIMIT terms, which costs less than a separate table would.
    """
    groups: list[list[int]] = []
    rows = 0
    for index in np.flatnonzero(counts).tolist():
        width = _WINDOW_BLOCKS[index]
        if groups and rows * (width - _WINDOW_BLOCKS[groups[-1][-1]]) <= _PAD_LIMIT:
            groups[-1].append(index)
            rows += int(counts[index])
        else:
            groups.append([index])
            rows = int(counts[index])
    return groups


@functools.lru_cache(maxsize=128)
def _offsets(width: int) -> Array:
    """0, 1, …, width − 1 as float (cached: built once per block width; never written to)."""
    offsets = np.arange(width, dtype=np.float64)
    offsets.flags.writeable = False
    return offsets


#: Beyond this concentration the beta-binomial is the binomial to within rounding (its variance
#: differs by a factor 1 + M/κ), and betaln of such arguments would lose the difference anyway.
_BINOMIAL_CONCENTRATION = 1e7


def _concentration(concentration: Array | None, shape: tuple[int, ...]) -> Array:
    """κ per row, infinite (the binomial) where none is given or it is beyond the threshold."""
    if concentration is None:
        return np.full(shape, np.inf)
    kappa = np.asarray(concentration, dtype=np.float64)
    usable = np.isfinite(kappa) & (kappa > 0) & (kappa < _BINOMIAL_CONCENTRATION)
    return np.where(usable, kappa, np.inf)


def _log_pmf(k: Array, trials: Array, q: Array, kappa: Array) -> Array:
    """log P(K = k): binomial where κ is infinite, else beta-binomial with α = qκ, β = (1 − q)κ."""
    # Called under the errstate of expected_queue_abandonments (log(0) for q = 0 is fine).
    log_choose = gammaln(trials + 1.0) - gammaln(k + 1.0) - gammaln(trials - k + 1.0)
    binomial = k * np.log(q) + (trials - k) * np.log1p(-q)
    finite = np.isfinite(kappa)
    if not finite.any():
        log_pmf: Array = log_choose + binomial
        return log_pmf
    alpha = np.where(finite, q * kappa, 1.0)
    beta = np.where(finite, (1.0 - q) * kappa, 1.0)
    beta_binomial = betaln(k + alpha, trials - k + beta) - betaln(alpha, beta)
    log_pmf = log_choose + np.where(finite, beta_binomial, binomial)
    return log_pmf


class _Window(NamedTuple):
    """The rows of one block: K ~ BetaBinomial(trials, qκ, (1 − q)κ) (binomial where κ is
    infinite), summed over first .. first + width − 1."""

    trials: Array
    q: Array
    kappa: Array
    first: Array
    width: Array
    headroom: Array
    survival: Array


def _window_sums(window: _Window, block: NDArray[np.intp], members: list[int]) -> Array:
    # Exact sum over k = first .. first + B − 1, B the width of the row's block (terms past the
    # row's window are negligible but true, and the pmf is exactly 0 past k = M). The pmf is
    # built from its first term by the ratio pmf(k)/pmf(k − 1) = (M − k + 1)/k · q/(1 − q): no
    # transcendental per term, and the window starts within 8 sd of the mean, so the first term
    # is far from underflow.
    #
    # S is not evaluated per term either. With m_j = m_0 + j and ρ = e^(−a):
    #   Σ pmf_j S(m_j) = m_0 Σ pmf_j + Σ j pmf_j − (Σ pmf_j − e^(−a m_0) Σ pmf_j ρ^j) / expm1(a)
    # and pmf_j ρ^j is the cumulative product of the ratios times ρ: three row sums in all.
    # The subtraction loses about 1e-16 / a absolutely, far below any goal even for a = 1e-8.
    #
    # The rows of several blocks share one table as wide as the widest (cumulative products do
    # not depend on how far they run), but each block is summed over its own width only, so a
    # row's result does not depend on which other blocks were in its group.
    trials, q, kappa, first, _, headroom, survival = window
    widest = _WINDOW_BLOCKS[members[-1]]
    k = first[:, None] + _offsets(widest)
    terms = np.empty((2, len(trials), widest))  # [0] the pmf's ratios, [1] the tilted ones
    ratio = terms[0]
    np.divide(trials[:, None] + 1.0 - k, k, out=ratio)
    finite = np.isfinite(kappa)
    if finite.any():
        # beta-binomial: pmf(k)/pmf(k − 1) = (M − k + 1)/k · (α + k − 1)/(β + M − k)
        alpha = np.where(finite, q * kappa, 1.0)[:, None]
        beta = np.where(finite, (1.0 - q) * kappa, 1.0)[:, None]
        tilt = np.where(
            finite[:, None],
            (alpha + k - 1.0) / (beta + trials[:, None] - k),
            (q / (1.0 - q))[:, None],
        )
        ratio *= tilt
    else:
        ratio *= (q / (1.0 - q))[:, None]
    np.maximum(ratio, 0.0, out=ratio)
    ratio[:, 0] = np.exp(_log_pmf(first, trials, q, kappa))
    np.multiply(ratio, np.exp(-survival)[:, None], out=terms[1])
    terms[1, :, 0] = ratio[:, 0]
    products = np.cumprod(terms, axis=2)  # [0] pmf, [1] pmf·ρ^j
    if len(members) == 1:
        sums = products.sum(axis=2)
        moment = products[0] @ _offsets(widest)
    else:
        sums = np.empty((2, len(trials)))
        moment = np.empty(len(trials))
        for index in members:
            width = _WINDOW_BLOCKS[index]
            rows = np.flatnonzero(block == index)
            part = products[:, rows, :width]
            sums[:, rows] = part.sum(axis=2)
            moment[rows] = part[0] @ _offsets(width)
    mass, tilted_mass = sums
    queued = first - headroom  # m_0 > 0: the window starts above the headroom
    survivors = (mass - np.exp(-survival * queued) * tilted_mass) / np.expm1(survival)
    total: Array = queued * mass + moment - survivors
    return total


def _strided_sum(window: _Window) -> Array:
    # Very wide windows (sd in the dozens): the pmf is smooth on the scale of the stride, so the
    # midpoint rule on 512 points is accurate to far better than the goal needs.
    trials, q, kappa, first, width, headroom, survival = window
    points = _WINDOW_BLOCKS[-1]
    stride = np.ceil(width / points)
    offsets = np.arange(points, dtype=np.float64)
    k = first[:, None] + offsets * stride[:, None] + (stride[:, None] - 1.0) / 2.0
    inside = k <= (first + width - 1.0)[:, None]
    log_pmf = _log_pmf(np.minimum(k, trials[:, None]), trials[:, None], q[:, None], kappa[:, None])
    weight = np.where(inside, np.exp(log_pmf) * stride[:, None], 0.0)
    abandonments = queue_abandonments(k - headroom[:, None], survival[:, None])
    total: Array = np.einsum("ij,ij->i", weight, abandonments)
    return total


def super_progressive_budget(
    *,
    headroom: Array,
    pending: Array,
    accept_probability: Array,
    survival: Array,
    allowance: Array,
    cap: Array,
    interpolate: bool,
    accept_concentration: Array | None = None,
) -> Array:
    """The budget x ∈ [0, cap] of §4.4, before rounding, for every row.

    ``headroom`` is c = F − Q, ``pending`` P (non-negative integers), ``survival`` a = −log r,
    ``allowance`` g' = goal · e^β and ``cap`` the per-target maximum (non-negative integers);
    ``accept_concentration`` the α + β of q's posterior (None: q is known, the binomial).
    The result is the integer n*; with ``interpolate`` it is n* plus the fraction of the next
    invitation at which the slack, linear between n* and n* + 1, reaches zero, which the
    fractional carry turns into a rate below one invitation per cycle (§2).
    """
    budget = np.zeros(len(headroom))
    with np.errstate(all="ignore"):
        finite = (
            np.isfinite(headroom)
            & np.isfinite(pending)
            & np.isfinite(accept_probability)
            & np.isfinite(survival)
            & np.isfinite(allowance)
            & np.isfinite(cap)
        )
        # Each acceptance costs at most one abandonment (S' ≤ 1), so E_ab(n) ≤ q·(P + n): with
        # g' ≥ 1 nothing can violate the goal.
        unbounded = finite & (allowance >= 1.0)
        budget[unbounded] = cap[unbounded]
        todo = np.flatnonzero(finite & ~unbounded & (cap > 0))
        if todo.size:
            kappa = _concentration(accept_concentration, headroom.shape)
            problem = _Problem(
                headroom=headroom[todo],
                pending=pending[todo],
                q=np.clip(accept_probability[todo], 0.0, _Q_MAX),
                kappa=kappa[todo],
                survival=survival[todo],
                allowance=allowance[todo],
                cap=cap[todo],
            )
            budget[todo] = _solve(problem, interpolate=interpolate)
    budget = np.where(np.isfinite(budget), budget, 0.0)
    return np.clip(budget, 0.0, np.maximum(cap, 0.0))


class _Problem:
    """The constants of the rows being solved, and the slack and its cheap bounds at (row, n)."""

    def __init__(
        self,
        *,
        headroom: Array,
        pending: Array,
        q: Array,
        kappa: Array,
        survival: Array,
        allowance: Array,
        cap: Array,
    ) -> None:
        self.headroom = headroom
        self.pending = pending
        self.q = q
        self.kappa = kappa
        self.survival = survival
        self.allowance = allowance
        self.cap = cap
        self.expm1_survival = np.expm1(survival)
        self.baseline = self.abandonments(np.arange(cap.size), np.maximum(-headroom, 0.0))  # φ(0)

    def abandonments(self, rows: NDArray[np.intp], queued: Array) -> Array:
        """S(queued) for ``rows`` (the caller holds an errstate ignoring overflow)."""
        return _queue_abandonments(queued, self.survival[rows], self.expm1_survival[rows])

    def slack(self, rows: NDArray[np.intp], n: Array) -> Array:
        """g'·q·(P + n) − E_ab(n), exactly."""
        trials = self.pending[rows] + n
        expected = expected_queue_abandonments(
            trials, self.q[rows], self.headroom[rows], self.survival[rows], self.kappa[rows]
        )
        return self.allowance[rows] * self.q[rows] * trials - (expected - self.baseline[rows])

    def surely_infeasible(self, rows: NDArray[np.intp], n: Array) -> NDArray[np.bool_]:
        """True where Jensen's inequality E[φ(K)] ≥ φ(E[K]) already proves slack(n) < 0."""
        mean = self.q[rows] * (self.pending[rows] + n)
        lower = self.abandonments(rows, np.maximum(mean - self.headroom[rows], 0.0))
        return bool_array(lower - self.baseline[rows] > self.allowance[rows] * mean)

    def surely_feasible(self, rows: NDArray[np.intp], n: Array) -> NDArray[np.bool_]:
        """True where an upper bound on E_ab(n) already proves slack(n) ≥ 0.

        φ is convex, so it lies under its chord over the support: for c ≥ 0,
        φ(k) ≤ s·(k − c)⁺ with s = S(M − c)/(M − c), and E[(K − c)⁺] is at most
        ((μ − c) + √(σ² + (μ − c)²))/2 for any law of mean μ and variance σ²; for c < 0,
        φ(k) ≤ φ(0) + (φ(M) − φ(0))·k/M.
        """
        c = self.headroom[rows]
        q = self.q[rows]
        trials = self.pending[rows] + n
        mean = q * trials
        excess = np.maximum(trials - c, 0.0)
        top = self.abandonments(rows, excess)  # φ(M)
        kappa = self.kappa[rows]
        variance = (
            mean * (1.0 - q) * np.where(np.isfinite(kappa), (kappa + trials) / (kappa + 1.0), 1.0)
        )
        beyond = mean - c
        tail = 0.5 * (beyond + np.sqrt(variance + beyond * beyond))
        bound = np.where(
            c >= 0,
            np.where(excess > 0, top / excess * tail, 0.0),
            (top - self.baseline[rows]) / trials * mean,
        )
        return bool_array(bound <= self.allowance[rows] * mean)


def _solve(problem: _Problem, *, interpolate: bool) -> Array:
    """Budgets for the rows of ``problem`` (see super_progressive_budget)."""
    everyone = np.arange(problem.cap.size)
    pending, cap = problem.pending, problem.cap
    # Lower end. While every pending and new invitation could be accepted without queueing
    # anybody (P + n ≤ c) E_ab = 0; with nothing pending, E_ab(0) = 0. Either way n is feasible.
    fits = problem.headroom >= pending
    low = np.where(fits, np.minimum(np.floor(problem.headroom - pending), cap), 0.0)
    low_slack = np.where(
        fits | (pending == 0), problem.allowance * problem.q * (pending + low), np.nan
    )
    proven = ~np.isnan(low_slack)
    # The pending invitations alone may already break the goal; Jensen shows most such rows.
    hopeless = ~proven & problem.surely_infeasible(everyone, low)
    # Cheap bounds narrow the bracket before any binomial sum is taken.
    raised = _last_true(problem.surely_feasible, everyone, low, cap + 1.0)
    moved = raised > low
    low = np.where(moved, raised, low)
    low_slack[moved] = np.nan
    proven |= moved
    high = _last_true(lambda rows, n: ~problem.surely_infeasible(rows, n), everyone, low, cap + 1.0)
    high += 1.0  # the first n Jensen proves infeasible, or the sentinel cap + 1
    high_slack = np.full(cap.size, np.nan)

    # Bisection on the exact slack; finished rows drop out.
    active = np.flatnonzero(~hopeless & (high - low > 1))
    while active.size:
        middle = np.floor((low[active] + high[active]) / 2.0)
        value = problem.slack(active, middle)
        feasible = value >= 0
        low[active[feasible]] = middle[feasible]
        low_slack[active[feasible]] = value[feasible]
        proven[active[feasible]] = True
        high[active[~feasible]] = middle[~feasible]
        high_slack[active[~feasible]] = value[~feasible]
        active = active[high[active] - low[active] > 1]

    # What is still unknown, in one last round: whether n = 0 is feasible at all where nothing
    # proved it, and the slack at both ends of the bracket where the fraction needs it.
    inside = ~hopeless & (high <= cap)
    need_low = ~hopeless & np.isnan(low_slack) & (~proven | (interpolate & inside))
    need_high = interpolate & inside & np.isnan(high_slack)
    rows = np.concatenate([np.flatnonzero(need_low), np.flatnonzero(need_high)])
    if rows.size:
        at = np.concatenate([low[need_low], high[need_high]])
        values = problem.slack(rows, at)
        count = int(need_low.sum())
        low_slack[rows[:count]] = values[:count]
        high_slack[rows[count:]] = values[count:]

    result = low.copy()
    if interpolate:
        fraction = low_slack / (low_slack - high_slack)
        usable = inside & (low_slack >= 0) & np.isfinite(fraction)
        result[usable] += np.clip(fraction[usable], 0.0, 1.0 - 1e-9)
    result[hopeless | (low_slack < 0)] = 0.0
    return result


def _last_true(probe: _Probe, rows: NDArray[np.intp], low: Array, high: Array) -> Array:
    """Per row, the last n in [low, high) where ``probe`` holds, by bisection on cheap bounds.

    ``probe(low)`` is taken as true and ``high`` is never probed (it may be a sentinel). Where
    ``probe`` is not monotone the answer is still a point where it holds, or ``low``.
    """
    candidates = np.maximum(high - low - 1.0, 0.0)  # low + 1 .. high − 1
    widest = int(candidates.max(initial=0.0))
    if 0 < rows.size * widest <= _TABLE_LIMIT:
        # Few rows (a small shard): one probe of every candidate costs less than the dozen
        # NumPy calls of each bisection step. Where the probe holds on a prefix of the
        # candidates, which is the usual case, the bisection would end on the last of them.
        n = low[:, None] + 1.0 + _offsets(widest)
        holds = probe(np.repeat(rows, widest), n.ravel()).reshape(n.shape)
        holds &= n < high[:, None]
        prefix = np.all(holds[:, 1:] <= holds[:, :-1], axis=1)
        result: Array = low + np.count_nonzero(holds, axis=1)
        others = np.flatnonzero(~prefix)
        if others.size:
            result[others] = _bisect_last_true(probe, rows[others], low[others], high[others])
        return result
    return _bisect_last_true(probe, rows, low, high)


def _bisect_last_true(probe: _Probe, rows: NDArray[np.intp], low: Array, high: Array) -> Array:
    """_last_true by bisection: one probe of every active row per halving of the bracket."""
    low = low.copy()
    high = high.copy()
    active = np.flatnonzero(high - low > 1)
    while active.size:
        middle = np.floor((low[active] + high[active]) / 2.0)
        holds = probe(rows[active], middle)
        low[active[holds]] = middle[holds]
        high[active[~holds]] = middle[~holds]
        active = active[high[active] - low[active] > 1]
    return low


def bool_array(values: object) -> NDArray[np.bool_]:
    """``values`` as a boolean array (keeps mypy's view of comparisons precise)."""
    return np.asarray(values, dtype=bool)
