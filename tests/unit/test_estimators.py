"""The estimators of algorithm.md §1 on sequences of observations (algorithms._estimators)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pacing.algorithms import PacingParameters, cold_state
from pacing.algorithms._estimators import Observation, estimate, observe

NOW = 1_750_000_000.0
PERIOD = 2.0
PARAMETERS = PacingParameters()


def observation(*, answered: float, busy: float, aht: float) -> Observation:
    def one(value: float) -> np.ndarray:
        return np.array([value])

    return Observation(
        answered_total=one(answered),
        abandoned_total=one(0.0),
        reactive_arrivals_total=one(0.0),
        offers_accepted_total=one(math.nan),
        offers_resolved_total=one(math.nan),
        offers_pending=one(math.nan),
        interactions_waiting=one(0.0),
        agents_busy=one(busy),
        aht_seconds=one(aht),
    )


def test_a_filling_group_is_not_taken_for_faster_than_it_is() -> None:
    # given: 100 slots fill in the first minute; the Stat Server's AHT averages the few short
    # interactions that have ended (30 s), as it does at the start of a group's day
    state = cold_state(1)
    answered = 0.0
    for cycle in range(1, 31):
        busy = min(100.0, cycle * 100.0 / 30.0)
        answered = busy + cycle * 0.1  # a few have ended
        state, _ = observe(
            state,
            observation(answered=answered, busy=busy, aht=30.0),
            now=NOW + PERIOD * cycle,
            parameters=PARAMETERS,
        )

    # when
    handle_time = float(estimate(state, PARAMETERS).handle_time[0])

    # then: busy time accrues before interactions end, so the estimate errs long, not short
    assert handle_time >= PARAMETERS.prior_handle_time_seconds


def steady_handle_time(*, aht: float) -> float:
    """h after 2,000 cycles of 50 busy slots and one completion (and one new answer) every 2 s
    (Little's law: 100 s), with the Stat Server reporting ``aht``."""
    state = cold_state(1)
    for cycle in range(1, 2000):
        state, _ = observe(
            state,
            observation(answered=float(cycle), busy=50.0, aht=aht),
            now=NOW + PERIOD * cycle,
            parameters=PARAMETERS,
        )
    return float(estimate(state, PARAMETERS).handle_time[0])


def test_in_a_steady_state_the_handle_time_is_busy_slots_over_completions() -> None:
    # given / when: an AHT below that (another definition, or a lagging window)
    handle_time = steady_handle_time(aht=60.0)

    # then (the prior's ten pseudo-interactions at 180 s weigh against 450 remembered ones)
    assert handle_time == pytest.approx(100.0, rel=0.03)


def test_a_longer_aht_than_the_busy_slots_show_is_believed() -> None:
    # given / when: the Stat Server reports 240 s (wrap-up the busy slots do not show, say)
    handle_time = steady_handle_time(aht=240.0)

    # then
    assert handle_time == pytest.approx(240.0, rel=0.01)
