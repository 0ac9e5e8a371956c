"""PREDICTIVE_B, the AUTO split and the dual variants through ``pace()`` (algorithm.md §5, §7)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from pacing.algorithms import (
    STATE_FIELDS,
    PacingInputs,
    PacingParameters,
    PacingResult,
    PacingTargets,
    cold_state,
    pace,
)
from pacing.algorithms._operating_points import operating_point
from pacing.domain import Algorithm, Objective, Reason, TargetConfig

NOW = 1_750_000_000.0
PARAMETERS = PacingParameters()
HANDLE = 180.0
PATIENCE = 60.0


def warm_state(n: int = 1, /, **overrides: float) -> NDArray[np.float64]:
    """A target with plenty of history: p = 0.25, d = 10 s, h = 180 s, patience 60 s, β = 0."""
    state = cold_state(n)
    values = {
        "observed_at": NOW - 2.0,
        "last_answered_total": 1000.0,
        "last_abandoned_total": 30.0,
        "last_reactive_arrivals_total": 0.0,
        "last_offers_accepted_total": 250.0,
        "last_offers_resolved_total": 1000.0,
        "last_offers_pending": 0.0,
        "last_interactions_waiting": 0.0,
        "accepted_weight": 250.0,
        "resolved_weight": 1000.0,
        "pending_seconds_weight": 10_000.0,
        "abandoned_weight": 30.0,
        "waiting_seconds_weight": 1800.0,
        "reactive_weight": 0.0,
        "reactive_seconds_weight": 600.0,
        "handle_time_seconds": HANDLE,
        "trim": 0.0,
        "carry": 0.0,
        "resolved_seen": 1000.0,
        "completed_seen": 1000.0,
        "group_size": 100.0,
    }
    values.update(overrides)
    for name, value in values.items():
        state[:, STATE_FIELDS.index(name)] = value
    return state


def inputs(n: int = 1, /, **values: Any) -> PacingInputs:
    """Statistics continuing :func:`warm_state`'s counters: 100 slots, 90 busy, nobody waiting."""
    columns: dict[str, Any] = {
        "agents_ready": 10.0,
        "agents_busy": 90.0,
        "interactions_waiting": 0.0,
        "aht_seconds": HANDLE,
        "answered_total": 1000.0,
        "abandoned_total": 30.0,
        "reactive_arrivals_total": 0.0,
        "offers_sent_total": 1000.0,
        "offers_accepted_total": 250.0,
        "offers_resolved_total": 1000.0,
        "offers_pending": 0.0,
    }
    columns.update(values)
    arrays = {
        name: np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
        for name, value in columns.items()
    }
    return dataclasses.replace(PacingInputs.empty(n), **arrays)


def targets(*configs: TargetConfig) -> PacingTargets:
    return PacingTargets.from_configs(list(configs))


def run(
    statistics: PacingInputs, configured: PacingTargets, state: NDArray[np.float64]
) -> PacingResult:
    return pace(statistics, configured, state, parameters=PARAMETERS, now=NOW)


def operating_rate(slots: float, goal: float = 0.03, *, busy: bool = False) -> float:
    """λ* per second at the warm state's estimates (patience 60 s, handle 180 s)."""
    point = operating_point(
        np.array([slots]),
        np.array([HANDLE / PATIENCE]),
        np.array([goal]),
        busy_factor=np.array([busy]),
    )
    return float(point.load[0]) / HANDLE


def test_a_full_pipeline_gets_what_the_operating_point_consumes_in_one_period() -> None:
    # given: the pipeline holds exactly Y* = E[B]* + E[Q]* + λ*·d (within rounding)
    rate = operating_rate(100.0)
    point = operating_point(
        np.array([100.0]), np.array([3.0]), np.array([0.03]), busy_factor=np.array([False])
    )
    load, abandon = float(point.load[0]), float(point.abandon_probability[0])
    busy = round(load * (1 - abandon))
    waiting = round(load * abandon / 3.0)
    pending = round(rate * 10.0 / 0.25)
    statistics = inputs(
        agents_ready=100.0 - busy,
        agents_busy=busy,
        interactions_waiting=waiting,
        offers_pending=pending,
    )
    state = warm_state(last_offers_pending=pending)

    # when
    result = run(statistics, targets(TargetConfig("b", algorithm=Algorithm.PREDICTIVE_B)), state)

    # then: λ*·Δ/q invitations, give or take the rounding of the pipeline (γ = 0.5)
    expected = rate * PARAMETERS.refresh_period_seconds / 0.25
    assert result.reason.tolist() == [Reason.OK]
    assert abs(result.proactive_budget[0] - expected) <= 0.5 * 2 / 0.25 + 1


def test_a_fuller_pipeline_gets_fewer_invitations() -> None:
    # given
    configured = targets(
        *(TargetConfig(f"b{i}", algorithm=Algorithm.PREDICTIVE_B) for i in range(3))
    )
    statistics = inputs(3, offers_pending=[0.0, 20.0, 60.0])
    state = warm_state(3)

    # when
    budget = run(statistics, configured, state).proactive_budget

    # then
    assert budget[0] > budget[1] > budget[2]


def test_a_higher_trim_sends_more() -> None:
    # given
    configured = targets(
        *(TargetConfig(f"b{i}", algorithm=Algorithm.PREDICTIVE_B) for i in range(2))
    )
    state = warm_state(2)
    state[:, STATE_FIELDS.index("trim")] = [0.0, 0.5]

    # when
    budget = run(inputs(2), configured, state).proactive_budget

    # then
    assert budget[1] > budget[0]


