"""The shard's per-channel sums of the Stat Server's answered and abandoned interactions
(``pacing.cycle.rows.interaction_outcomes``), their merge across shards, and the cold-start count of
the channel sums: what the exporter's abandonment per channel is made of."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacing import algorithms
from pacing.cycle.merge import merge_shards
from pacing.cycle.payload import channel_sums
from pacing.cycle.rows import OUTCOME_FIELDS, ShardRows, interaction_outcomes
from pacing.cycle.shard import shard_outcomes
from pacing.cycle.split import ShardTargets
from pacing.domain import Objective, Reason, TargetConfig

NAN = math.nan
SEQ = 7


def counters(*rows: tuple[float, float]) -> np.ndarray:
    """(answered_total, abandoned_total) per target."""
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def test_each_channel_counts_what_its_targets_answered_and_abandoned_since_the_last_cycle() -> None:
    # given three chat targets (goals 3 % and 5 %, and a busy-factor one) and an email target
    channel = ["chat", "chat", "email", "chat"]
    before = counters((100, 4), (50, 0), (10, 1), (300, 30))
    after = counters((110, 5), (58, 2), (10, 1), (320, 40))
    goal = np.array([0.03, 0.05, 0.03, NAN])

    # when
    outcomes = interaction_outcomes(channel, before=before, after=after, goal=goal)

    # then every target adds its changes; the goals allow 3 % of 11 and 5 % of 10 interactions
    assert outcomes == {
        "chat": [10 + 8 + 20, 1 + 2 + 10, 10 + 8, 1 + 2, pytest.approx(0.03 * 11 + 0.05 * 10)],
        "email": [0, 0, 0, 0, 0.0],
    }
    assert list(outcomes) == ["chat", "email"]  # in order of first appearance
    assert dict(zip(OUTCOME_FIELDS, outcomes["chat"], strict=True))["goal_abandoned"] == 3
    # plain JSON numbers: whole counts as ints (the cycle event carries them)
    assert json.loads(json.dumps(outcomes))["chat"][:4] == [38, 13, 18, 3]
    assert all(type(v) is int for v in outcomes["chat"][:4])


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param((NAN, NAN), (120, 6), id="no-previous-reading"),
        pytest.param((100, 4), (20, 1), id="counters-went-down"),
        pytest.param((100, 4), (90, 9), id="answered-went-down"),
        pytest.param((100, 4), (120, NAN), id="abandoned-unknown-now"),
        pytest.param((100, NAN), (120, 6), id="abandoned-unknown-before"),
        pytest.param((-5, 4), (120, 6), id="garbage-before"),
    ],
)
def test_a_target_counts_nothing_unless_both_of_its_changes_are_known(
    before: tuple[float, float], after: tuple[float, float]
) -> None:
    # given a target whose counters cannot be differenced, beside one that can
    channel = ["chat", "chat"]

    # when
    outcomes = interaction_outcomes(
        channel,
        before=counters(before, (10, 1)),
        after=counters(after, (12, 2)),
        goal=np.array([0.03, 0.03]),
    )

    # then only the other one counts, answered and abandoned alike (the ratio's numerator and
    # denominator cover the same interactions)
    assert outcomes["chat"][:4] == [2, 1, 2, 1]
    assert outcomes["chat"][4] == pytest.approx(0.03 * 3)


def test_an_empty_or_inconsistent_shard_counts_nothing() -> None:
    # given / when / then
    empty = np.empty((0, 2))
    assert interaction_outcomes([], before=empty, after=empty, goal=np.empty(0)) == {}
    assert (
        interaction_outcomes(
            ["chat"], before=counters((1, 0)), after=np.ones((1, 3)), goal=np.array([0.03])
        )
        == {}
    )


@st.composite
def shards(draw: st.DrawFn) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 30))
    channel = draw(st.lists(st.sampled_from(["chat", "email", "voice"]), min_size=n, max_size=n))
    value = st.one_of(st.just(NAN), st.integers(-3, 1000).map(float))
    before = np.array(draw(st.lists(value, min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    after = np.array(draw(st.lists(value, min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    goal_value = st.one_of(st.just(NAN), st.floats(0.0, 0.2))
    goal = np.array(draw(st.lists(goal_value, min_size=n, max_size=n)))
    return channel, before, after, goal


@settings(max_examples=200, deadline=None)
@given(shards())
def test_the_sums_are_those_of_a_plain_loop_over_the_targets(
    shard: tuple[list[str], np.ndarray, np.ndarray, np.ndarray],
) -> None:
    # given
    channel, before, after, goal = shard
    expected: dict[str, list[float]] = {}
    for i, name in enumerate(channel):
        sums = expected.setdefault(name, [0, 0, 0, 0, 0.0])
        (a0, b0), (a1, b1) = before[i], after[i]
        known = all(math.isfinite(v) for v in (a0, b0, a1, b1))
        if not (known and a0 >= 0 and b0 >= 0 and a1 >= a0 and b1 >= b0):
            continue
        sums[0] += a1 - a0
        sums[1] += b1 - b0
        if not math.isnan(goal[i]):
            sums[2] += a1 - a0
            sums[3] += b1 - b0
            sums[4] += goal[i] * (a1 - a0 + b1 - b0)

    # when
    outcomes = interaction_outcomes(channel, before=before, after=after, goal=goal)

    # then
    assert outcomes.keys() == expected.keys()
    for name, sums in expected.items():
        assert outcomes[name][:4] == sums[:4]
        assert outcomes[name][4] == pytest.approx(sums[4], abs=1e-6)


def _inputs(
    answered: list[float], abandoned: list[float], reason: list[int]
) -> algorithms.PacingInputs:
    n = len(answered)
    inputs = algorithms.PacingInputs.empty(n)
    columns = {
        "agents_ready": [2.0] * n,
        "agents_busy": [3.0] * n,
        "interactions_waiting": [0.0] * n,
        "aht_seconds": [180.0] * n,
        "answered_total": answered,
        "abandoned_total": abandoned,
        "reactive_arrivals_total": [0.0] * n,
    }
    for name, values in columns.items():
        getattr(inputs, name)[:] = values
    inputs.input_reason[:] = reason
    return inputs


def test_the_sums_of_two_cycles_of_pace_are_the_stat_server_counters_differences() -> None:
    # given three chat targets paced once, at 3 % and 5 % goals and one busy factor, the way a
    # shard sees them: configuration rows, a cold state, then the state pace() returned
    configs = [
        TargetConfig(target_id="a", channel="chat", goal_percent=3.0),
        TargetConfig(target_id="b", channel="chat", goal_percent=5.0),
        TargetConfig(
            target_id="c", channel="chat", objective=Objective.BUSY_FACTOR, goal_percent=80.0
        ),
    ]
    targets = ShardTargets.of(configs)
    parameters = algorithms.PacingParameters()
    ok = [int(Reason.OK)] * 3
    first = algorithms.pace(
        _inputs([100, 40, 7], [3, 1, 0], ok),
        targets.targets,
        algorithms.cold_state(3),
        parameters=parameters,
        now=1000.0,
    )

    # when: two seconds later "b" is stale (its counters moved, but the shard cannot see them)
    second = algorithms.pace(
        _inputs([112, 45, 9], [4, 3, 1], [int(Reason.OK), int(Reason.STALE), int(Reason.OK)]),
        targets.targets,
        first.state,
        parameters=parameters,
        now=1002.0,
    )
    # and two seconds later again all are readable
    third = algorithms.pace(
        _inputs([115, 50, 9], [4, 4, 1], ok),
        targets.targets,
        second.state,
        parameters=parameters,
        now=1004.0,
    )

    def sums(before: np.ndarray, after: np.ndarray) -> list[float]:
        return shard_outcomes(targets, before=before, after=after)["chat"]

    # then the cold first cycle counts nothing, the second what "a" and "c" did, and the third
    # what "a" did since and "b" did over both cycles (its gap is counted when it returns)
    assert sums(algorithms.cold_state(3), first.state)[:4] == [0, 0, 0, 0]
    assert sums(first.state, second.state) == [12 + 2, 1 + 1, 12, 1, pytest.approx(0.03 * 13)]
    assert sums(second.state, third.state) == [
        3 + 10,
        0 + 3,
        3 + 10,
        3,
        pytest.approx(0.03 * 3 + 0.05 * 13),
    ]


def _shard(index: int, outcomes: dict[str, list[float]], reason: list[int]) -> dict[str, object]:
    n = len(reason)
    return ShardRows(
        shard=index,
        seq=SEQ,
        ids=[f"t{index}-{i}" for i in range(n)],
        channel=["chat"] * n,
        budget=[1] * n,
        reactive=[1.0] * n,
        reason=reason,
        ready=[1] * n,
        busy=[1] * n,
        waiting=[0] * n,
        fetch_ms=1.0,
        pace_ms=1.0,
        outcomes=outcomes,
    ).to_json()


def test_the_merge_adds_the_shards_sums_per_channel() -> None:
    # given two shards' sums, one of them from a release with other fields (left out)
    cold, ok = int(Reason.COLD_START), int(Reason.OK)
    results = [
        _shard(0, {"chat": [10, 1, 10, 1, 0.33], "email": [4, 0, 4, 0, 0.12]}, [cold, ok]),
        _shard(1, {"chat": [5, 2, 0, 0, 0.0]}, [cold, cold, ok]),
        _shard(2, {"chat": [99, 99]}, [ok]),
    ]

    # when
    merged = merge_shards(json.loads(json.dumps(results)), seq=SEQ, shard_count=3)

    # then
    assert merged.outcomes == {
        "chat": [15, 3, 10, 1, pytest.approx(0.33)],
        "email": [4, 0, 4, 0, pytest.approx(0.12)],
    }
    # and the channel sums count the targets in cold start
    assert channel_sums(merged)["chat"]["cold_start"] == 3
    assert channel_sums(merged)["chat"]["target_count"] == 6


def test_shard_rows_of_an_older_release_have_no_sums() -> None:
    # given rows without "outcomes"
    raw = _shard(0, {"chat": [1, 0, 1, 0, 0.03]}, [int(Reason.OK)])
    del raw["outcomes"]

    # when
    merged = merge_shards([raw], seq=SEQ, shard_count=1)

    # then
    assert merged.outcomes == {}
