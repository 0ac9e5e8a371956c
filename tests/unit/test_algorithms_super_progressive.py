"""SUPER_PROGRESSIVE's mathematics against brute force (algorithm.md §4)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from pacing.algorithms._super_progressive import (
    expected_queue_abandonments,
    queue_abandonments,
    super_progressive_budget,
)


def brute_queue_abandonments(m: int, r: float) -> float:
    """Position j waits for j completions and survives each with probability r."""
    return sum(1.0 - r**j for j in range(1, m + 1))


def closed_form(m: float, r: float) -> float:
    return float(m - r * (1.0 - r**m) / (1.0 - r))


def brute_expected(trials: int, q: float, headroom: float, r: float) -> float:
    """E[S(max(0, K − c))] by enumerating every value of K ~ Binomial(trials, q)."""
    return sum(
        math.comb(trials, k)
        * q**k
        * (1.0 - q) ** (trials - k)
        * closed_form(max(0.0, k - headroom), r)
        for k in range(trials + 1)
    )


def brute_slack(
    n: int, /, *, headroom: float, pending: int, q: float, r: float, goal: float
) -> float:
    base = closed_form(max(0.0, -headroom), r)
    extra = brute_expected(pending + n, q, headroom, r) - base
    return goal * q * (pending + n) - extra


def brute_budget(
    *, headroom: float, pending: int, q: float, r: float, goal: float, cap: int
) -> int:
    """§4.4 literally: scan n upward from 0 and stop at the first violation."""
    n = -1
    while (
        n < cap and brute_slack(n + 1, headroom=headroom, pending=pending, q=q, r=r, goal=goal) >= 0
    ):
        n += 1
    return max(n, 0)


def solve(
    *, headroom: float, pending: int, q: float, r: float, goal: float, cap: int, interpolate: bool
) -> float:
    return float(
        super_progressive_budget(
            headroom=np.array([headroom]),
            pending=np.array([float(pending)]),
            accept_probability=np.array([q]),
            survival=np.array([-math.log(r)]),
            allowance=np.array([goal]),
            cap=np.array([float(cap)]),
            interpolate=interpolate,
        )[0]
    )


@pytest.mark.parametrize("r", [0.05, 0.25, 0.5, 0.9, 0.999])
def test_queue_abandonments_match_the_sum_over_positions(r: float) -> None:
    # given
    queued = np.arange(0, 40, dtype=np.float64)

    # when
    computed = queue_abandonments(queued, np.full(queued.shape, -math.log(r)))

    # then
    expected = [brute_queue_abandonments(int(m), r) for m in queued]
    np.testing.assert_allclose(computed, expected, rtol=1e-10, atol=1e-12)


def test_queue_abandonments_stay_exact_when_nobody_loses_patience() -> None:
    # given: r = 1 − 1e-9, where the textbook form cancels catastrophically
    survival = np.array([1e-9])

    # when
    computed = queue_abandonments(np.array([10.0]), survival)

    # then: S(m) ≈ a·m(m + 1)/2 for small a
    assert computed[0] == pytest.approx(1e-9 * 55, rel=1e-4)


@pytest.mark.parametrize(
    ("trials", "q", "headroom", "r"),
    [
        (0, 0.25, -2.0, 0.25),
        (1, 0.25, 0.0, 0.25),
        (5, 0.25, 0.4, 0.6),
        (12, 0.05, 1.0, 0.9),
        (30, 0.5, 8.3, 0.75),
        (30, 0.99, 28.0, 0.5),
        (60, 0.25, -3.5, 0.95),
        (400, 0.25, 90.0, 0.985),
        (400, 0.02, 3.0, 0.985),
    ],
)
def test_expected_abandonments_match_enumeration(
    trials: int, q: float, headroom: float, r: float
) -> None:
    # given
    arguments = (
        np.array([float(trials)]),
        np.array([q]),
        np.array([headroom]),
        np.array([-math.log(r)]),
    )

    # when
    computed = expected_queue_abandonments(*arguments)[0]

    # then
    assert computed == pytest.approx(brute_expected(trials, q, headroom, r), rel=1e-9, abs=1e-12)


def test_very_wide_windows_stay_accurate() -> None:
    # given: thousands of trials, summed on a strided grid
    trials, q, headroom, r = 20_000, 0.3, 5_950.0, 0.99
    log_pmf = [
        math.lgamma(trials + 1)
        - math.lgamma(k + 1)
        - math.lgamma(trials - k + 1)
        + k * math.log(q)
        + (trials - k) * math.log1p(-q)
        for k in range(trials + 1)
    ]
    exact = sum(
        math.exp(lp) * closed_form(max(0.0, k - headroom), r) for k, lp in enumerate(log_pmf)
    )

    # when
    computed = expected_queue_abandonments(
        np.array([float(trials)]), np.array([q]), np.array([headroom]), np.array([-math.log(r)])
    )[0]

    # then
    assert computed == pytest.approx(exact, rel=1e-4)


def grid() -> list[tuple[float, int, float, float, float, int]]:
    rng = np.random.default_rng(20240601)
    cases = []
    for _ in range(150):
        cases.append(
            (
                round(float(rng.uniform(-4, 12)), 3),
                int(rng.integers(0, 25)),
                round(float(rng.uniform(0.02, 0.98)), 3),
                round(float(rng.uniform(0.05, 0.995)), 3),
                float(rng.choice([0.01, 0.03, 0.1, 0.5])),
                int(rng.integers(0, 45)),
            )
        )
    return cases


@pytest.mark.parametrize(("headroom", "pending", "q", "r", "goal", "cap"), grid())
def test_budget_is_the_upward_scan_of_the_specification(
    headroom: float, pending: int, q: float, r: float, goal: float, cap: int
) -> None:
    # given
    case: dict[str, Any] = {"headroom": headroom, "pending": pending, "q": q, "r": r, "goal": goal}
    scanned = brute_budget(**case, cap=cap)

    # when
    integer = solve(**case, cap=cap, interpolate=False)
    fractional = solve(**case, cap=cap, interpolate=True)

    # then
    assert integer == scanned
    if scanned < cap and brute_slack(0, **case) >= 0:
        here, beyond = brute_slack(scanned, **case), brute_slack(scanned + 1, **case)
        assert fractional == pytest.approx(scanned + here / (here - beyond), abs=1e-7)
    else:
        assert fractional == scanned


def test_one_free_slot_gets_one_invitation_and_a_busy_one_none() -> None:
    # given: p = 0.25, d = 10 s, h = 180 s, patience 60 s: r = μ / (μ + θ) = 0.25
    r = (1 / 180) / (1 / 180 + 1 / 60)
    freed = 1.0 - math.exp(-10 / 180)

    # when
    free = solve(headroom=1.0, pending=0, q=0.25, r=r, goal=0.03, cap=50, interpolate=False)
    busy = solve(headroom=freed, pending=0, q=0.25, r=r, goal=0.03, cap=50, interpolate=False)

    # then
    assert (free, busy) == (1.0, 0.0)


def test_a_goal_of_one_or_more_allows_the_whole_cap() -> None:
    # given / when
    budget = solve(headroom=-5.0, pending=10, q=0.5, r=0.5, goal=1.5, cap=17, interpolate=True)

    # then
    assert budget == 17.0


def test_many_rows_are_solved_like_one() -> None:
    # given
    cases = grid()
    arrays = {
        "headroom": np.array([c[0] for c in cases]),
        "pending": np.array([float(c[1]) for c in cases]),
        "accept_probability": np.array([c[2] for c in cases]),
        "survival": -np.log(np.array([c[3] for c in cases])),
        "allowance": np.array([c[4] for c in cases]),
        "cap": np.array([float(c[5]) for c in cases]),
    }

    # when
    together = super_progressive_budget(**arrays, interpolate=True)

    # then
    alone = [
        solve(headroom=c[0], pending=c[1], q=c[2], r=c[3], goal=c[4], cap=c[5], interpolate=True)
        for c in cases
    ]
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-12)


# --- q uncertain: beta-binomial acceptances ---------------------------------------------------


def brute_beta_binomial_expected(
    trials: int, q: float, kappa: float, headroom: float, r: float
) -> float:
    """E[S(max(0, K − c))] by enumerating K ~ BetaBinomial(trials, qκ, (1 − q)κ)."""
    alpha, beta = q * kappa, (1.0 - q) * kappa

    def log_beta(a: float, b: float) -> float:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    return sum(
        math.comb(trials, k)
        * math.exp(log_beta(k + alpha, trials - k + beta) - log_beta(alpha, beta))
        * closed_form(max(0.0, k - headroom), r)
        for k in range(trials + 1)
    )


@pytest.mark.parametrize(
    ("trials", "q", "kappa", "headroom", "r"),
    [
        (1, 0.25, 20.0, 0.0, 0.25),
        (12, 0.25, 20.0, 2.0, 0.9),
        (50, 0.25, 20.0, 10.0, 0.97),
        (200, 0.4, 120.0, 60.0, 0.985),
        (600, 0.25, 20.0, 150.0, 0.98),  # a strided window: sd in the dozens
        (30, 0.5, 1e5, 8.3, 0.75),
    ],
)
def test_beta_binomial_expectations_match_enumeration(
    trials: int, q: float, kappa: float, headroom: float, r: float
) -> None:
    # given / when
    computed = expected_queue_abandonments(
        np.array([float(trials)]),
        np.array([q]),
        np.array([headroom]),
        np.array([-math.log(r)]),
        np.array([kappa]),
    )[0]

    # then (the strided rule of the widest windows is approximate, by design)
    expected = brute_beta_binomial_expected(trials, q, kappa, headroom, r)
    assert computed == pytest.approx(expected, rel=1e-3 if trials >= 600 else 1e-9, abs=1e-12)


def test_an_uncertain_acceptance_probability_sends_fewer_and_a_known_one_as_many() -> None:
    # given: 40 free slots, nothing pending, q = 0.25 from the prior alone, from 400 resolved
    # invitations, and known exactly
    def budget(concentration: float | None) -> float:
        return float(
            super_progressive_budget(
                headroom=np.array([40.0]),
                pending=np.array([0.0]),
                accept_probability=np.array([0.25]),
                survival=np.array([-math.log(0.97)]),
                allowance=np.array([0.03]),
                cap=np.array([1000.0]),
                interpolate=False,
                accept_concentration=None if concentration is None else np.array([concentration]),
            )[0]
        )

    # when
    prior, learnt, known = budget(20.0), budget(420.0), budget(None)

    # then: the less sure, the fewer; the binomial is the limit
    assert prior < learnt <= known
    assert budget(1e9) == known