def test_auto_paces_large_groups_with_predictive_b_and_small_ones_with_super_progressive() -> None:
    # given: the same 40-slot statistics; the remembered group size decides
    configured = targets(
        TargetConfig("auto-large", algorithm=Algorithm.AUTO),
        TargetConfig("auto-small", algorithm=Algorithm.AUTO),
        TargetConfig("predictive", algorithm=Algorithm.PREDICTIVE_B),
        TargetConfig("progressive", algorithm=Algorithm.SUPER_PROGRESSIVE),
    )
    state = warm_state(4)
    state[:, STATE_FIELDS.index("group_size")] = [40.0, 12.0, 40.0, 40.0]
    statistics = inputs(4, agents_ready=8.0, agents_busy=32.0, offers_pending=10.0)

    # when
    budget = run(statistics, configured, state).proactive_budget.tolist()

    # then
    assert budget[0] == budget[2]
    assert budget[1] == budget[3]
    assert budget[2] != budget[3]


def test_the_group_size_is_remembered_smoothed() -> None:
    # given: a 10-slot group that suddenly shows 100 slots
    state = warm_state(group_size=10.0)

    # when
    result = run(inputs(), targets(TargetConfig("auto")), state)

    # then
    size = result.state[0, STATE_FIELDS.index("group_size")]
    assert 10.0 < size < 11.0  # two seconds of a five-minute memory


def test_a_new_target_starts_with_its_current_group_size() -> None:
    # given / when
    result = run(inputs(), targets(TargetConfig("auto")), cold_state(1))

    # then
    assert result.state[0, STATE_FIELDS.index("group_size")] == 100.0
    assert result.reason.tolist() == [Reason.COLD_START]


def test_cold_predictive_targets_are_paced_by_the_cold_start_rule() -> None:
    # given
    configured = targets(
        TargetConfig("predictive", algorithm=Algorithm.PREDICTIVE_B),
        TargetConfig("progressive", algorithm=Algorithm.SUPER_PROGRESSIVE),
    )

    # when
    result = run(inputs(2), configured, cold_state(2))

    # then
    assert result.reason.tolist() == [Reason.COLD_START] * 2
    assert result.proactive_budget[0] == result.proactive_budget[1]


@pytest.mark.parametrize(
    "algorithm", [Algorithm.PREDICTIVE_B_DUAL, Algorithm.SUPER_PROGRESSIVE_DUAL]
)
def test_reactive_state_falls_as_reactive_load_exceeds_its_share(algorithm: Algorithm) -> None:
    # given: 30 % of λ* guaranteed to reactive traffic; offered 15 %, 30 %, 60 % and 120 % of λ*
    rate = operating_rate(100.0)
    shares = np.array([0.15, 0.3, 0.6, 1.2])
    configured = targets(
        *(TargetConfig(f"d{i}", algorithm=algorithm, proactive_ratio=0.7) for i in range(4))
    )
    state = warm_state(4)
    state[:, STATE_FIELDS.index("reactive_weight")] = shares * rate * 600.0

    # when
    result = run(inputs(4), configured, state)

    # then
    reactive_state = result.reactive_state
    assert reactive_state[0] == 1.0
    assert reactive_state[1] == pytest.approx(1.0, abs=0.01)
    assert reactive_state[2] == pytest.approx(0.5, rel=0.02)
    assert reactive_state[3] == pytest.approx(0.25, rel=0.02)


def test_reactive_load_leaves_less_room_for_proactive_invitations() -> None:
    # given
    rate = operating_rate(100.0)
    configured = targets(
        *(
            TargetConfig(f"d{i}", algorithm=Algorithm.PREDICTIVE_B_DUAL, proactive_ratio=0.7)
            for i in range(2)
        )
    )
    state = warm_state(2)
    state[:, STATE_FIELDS.index("reactive_weight")] = [0.0, 0.3 * rate * 600.0]

    # when
    budget = run(inputs(2), configured, state).proactive_budget

    # then
    assert budget[1] < budget[0]


def test_a_higher_busy_factor_goal_sends_more() -> None:
    # given
    configured = targets(
        *(
            TargetConfig(
                f"b{goal}",
                algorithm=Algorithm.PREDICTIVE_B,
                objective=Objective.BUSY_FACTOR,
                goal_percent=goal,
            )
            for goal in (70, 90)
        )
    )
    state = warm_state(2)

    # when
    budget = run(inputs(2, agents_ready=40.0, agents_busy=60.0), configured, state).proactive_budget

    # then
    assert budget[1] > budget[0]


def test_the_legacy_spelling_of_the_abandonment_objective_paces_alike() -> None:
    # given
    legacy = TargetConfig(
        "legacy", algorithm=Algorithm.PREDICTIVE_B, objective=Objective.parse("ABANDONEMENT_RATE")
    )
    modern = TargetConfig("modern", algorithm=Algorithm.PREDICTIVE_B)

    # when
    result = run(inputs(2), targets(legacy, modern), warm_state(2))

    # then
    assert result.proactive_budget[0] == result.proactive_budget[1]


def test_state_round_trips_through_the_store_format() -> None:
    # given: what the state store keeps is the float64 row, nothing else
    configured = targets(TargetConfig("b", algorithm=Algorithm.AUTO))
    first = run(inputs(), configured, warm_state())

    # when
    stored = np.frombuffer(first.state.tobytes(), dtype=np.float64).reshape(first.state.shape)
    again = pace(inputs(), configured, stored, parameters=PARAMETERS, now=NOW + 2.0)

    # then
    assert np.isfinite(again.state[0, STATE_FIELDS.index("group_size")])
    assert again.reason.tolist() == [Reason.OK]
