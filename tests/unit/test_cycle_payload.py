"""Pure pieces of a cycle: shard merge, change detection, channel sums and the publish payload."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from pacing.cycle.merge import IncompleteCycle, MergedCycle, merge_shards
from pacing.cycle.payload import (
    Snapshot,
    build_payload,
    can_send_delta,
    changed_since,
    channel_sums,
    reason_label,
)
from pacing.cycle.rows import ShardRows, optional_ints
from pacing.cycle.split import effective_shard_size
from pacing.domain import Reason

SEQ = 42
OK, STALE, ERROR = int(Reason.OK), int(Reason.STALE), int(Reason.ERROR)
Row = tuple[str, str, int, float, int, int | None]  # id, channel, budget, reactive, reason, ready


def shard(
    index: int,
    targets: list[Row],
    *,
    seq: int = SEQ,
    fetch_ms: float = 1.0,
    pace_ms: float = 2.0,
    answered: bool = True,
) -> dict[str, Any]:
    """A shard result as ``pacing.pace_shard`` returns it: (id, channel, budget, reactive,
    reason, ready) per target."""
    return ShardRows(
        shard=index,
        seq=seq,
        ids=[t[0] for t in targets],
        channel=[t[1] for t in targets],
        budget=[t[2] for t in targets],
        reactive=[t[3] for t in targets],
        reason=[t[4] for t in targets],
        ready=[t[5] for t in targets],
        busy=[None if t[5] is None else 4 for t in targets],
        waiting=[None if t[5] is None else 1 for t in targets],
        fetch_ms=fetch_ms,
        pace_ms=pace_ms,
        answered=answered,
    ).to_json()


SHARD_0: list[Row] = [("a", "chat", 2, 1.0, OK, 3), ("b", "chat", 0, 0.5, STALE, None)]
SHARD_1: list[Row] = [("c", "callback", 5, 1.0, OK, 7)]
SHARD_2: list[Row] = [("d", "chat", 1, 0.25, OK, 0)]


def merged_cycle() -> MergedCycle:
    return merge_shards(
        [shard(0, SHARD_0), shard(1, SHARD_1), shard(2, SHARD_2)], seq=SEQ, shard_count=3
    )


# --- merge_shards --------------------------------------------------------------------------------


def test_merge_orders_targets_by_shard_whatever_the_arrival_order() -> None:
    # given shards arriving out of order
    results = [
        shard(2, SHARD_2, fetch_ms=9.0),
        shard(0, SHARD_0, pace_ms=7.0, answered=False),
        shard(1, SHARD_1),
    ]

    # when
    merged = merge_shards(results, seq=SEQ, shard_count=3)

    # then
    assert merged.ids == ["a", "b", "c", "d"]
    assert merged.channel == ["chat", "chat", "callback", "chat"]
    assert merged.budget.tolist() == [2, 0, 5, 1]
    assert merged.reactive.tolist() == [1.0, 0.5, 1.0, 0.25]
    assert merged.reason.tolist() == [OK, STALE, OK, OK]
    assert merged.ready == [3, None, 7, 0]
    assert merged.busy == [4, None, 4, 4]
    assert merged.waiting == [1, None, 1, 1]
    assert merged.fetch_ms == 9.0  # the slowest shard is the critical path
    assert merged.pace_ms == 7.0
    assert merged.error_count == 1  # "b" is stale
    assert merged.shards_unanswered == 1  # shard 0 was paced without a Stat Server answer


def test_merge_drops_a_duplicate_delivery_of_a_shard() -> None:
    # given shard 1 delivered twice (redelivery after a worker loss)
    results = [shard(0, SHARD_0), shard(1, SHARD_1), shard(1, SHARD_1), shard(2, SHARD_2)]

    # when
    merged = merge_shards(results, seq=SEQ, shard_count=3)

    # then
    assert merged.ids == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("results", "shard_count"),
    [
        pytest.param([shard(0, SHARD_0), shard(2, SHARD_2)], 3, id="missing-shard"),
        pytest.param([shard(0, SHARD_0), shard(1, SHARD_1)], 1, id="extra-shard"),
        pytest.param(
            [shard(0, SHARD_0), shard(1, SHARD_1, seq=SEQ - 1), shard(2, SHARD_2)],
            3,
            id="shard-of-another-cycle",
        ),
        pytest.param([], 1, id="nothing-arrived"),
    ],
)
def test_merge_refuses_a_wrong_set_of_shards(
    results: list[dict[str, Any]], shard_count: int
) -> None:
    # given a wrong set of results
    # when / then
    with pytest.raises(IncompleteCycle):
        merge_shards(results, seq=SEQ, shard_count=shard_count)


def test_merge_names_the_missing_shards() -> None:
    # given
    results = [shard(1, SHARD_1)]

    # when
    with pytest.raises(IncompleteCycle) as caught:
        merge_shards(results, seq=SEQ, shard_count=3)

    # then
    assert "[0, 2]" in str(caught.value)


def test_merge_of_a_cycle_without_targets_is_empty() -> None:
    # given no shards at all
    # when
    merged = merge_shards([], seq=SEQ, shard_count=0)

    # then
    assert merged.ids == []
    assert merged.budget.tolist() == []
    assert merged.error_count == 0
    assert channel_sums(merged) == {}


# --- change detection ----------------------------------------------------------------------------


def test_without_a_base_every_target_changed() -> None:
    # given
    merged = merged_cycle()

    # when
    changed = changed_since(merged, None)

    # then
    assert changed.tolist() == [True, True, True, True]


def test_changed_since_compares_budget_reactive_state_and_reason() -> None:
    # given a base where a's budget, b's reason and d's reactive state differ; c is new
    base = Snapshot.from_decisions(
        seq=SEQ - 1,
        epoch=1,
        decisions={
            "a": (1, 1.0, OK),
            "b": (0, 0.5, ERROR),
            "d": (1, 0.3, OK),
        },
    )

    # when
    changed = changed_since(merged_cycle(), base)

    # then
    assert changed.tolist() == [True, True, True, True]


def test_unchanged_decisions_are_not_changed() -> None:
    # given the base is exactly the current cycle
    merged = merged_cycle()
    base = Snapshot.of(merged, seq=SEQ - 1, epoch=1)

    # when
    changed = changed_since(merged, base)

    # then
    assert changed.tolist() == [False, False, False, False]


def test_only_the_target_that_moved_is_changed() -> None:
    # given
    merged = merged_cycle()
    current = Snapshot.of(merged, seq=SEQ - 1, epoch=1).decisions
    base = Snapshot.from_decisions(seq=SEQ - 1, epoch=1, decisions={**current, "c": (4, 1.0, OK)})

    # when
    changed = changed_since(merged, base)

    # then
    assert changed.tolist() == [False, False, True, False]


def test_a_delta_needs_a_base() -> None:
    # given / when / then
    assert can_send_delta(merged_cycle(), None) is False


def test_a_delta_can_add_targets() -> None:
    # given a base that lacks "d"
    merged = merged_cycle()
    base = Snapshot.from_decisions(
        seq=1, epoch=1, decisions={"a": (2, 1.0, OK), "b": (0, 0.5, STALE)}
    )

    # when / then
    assert can_send_delta(merged, base) is True


def test_a_removed_target_forces_a_full_snapshot() -> None:
    # given a base holding a target this cycle no longer paces
    merged = merged_cycle()
    current = Snapshot.of(merged, seq=SEQ - 1, epoch=1).decisions
    base = Snapshot.from_decisions(
        seq=SEQ - 1, epoch=1, decisions={**current, "gone": (3, 1.0, OK)}
    )

    # when / then
    assert can_send_delta(merged, base) is False


# --- channel sums --------------------------------------------------------------------------------


def test_channel_sums_add_budget_and_ready_capacity_per_channel() -> None:
    # given
    merged = merged_cycle()

    # when
    sums = channel_sums(merged)

    # then unknown ready capacity (None) counts as zero
    assert sums == {
        "chat": {"proactive_budget": 3, "ready_capacity": 3, "target_count": 3, "cold_start": 0},
        "callback": {
            "proactive_budget": 5,
            "ready_capacity": 7,
            "target_count": 1,
            "cold_start": 0,
        },
    }
    # and the channels come in order of first appearance, with plain ints (they go into JSON)
    assert list(sums) == ["chat", "callback"]
    assert {type(value) for entry in sums.values() for value in entry.values()} == {int}


# --- payload -------------------------------------------------------------------------------------


def test_a_full_payload_has_every_target_and_no_base_seq() -> None:
    # given
    merged = merged_cycle()

    # when
    payload = build_payload(
        merged,
        seq=SEQ,
        epoch=7,
        generated_at=1795000002.03149,
        refresh_period_seconds=2.0,
        channels=channel_sums(merged),
        base_seq=None,
        include=None,
    )

    # then
    assert payload == {
        "seq": SEQ,
        "epoch": 7,
        "generated_at": 1795000002.031,
        "refresh_period_ms": 2000,
        "kind": "full",
        "targets": [
            {
                "id": "a",
                "channel": "chat",
                "proactive_budget": 2,
                "reactive_state": 1.0,
                "ready_capacity": 3,
                "reason": "ok",
            },
            {
                "id": "b",
                "channel": "chat",
                "proactive_budget": 0,
                "reactive_state": 0.5,
                "ready_capacity": 0,
                "reason": "stale",
            },
            {
                "id": "c",
                "channel": "callback",
                "proactive_budget": 5,
                "reactive_state": 1.0,
                "ready_capacity": 7,
                "reason": "ok",
            },
            {
                "id": "d",
                "channel": "chat",
                "proactive_budget": 1,
                "reactive_state": 0.25,
                "ready_capacity": 0,
                "reason": "ok",
            },
        ],
        "channels": {
            "chat": {"proactive_budget": 3, "ready_capacity": 3},
            "callback": {"proactive_budget": 5, "ready_capacity": 7},
        },
    }


def test_a_delta_payload_has_base_seq_only_the_changed_targets_and_all_channels() -> None:
    # given only "c" changed
    merged = merged_cycle()
    include = np.array([False, False, True, False])

    # when
    payload = build_payload(
        merged,
        seq=SEQ,
        epoch=7,
        generated_at=1795000002.0,
        refresh_period_seconds=0.5,
        channels=channel_sums(merged),
        base_seq=SEQ - 1,
        include=include,
    )

    # then
    assert payload["kind"] == "delta"
    assert payload["base_seq"] == SEQ - 1
    assert payload["refresh_period_ms"] == 500
    assert [t["id"] for t in payload["targets"]] == ["c"]
    assert payload["channels"] == {
        "chat": {"proactive_budget": 3, "ready_capacity": 3},
        "callback": {"proactive_budget": 5, "ready_capacity": 7},
    }
    assert set(payload) == {
        "seq",
        "epoch",
        "generated_at",
        "refresh_period_ms",
        "kind",
        "base_seq",
        "targets",
        "channels",
    }


def test_a_delta_with_nothing_changed_still_carries_the_channels() -> None:
    # given
    merged = merged_cycle()

    # when
    payload = build_payload(
        merged,
        seq=SEQ,
        epoch=7,
        generated_at=0.0,
        refresh_period_seconds=2.0,
        channels=channel_sums(merged),
        base_seq=SEQ - 1,
        include=np.zeros(4, dtype=np.bool_),
    )

    # then
    assert payload["targets"] == []
    assert set(payload["channels"]) == {"chat", "callback"}


def test_the_payload_is_plain_json() -> None:
    # given numpy-backed columns
    merged = merged_cycle()

    # when
    payload = build_payload(
        merged,
        seq=SEQ,
        epoch=7,
        generated_at=1.0,
        refresh_period_seconds=2.0,
        channels=channel_sums(merged),
        base_seq=None,
        include=None,
    )

    # then every value is a built-in JSON type (no numpy scalars)
    assert json.loads(json.dumps(payload)) == payload
    assert all(type(t["proactive_budget"]) is int for t in payload["targets"])


# --- round trips ---------------------------------------------------------------------------------


def test_snapshot_survives_a_json_round_trip() -> None:
    # given
    snapshot = Snapshot.of(merged_cycle(), seq=SEQ, epoch=3)

    # when
    restored = Snapshot.from_json(json.loads(json.dumps(snapshot.to_json())))

    # then
    assert restored == snapshot
    assert restored.decisions == {
        "a": (2, 1.0, OK),
        "b": (0, 0.5, STALE),
        "c": (5, 1.0, OK),
        "d": (1, 0.25, OK),
    }


def test_shard_rows_survive_a_json_round_trip() -> None:
    # given
    raw = shard(1, SHARD_0)

    # when
    restored = ShardRows.from_json(json.loads(json.dumps(raw)))

    # then
    assert restored.to_json() == raw
    assert restored.ids == ["a", "b"]
    assert restored.answered
    del raw["answered"]  # rows parked by a release that did not record it
    assert ShardRows.from_json(raw).answered
    assert restored.ready == [3, None]


def test_optional_ints_turn_nan_into_none() -> None:
    # given / when
    values = optional_ints(np.array([3.0, np.nan, 0.0]))

    # then
    assert values == [3, None, 0]


def test_reason_labels_are_the_public_names() -> None:
    # given / when / then
    assert [reason_label(int(r)) for r in Reason] == [
        "ok",
        "cold_start",
        "no_agents",
        "queue_full",
        "stale",
        "error",
        "unknown_target",
    ]


@pytest.mark.parametrize(
    ("count", "shard_size", "max_shards", "expected"),
    [
        (10_000, 1000, 40, 1000),  # 10 shards: under the bound, the setting holds
        (40_000, 1000, 40, 1000),  # exactly at the bound
        (100_000, 1000, 40, 2500),  # 40 shards of 2,500 instead of 100 of 1,000
        (100_001, 1000, 40, 2501),  # never more than max_shards
        (5, 1000, None, 1000),
    ],
)
def test_shards_grow_past_max_shards(
    count: int, shard_size: int, max_shards: int | None, expected: int
) -> None:
    size = effective_shard_size(count, shard_size, max_shards)
    assert size == expected
    if max_shards is not None:
        assert math.ceil(count / size) <= max_shards


def test_presolved_goals_are_the_targets_distinct_goals_most_common_first() -> None:
    from pacing.cycle.presolve import PRESOLVE_MAX_GOALS, operating_point_goals
    from pacing.domain import Objective, TargetConfig

    # given
    targets = [
        *(TargetConfig(f"a-{i}", goal_percent=3) for i in range(5)),
        *(
            TargetConfig(f"b-{i}", goal_percent=85, objective=Objective.BUSY_FACTOR)
            for i in range(3)
        ),
        TargetConfig("c-0", goal_percent=5),
        *(TargetConfig(f"d-{i}", goal_percent=10 + i) for i in range(20)),
    ]

    # when
    goals = operating_point_goals(targets)

    # then
    assert goals[:2] == [(0.03, False), (0.85, True)]
    assert len(goals) == PRESOLVE_MAX_GOALS
    assert len(set(goals)) == len(goals)
