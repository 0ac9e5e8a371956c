"""Erlang B, Erlang-A and the operating-point solvers against brute force (algorithm.md §5)."""

from __future__ import annotations

import itertools
import math
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from pacing.algorithms import _erlang as erlang_module
from pacing.algorithms import _operating_points as operating_points_module
from pacing.algorithms._erlang import erlang_a, log_erlang_b, solve_operating_load
from pacing.algorithms._operating_points import OperatingPoints, operating_point


def birth_death(servers: int, load: float, patience_ratio: float) -> tuple[float, float, float]:
    """(P(wait > 0), P(abandon), occupancy) of the truncated birth–death chain of M/M/N+M.

    Rates in units of μ: up a, down min(k, N) + max(k − N, 0)·r. The chain is truncated where
    its stationary weights have fallen by e^(−80) from their peak (asserted, not assumed).
    """
    queue_peak = max(0.0, (load - servers) / patience_ratio)
    spread = math.sqrt((load + servers) / patience_ratio) + 1.0
    states = int(servers + queue_peak + 40.0 * spread + 200)
    k = np.arange(1, states + 1, dtype=np.float64)
    down = np.minimum(k, servers) + np.maximum(k - servers, 0.0) * patience_ratio
    log_weight = np.concatenate([[0.0], np.cumsum(math.log(load) - np.log(down))])
    assert log_weight[-1] < log_weight.max() - 80.0, "truncated too early"
    probability = np.exp(log_weight - logsumexp(log_weight))
    count = np.arange(states + 1)
    wait = float(probability[count >= servers].sum())
    queued = float((probability * np.maximum(count - servers, 0)).sum())
    busy = float((probability * np.minimum(count, servers)).sum())
    return wait, patience_ratio * queued / load, busy / servers


