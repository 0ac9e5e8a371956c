"""The shortcuts taken for small calls give exactly what the general code gives."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from pacing.algorithms import _super_progressive as sp
from pacing.algorithms._state import clip_or


@pytest.mark.parametrize("seed", range(20))
def test_last_true_table_matches_bisection_even_when_not_monotone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    low = rng.integers(0, 10, n).astype(float)
    high = low + rng.integers(0, 40, n)
    monotone = seed % 2 == 0
    boundary = low + rng.integers(0, 40, n)
    noise = rng.random((n, 200)) < 0.3  # an arbitrary, non-monotone probe on odd seeds

    def probe(rows: NDArray[np.intp], at: NDArray[np.float64]) -> NDArray[np.bool_]:
        if monotone:
            return np.asarray(at <= boundary[rows])
        return np.asarray(noise[rows, at.astype(np.intp)])

    rows = np.arange(n)
    table = sp._last_true(probe, rows, low, high)
    bisection = sp._bisect_last_true(probe, rows, low, high)
    assert np.array_equal(table, bisection)


def test_window_blocks_give_the_same_sums_alone_or_grouped() -> None:
    rng = np.random.default_rng(3)
    trials = np.floor(rng.uniform(0, 400, 300))
    q = rng.uniform(0.01, 0.99, 300)
    headroom = np.floor(rng.uniform(-20, 60, 300)) + rng.choice([0.0, 0.5], 300)
    survival = rng.uniform(1e-4, 2.0, 300)
    grouped = sp.expected_queue_abandonments(trials, q, headroom, survival)
    alone = np.array(
        [
            sp.expected_queue_abandonments(
                trials[i : i + 1], q[i : i + 1], headroom[i : i + 1], survival[i : i + 1]
            )[0]
            for i in range(300)
        ]
    )
    np.testing.assert_allclose(grouped, alone, rtol=1e-13, atol=1e-13)


def test_clip_or_is_nan_to_num_then_clip() -> None:
    values = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 0.5, 2.0, 1e308])
    for low, high, nan in [(0.0, 1.0, 1.0), (0.0, 1.0, 0.0), (-5.0, 3.0, 0.0), (0.1, 3600.0, 10.0)]:
        expected = np.clip(np.nan_to_num(values, nan=nan, posinf=high, neginf=low), low, high)
        assert np.array_equal(clip_or(values, low, high, nan), expected)
