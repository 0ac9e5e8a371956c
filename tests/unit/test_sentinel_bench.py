"""The side-by-side Redis benchmark's arithmetic (benchmarks/_sentinel_report.py and the block
reader of benchmarks/sentinel.py): which Redis each block uses, the medians, ratios and verdicts
against issue 18's 1.2 ×, and the fence calls' shares of a cycle."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks._sentinel_report import Block, block_order, compare, fence_costs, verdict
from benchmarks.sentinel import block_from_report


def test_blocks_alternate_and_each_pair_starts_with_the_other_kind() -> None:
    # given / when
    order = block_order(3)

    # then: ABBA, every pair one of each
    assert order == [
        (1, "plain"),
        (1, "sentinel"),
        (2, "sentinel"),
        (2, "plain"),
        (3, "plain"),
        (3, "sentinel"),
    ]


@pytest.mark.parametrize(
    ("ratio", "expected"), [(1.0, "PASS"), (1.2, "PASS"), (1.2001, "MISS"), (None, "MISS")]
)
def test_the_verdict_holds_the_ratio_to_the_limit_and_a_missing_ratio_misses(
    ratio: float | None, expected: str
) -> None:
    assert verdict(ratio) == expected


def test_compare_pools_each_kind_and_rates_each_pair_and_the_whole() -> None:
    # given two pairs; the second pair's sentinel block is slower than 1.2 × its plain block
    blocks = [
        Block(pair=1, mode="plain", e2e_ms=[100, 110, 120], measured=3),
        Block(pair=1, mode="sentinel", e2e_ms=[105, 115, 125], measured=3),
        Block(pair=2, mode="sentinel", e2e_ms=[150, 160, 170], measured=4),
        Block(pair=2, mode="plain", e2e_ms=[100, 110, 120], measured=3),
    ]

    # when
    result = compare(blocks)

    # then per pair: the two blocks' medians
    assert [(p["pair"], p["ratio"], p["verdict"]) for p in result["pairs"]] == [
        (1, pytest.approx(115 / 110), "PASS"),
        (2, pytest.approx(160 / 110), "MISS"),
    ]
    # and overall: the pooled medians (sentinel: 105 115 125 150 160 170 → 137.5)
    assert result["modes"]["plain"]["e2e_median_ms"] == 110
    assert result["modes"]["sentinel"]["e2e_median_ms"] == 137.5
    assert result["modes"]["sentinel"]["published"] == 6
    assert result["modes"]["sentinel"]["measured"] == 7
    assert result["ratio"] == pytest.approx(137.5 / 110)
    assert result["verdict"] == "MISS"
    assert result["pairs_passed"] == 1


def test_a_failed_block_leaves_its_pair_without_a_ratio_and_missed() -> None:
    # given a pair whose sentinel run failed
    blocks = [
        Block(pair=1, mode="plain", e2e_ms=[100], measured=1),
        Block(pair=1, mode="sentinel", error="cycle.py exited with 1"),
    ]

    # when
    result = compare(blocks)

    # then
    assert result["pairs"][0]["ratio"] is None
    assert result["pairs"][0]["verdict"] == "MISS"
    assert result["modes"]["sentinel"]["failed_blocks"] == 1
    assert result["verdict"] == "MISS"


def test_fence_costs_are_medians_and_shares_of_the_cycle() -> None:
    # given / when
    rows = fence_costs({"witness": [0.2, 0.3, 0.4], "PING": [0.1]}, cycle_median_ms=200.0)

    # then
    assert rows[0] == {
        "call": "witness",
        "calls": 3,
        "median_ms": 0.3,
        "p95_ms": pytest.approx(0.39),
        "share_of_cycle": pytest.approx(0.0015),
    }
    assert rows[1]["share_of_cycle"] == pytest.approx(0.0005)
    assert fence_costs({"PING": [0.1]}, cycle_median_ms=None)[0]["share_of_cycle"] is None


def _cycle(kind: str, *, warmup: bool, e2e: float | None, status: str = "published") -> Any:
    return {
        "kind": kind,
        "warmup": warmup,
        "seq": 7,
        "status": status,
        "error": None if status == "published" else "boom",
        "e2e_ms": e2e,
        "stages": {"dispatch_ms": 1.0},
    }


def test_a_block_keeps_the_measured_pipeline_cycles_that_published() -> None:
    # given cycle.py's JSON with a warm-up, a failed cycle and baseline cycles
    report = {
        "machine": {"load_average_at_start": [0.5, 0.4, 0.3], "load_average_at_end": [0.7, 0, 0]},
        "target_counts": [
            {
                "cycles": [
                    _cycle("pipeline", warmup=True, e2e=900),
                    _cycle("pipeline", warmup=False, e2e=150),
                    _cycle("pipeline", warmup=False, e2e=None, status="unfinished"),
                    _cycle("baseline", warmup=False, e2e=200),
                ]
            }
        ],
    }

    # when
    block = block_from_report(report, pair=2, mode="sentinel", seconds=90.0)

    # then
    assert list(block.e2e_ms) == [150]
    assert block.measured == 2
    assert list(block.baseline_ms) == [200]
    assert block.load == (0.5, 0.7)
    assert list(block.failures) == ["seq 7: unfinished (boom)"]