def random_cases(count: int, seed: int) -> list[tuple[int, float, float]]:
    """(N, a, r): 1–400 slots, loads from 50 % to 300 % of capacity, patience from 50× shorter
    than the handle time to 50× longer (log-uniform)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        servers = int(rng.integers(1, 401))
        utilisation = math.exp(rng.uniform(math.log(0.5), math.log(3.0)))
        ratio = math.exp(rng.uniform(math.log(0.02), math.log(50.0)))
        cases.append((servers, utilisation * servers, ratio))
    return cases


def test_erlang_a_matches_the_birth_death_chain_over_random_cases() -> None:
    # given
    cases = [*random_cases(260, seed=20261126), (1, 0.5, 1.0), (400, 380.0, 0.02), (2, 6.0, 50.0)]
    servers, load, ratio = (
        np.array(column, dtype=np.float64) for column in zip(*cases, strict=True)
    )

    # when
    computed = erlang_a(servers, load, ratio)

    # then
    checked = 0
    for index, case in enumerate(cases):
        wait, abandon, occupancy = birth_death(*case)
        if abandon <= 1e-6:
            continue
        checked += 1
        assert computed.abandon_probability[index] == pytest.approx(abandon, rel=1e-9), case
        assert computed.wait_probability[index] == pytest.approx(wait, rel=1e-9), case
        assert computed.occupancy[index] == pytest.approx(occupancy, rel=1e-9), case
    assert checked >= 200


def test_erlang_b_matches_the_textbook_recursion_even_far_above_capacity() -> None:
    # given: B_k = a·B_(k−1)/(k + a·B_(k−1)), including loads where the Poisson CDF underflows
    cases = [(1, 0.3), (10, 7.0), (100, 95.0), (400, 350.0), (5, 2000.0), (50, 40_000.0)]

    for servers, load in cases:
        blocking = 1.0
        for k in range(1, servers + 1):
            blocking = load * blocking / (k + load * blocking)

        # when
        computed = math.exp(log_erlang_b(np.array([float(servers)]), np.array([load]))[0])

        # then
        assert computed == pytest.approx(blocking, rel=1e-11), (servers, load)


def test_abandonment_and_occupancy_grow_with_the_load() -> None:
    # given
    load = np.linspace(0.5, 60.0, 200)

    # when
    state = erlang_a(np.full(200, 30.0), load, np.full(200, 3.0))

    # then
    assert (np.diff(state.abandon_probability) > 0).all()
    assert (np.diff(state.occupancy) > 0).all()
    assert ((state.occupancy > 0) & (state.occupancy < 1)).all()


def test_extreme_inputs_stay_finite() -> None:
    # given: huge groups, absurd loads, patience a million times shorter or longer than service
    servers = np.array([1.0, 1e5, 1e5, 1.0, 400.0, 7.0])
    load = np.array([1e-9, 1e5, 1e8, 1e6, 399.0, 7.0])
    ratio = np.array([1e-6, 1e-6, 1e6, 1e-6, 1e-3, 1.0])

    # when
    state = erlang_a(servers, load, ratio)

    # then
    for values in state:
        assert np.isfinite(values).all()
        assert ((values >= 0) & (values <= 1)).all()


def test_abandonment_operating_point_meets_the_goal_exactly() -> None:
    # given
    servers = np.array([1.0, 5.0, 30.0, 100.0, 300.0])
    ratio = np.full(5, 3.0)  # 180 s handle time, 60 s patience

    # when
    load = solve_operating_load(servers, ratio, np.full(5, 0.03), busy_factor=np.zeros(5, bool))

    # then
    abandon = erlang_a(servers, load, ratio).abandon_probability
    assert abandon == pytest.approx(np.full(5, 0.03), rel=1e-9)
    assert (load < servers / (1 - 0.03)).all()  # the bracket of §5


def test_busy_factor_operating_point_is_the_smallest_load_that_reaches_the_goal() -> None:
    # given
    servers = np.array([2.0, 30.0, 100.0])
    ratio = np.full(3, 3.0)

    # when
    load = solve_operating_load(servers, ratio, np.full(3, 0.8), busy_factor=np.ones(3, bool))

    # then
    occupancy = erlang_a(servers, load, ratio).occupancy
    assert occupancy == pytest.approx(np.full(3, 0.8), rel=1e-9)
    assert (load >= 0.8 * servers).all()  # the bracket of §5


def test_operating_load_never_falls_when_the_goal_rises() -> None:
    # given
    goals = np.linspace(0.01, 0.5, 50)

    # when
    load = solve_operating_load(
        np.full(50, 12.0), np.full(50, 0.7), goals, busy_factor=np.zeros(50, bool)
    )

    # then
    assert (np.diff(load) > 0).all()


def bisection_reference(
    servers: np.ndarray, ratio: np.ndarray, goal: np.ndarray, busy: np.ndarray
) -> np.ndarray:
    """a* by 44 plain halvings of the same bracket in log a (the solver's definition)."""
    low, high = np.log(1e-6 * servers), np.log(1e3 * servers)
    for _ in range(44):
        middle = 0.5 * (low + high)
        state = erlang_a(servers, np.exp(middle), ratio)
        below = np.where(busy, state.occupancy < goal, state.abandon_probability <= goal)
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    return np.where(busy, np.exp(high), np.exp(low))


def grid_cases(count: int, seed: int) -> tuple[np.ndarray, ...]:
    """(N, r, goal, busy) as the pacing grid sees them: 1–250 slots, r on the 1/16-octave grid
    within 2^±4, the usual abandonment and busy goals."""
    rng = np.random.default_rng(seed)
    servers = rng.integers(1, 251, count).astype(np.float64)
    ratio = 2.0 ** (rng.integers(-64, 65, count) / 16)
    goal = rng.choice([0.02, 0.03, 0.05, 0.1, 0.8, 0.85, 0.9], count)
    return servers, ratio, goal, goal > 0.5


def test_the_root_search_ends_where_bisection_does_in_a_third_of_the_evaluations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given
    servers, ratio, goal, busy = grid_cases(600, seed=5)
    evaluated = []
    real = erlang_module.erlang_a

    def counting(n: np.ndarray, a: np.ndarray, r: np.ndarray) -> Any:
        evaluated.append(np.size(n))
        return real(n, a, r)

    monkeypatch.setattr(erlang_module, "erlang_a", counting)

    # when
    load = solve_operating_load(servers, ratio, goal, busy_factor=busy)

    # then: the same answer to the bracket's final width (1.2e-12 in log a) …
    monkeypatch.undo()
    reference = bisection_reference(servers, ratio, goal, busy)
    np.testing.assert_allclose(load, reference, rtol=3e-12)
    # … from far fewer evaluations than bisection's 44 per point, and never more than 45
    assert sum(evaluated) < 20 * servers.size
    assert len(evaluated) <= 45


# Where Erlang-A is exact (1–400 slots, patience 50× shorter to 50× longer than handle times,
# as checked against the birth–death chain above). Far outside it, e.g. 980 slots with visitors
# 100,000× more patient, the truncated series makes P_ab jump down at ρ = 1, the predicate is
# not monotone there, and two searches may stop at different crossings (test above: finite and
# inside the bracket is what holds there).
@settings(max_examples=40, deadline=None)
@given(
    servers=st.integers(1, 400),
    ratio=st.floats(0.02, 50.0),
    goal=st.floats(1e-4, 0.999),
    busy=st.booleans(),
)
def test_the_root_search_agrees_with_bisection_where_erlang_a_is_exact(
    servers: int, ratio: float, goal: float, busy: bool
) -> None:
    # given
    columns = (np.array([float(servers)]), np.array([ratio]), np.array([goal]))

    # when
    load = solve_operating_load(*columns, busy_factor=np.array([busy]))

    # then: both end on the boundary of the same predicate, to its numerical resolution
    reference = bisection_reference(*columns, np.array([busy]))
    assert load[0] == pytest.approx(reference[0], rel=1e-9)


def test_the_cache_interpolates_between_exact_grid_points() -> None:
    # given
    cache = OperatingPoints()
    servers = np.array([30.0, 30.0, 100.0, 30.0])
    ratio = np.array([3.0, 3.0, 3.0, 3.0])
    goal = np.array([0.03, 0.03, 0.05, 0.8])
    busy = np.array([False, False, False, True])

    # when
    first = cache.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)
    solved = len(cache)
    second = cache.lookup(
        servers[::-1], ratio[::-1], goal[::-1], busy_factor=busy[::-1], busy_ceiling=0.2
    )

    # then: the second lookup solved nothing new; the points are 1/16 octave apart
    assert len(cache) == solved
    np.testing.assert_array_equal(second.load, first.load[::-1])
    below, above = (
        2.0 ** (np.floor(np.log2(3.0) * 16) / 16),
        2.0 ** (np.ceil(np.log2(3.0) * 16) / 16),
    )
    exact = solve_operating_load(
        np.array([30.0, 30.0]),
        np.array([below, above]),
        np.array([0.03, 0.03]),
        busy_factor=np.zeros(2, dtype=bool),
    )
    assert min(exact) <= first.load[0] <= max(exact)
    truth = solve_operating_load(servers[:1], ratio[:1], goal[:1], busy_factor=busy[:1])
    assert first.load[0] == pytest.approx(truth[0], rel=1e-4)
    assert first.abandon_probability[0] == pytest.approx(0.03, rel=1e-9)


def test_busy_factor_is_held_under_the_abandonment_ceiling() -> None:
    # given: a goal of 99 % busy would need visitors to abandon massively
    servers = np.array([10.0])

    # when
    point = operating_point(
        servers, np.array([3.0]), np.array([0.99]), busy_factor=np.array([True]), busy_ceiling=0.1
    )

    # then
    assert point.abandon_probability[0] == pytest.approx(0.1, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    servers=st.integers(1, 1000),
    utilisation=st.floats(1e-6, 1e3),
    ratio=st.floats(1e-5, 1e5),
    goal=st.floats(1e-4, 0.999),
    busy=st.booleans(),
)
def test_any_operating_point_is_finite_and_inside_its_bracket(
    servers: int, utilisation: float, ratio: float, goal: float, busy: bool
) -> None:
    # given
    slots = np.array([float(servers)])

    # when
    state = erlang_a(slots, slots * utilisation, np.array([ratio]))
    point = operating_point(
        slots, np.array([ratio]), np.array([goal]), busy_factor=np.array([busy])
    )

    # then
    for values in (*state, point.abandon_probability):
        assert np.isfinite(values).all()
        assert ((values >= 0) & (values <= 1)).all()
    assert 0 < point.load[0] <= 1000 * servers


def test_a_lookup_that_solves_gives_what_a_warm_cache_gives() -> None:
    # given: rows far apart in N and r, so each miss brings its own neighbours (a miss once
    # paired one row's N with another row's r and answered from the nearest cached point)
    servers = np.array([5.0, 30.0, 100.0, 7.0, 250.0])
    ratio = np.array([0.3, 1.0, 2.0, 0.05, 8.0])
    goal = np.array([0.03, 0.05, 0.8, 0.1, 0.02])
    busy = np.array([False, False, True, False, False])
    cold = OperatingPoints()

    # when
    first = cold.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)
    again = cold.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)

    # then
    np.testing.assert_array_equal(first.load, again.load)
    np.testing.assert_array_equal(first.abandon_probability, again.abandon_probability)
    on_grid = np.array([False, True, False, False, False])  # r = 1 is a grid point
    exact = solve_operating_load(
        servers[on_grid], ratio[on_grid], goal[on_grid], busy_factor=busy[on_grid]
    )
    assert first.load[on_grid][0] == pytest.approx(exact[0], rel=1e-12)


def test_points_solved_by_one_cache_serve_another_unchanged() -> None:
    # given
    servers = np.array([12.0, 40.0, 90.0])
    ratio = np.array([0.5, 1.5, 3.0])
    goal = np.array([0.03, 0.05, 0.85])
    busy = np.array([False, False, True])
    solver, reader = OperatingPoints(), OperatingPoints()
    solved = solver.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)

    # when
    shared = solver.export_fresh()
    absorbed = sum(reader.absorb(ceiling, keys, values) for ceiling, keys, values in shared)
    read = reader.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)

    # then: the reader solved nothing and answers exactly as the solver did
    assert absorbed == len(solver) > 0
    assert reader.export_fresh() == []
    assert solver.export_fresh() == []  # exported once
    np.testing.assert_array_equal(read.load, solved.load)
    assert reader.absorb(*shared[0]) == 0  # nothing new the second time


def test_a_presolved_grid_answers_every_lookup_inside_it_as_a_cold_cache_would() -> None:
    # given
    warm, cold = OperatingPoints(), OperatingPoints()
    solved = warm.presolve(0.05, False, busy_ceiling=0.2, max_servers=40, ratio_octaves=(-2, 2))
    warm.export_fresh()
    rng = np.random.default_rng(11)
    servers = rng.integers(1, 41, 200).astype(np.float64)
    ratio = 2.0 ** rng.uniform(-1.9, 1.9, 200)
    goal, busy = np.full(200, 0.05), np.zeros(200, dtype=bool)

    # when
    presolved = warm.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)
    solving = cold.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)

    # then: nothing was solved at lookup time, and the answers are the grid's
    assert solved == 40 * (4 * 16 + 1)
    assert warm.export_fresh() == []
    assert len(warm) == solved
    np.testing.assert_array_equal(presolved.load, solving.load)
    np.testing.assert_array_equal(presolved.abandon_probability, solving.abandon_probability)
    assert warm.presolve(0.05, False, busy_ceiling=0.2, max_servers=40, ratio_octaves=(-2, 2)) == 0


def test_a_grid_point_has_one_value_whatever_it_was_solved_with() -> None:
    # given: grid points solved all at once and in batches of assorted sizes
    servers, ratio, goal, busy = grid_cases(2000, seed=8)
    together = solve_operating_load(servers, ratio, goal, busy_factor=busy)
    cuts = [0, 1, 2, 5, 13, 40, 97, 300, 301, 1000, 1777, 2000]

    # when
    apart = np.concatenate(
        [
            solve_operating_load(servers[i:j], ratio[i:j], goal[i:j], busy_factor=busy[i:j])
            for i, j in itertools.pairwise(cuts)
        ]
    )

    # then: bit for bit (a cache's answer must not depend on what was cached before)
    np.testing.assert_array_equal(apart, together)


def test_threads_storing_at_once_lose_no_point() -> None:
    # given: one cache shared by threads (a --pool threads worker), each presolving its own goal
    cache = OperatingPoints()
    goals = [0.03, 0.05, 0.07, 0.1]
    solved: list[int] = []

    def presolve(goal: float) -> None:
        solved.append(
            cache.presolve(
                goal, False, busy_ceiling=0.2, max_servers=64, ratio_octaves=(-2, 2), chunk=97
            )  # many small stores, to interleave them
        )

    # when
    threads = [threading.Thread(target=presolve, args=(goal,)) for goal in goals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then: every thread's points are cached, once each, and none is solved again
    assert solved == [64 * (4 * 16 + 1)] * len(goals)
    assert len(cache) == sum(solved)
    keys = cache.keys(0.2)
    assert np.all(np.diff(keys) > 0)
    assert all(
        cache.presolve(goal, False, busy_ceiling=0.2, max_servers=64, ratio_octaves=(-2, 2)) == 0
        for goal in goals
    )


def test_a_lookup_that_fills_the_cache_past_its_limit_still_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given: a small limit, and a cache holding some of the rows' points and much else
    monkeypatch.setattr(operating_points_module, "_CACHE_LIMIT", 400)
    servers = np.array([5.0, 30.0, 100.0, 7.0])
    ratio = np.array([0.3, 1.0, 2.0, 0.05])
    goal = np.full(4, 0.05)
    busy = np.zeros(4, dtype=bool)
    cache = OperatingPoints()
    cache.lookup(servers[:2], ratio[:2], goal[:2], busy_factor=busy[:2], busy_ceiling=0.2)
    cache.presolve(0.03, False, busy_ceiling=0.2, max_servers=8, ratio_octaves=(-1, 1))
    assert len(cache) > 400 - 2 * 45  # the next solve empties the table before storing

    # when: the hits are cached, the misses' store empties the table first
    found = cache.lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)

    # then: the answers are a cold cache's (once an AssertionError: the hits were gone)
    cold = OperatingPoints().lookup(servers, ratio, goal, busy_factor=busy, busy_ceiling=0.2)
    np.testing.assert_array_equal(found.load, cold.load)
    np.testing.assert_array_equal(found.abandon_probability, cold.abandon_probability)
