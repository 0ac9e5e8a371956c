"""The column-wise fast paths agree with the per-row reference validation, row for row.

The Stat Server answer and the engagement feedback are validated for a whole batch at once
(``_fast_rows``, ``_fast_feedback``) and fall back to the reference per row or per entry; these
properties generate mostly well-formed batches with a few broken rows and check that the result
is exactly what the reference alone gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacing.clients.engagement_payload import (
    _feedback_per_entry,
    parse_feedback_rows,
    parse_publish_response,
)
from pacing.clients.stat_server import _parse_row, _RowProblem, parse_statistics_response
from pacing.clients.statistics import STATISTICS_FIELDS, StatisticsBatch
from pacing.domain import Reason, StatisticsError, TargetStatistics

NOW = 1_795_000_000.0
MAX_AGE = 6.0
FEEDBACK_FIELDS = (
    "offers_sent_total",
    "offers_accepted_total",
    "offers_resolved_total",
    "offers_pending",
)

# --- strategies: good rows, and good rows with one field broken --------------------------------

odd_values = st.sampled_from(
    [None, True, False, -1, -0.5, 10**12 + 1, 2**70, 10**400, math.nan, math.inf, "7", [], 3.5]
)


@st.composite
def stat_row(draw: st.DrawFn) -> object:
    logged_in = draw(st.integers(0, 300))
    ready = draw(st.integers(0, logged_in))
    busy = draw(st.integers(0, logged_in - ready))
    row: dict[str, object] = {
        "timestamp": draw(st.floats(NOW - 10, NOW + 10)),
        "agents_logged_in": logged_in,
        "agents_ready": ready,
        "agents_busy": busy,
        "interactions_waiting": draw(st.integers(0, 50)),
        "aht_seconds": draw(st.one_of(st.integers(0, 900), st.floats(0, 900))),
        "answered_total": draw(st.integers(0, 10**9)),
        "abandoned_total": draw(st.integers(0, 10**6)),
        "reactive_arrivals_total": draw(st.integers(0, 10**9)),
    }
    # shape breakage sends the whole batch the per-row way; range breakage stays on the fast path
    breakage = draw(st.integers(0, 59))
    if breakage == 0:
        row[draw(st.sampled_from(STATISTICS_FIELDS))] = draw(odd_values)
    elif breakage == 1:
        del row[draw(st.sampled_from(STATISTICS_FIELDS))]
    elif breakage == 2:
        return draw(st.sampled_from([None, [], "row", 3]))
    elif breakage in (3, 4):
        row[draw(st.sampled_from(STATISTICS_FIELDS))] = draw(st.sampled_from([-1, 10**12 + 1]))
    elif breakage == 5:
        row["agents_ready"] = logged_in + 1
    elif breakage in (6, 7):
        row["timestamp"] = draw(st.sampled_from([NOW - MAX_AGE - 0.01, NOW + 5.01, NOW + 5.0]))
    return row


@st.composite
def statistics_answer(draw: st.DrawFn) -> tuple[list[str], dict[str, object]]:
    ids = [f"t{i}" for i in range(draw(st.integers(0, 40)))]
    statistics = {tid: draw(stat_row()) for tid in ids if draw(st.integers(0, 20)) > 0}
    unknown = [tid for tid in ids if tid not in statistics and draw(st.booleans())]
    requested = ids + draw(st.lists(st.sampled_from(ids or ["x"]), max_size=3))  # duplicates
    return requested, {"statistics": statistics, "unknown": unknown}


def reference(requested: list[str], body: dict[str, object]) -> dict[str, object]:
    """What the per-row validation alone says about each requested id."""
    statistics = body["statistics"]
    assert isinstance(statistics, dict)
    unknown = set(body["unknown"])  # type: ignore[call-overload]
    out: dict[str, object] = {}
    for tid in dict.fromkeys(requested):
        if tid in unknown:
            out[tid] = StatisticsError(
                tid, Reason.UNKNOWN_TARGET, "the Stat Server does not know this target"
            )
        elif tid not in statistics:
            out[tid] = StatisticsError(
                tid, Reason.UNKNOWN_TARGET, "absent from the Stat Server response"
            )
        else:
            try:
                out[tid] = _parse_row(tid, statistics[tid], now=NOW, max_age_seconds=MAX_AGE)
            except _RowProblem as problem:
                out[tid] = StatisticsError(tid, problem.reason, problem.detail)
    return out


@settings(max_examples=300, deadline=None)
@given(statistics_answer())
def test_the_batch_statistics_parse_agrees_with_the_per_row_reference(
    answer: tuple[list[str], dict[str, object]],
) -> None:
    # given
    requested, body = answer

    # when
    batch = parse_statistics_response(body, requested, now=NOW, max_age_seconds=MAX_AGE)

    # then: same ids, same verdict and values per id, NaN rows exactly for the errors
    assert dict(batch.items()) == reference(requested, body)
    assert batch.ids == list(dict.fromkeys(requested))
    nan_rows = np.isnan(batch.matrix).all(axis=1).tolist()
    assert nan_rows == [tid in batch.errors for tid in batch.ids]


def test_a_well_formed_batch_takes_the_fast_path_and_keeps_exact_counts() -> None:
    # given: counts up to the absurdity limit, which float64 holds exactly
    row = dict.fromkeys(STATISTICS_FIELDS, 10**12) | {
        "timestamp": NOW,
        "agents_logged_in": 7,
        "agents_ready": 3,
        "agents_busy": 4,
        "aht_seconds": 181.25,
    }
    body = {"statistics": {"a": row, "b": dict(row, agents_busy=0)}}

    # when
    batch = parse_statistics_response(body, ["a", "b"], now=NOW, max_age_seconds=MAX_AGE)

    # then
    a = batch["a"]
    assert isinstance(a, TargetStatistics)
    assert a.answered_total == 10**12
    assert isinstance(a.answered_total, int)
    assert a.aht_seconds == 181.25
    assert batch.column("agents_busy").tolist() == [4.0, 0.0]
    assert not batch.errors


# --- the publish feedback ----------------------------------------------------------------------


@st.composite
def feedback_entry(draw: st.DrawFn) -> object:
    entry: dict[str, object] = {name: draw(st.integers(0, 10**9)) for name in FEEDBACK_FIELDS}
    breakage = draw(st.integers(0, 12))
    if breakage == 0:
        entry[draw(st.sampled_from(FEEDBACK_FIELDS))] = draw(odd_values)
    elif breakage == 1:
        del entry[draw(st.sampled_from(FEEDBACK_FIELDS))]
    elif breakage == 2:
        return draw(st.sampled_from([None, [], 5]))
    return entry


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from([f"t{i}" for i in range(30)]), st.sampled_from(["", "a b"])),
        feedback_entry(),
        max_size=30,
    )
)
def test_the_batch_feedback_parse_agrees_with_the_per_entry_reference(
    feedback: dict[str, object],
) -> None:
    reference = _feedback_per_entry(feedback)
    assert parse_publish_response({"feedback": feedback}) == reference
    # the rows the state store saves: the same ids and counters, in the same order
    ids, rows = parse_feedback_rows({"feedback": feedback})
    assert ids == list(reference)
    assert rows.shape == (len(reference), 4)
    assert rows.tolist() == [list(map(float, counters)) for counters in reference.values()]


# --- StatisticsBatch --------------------------------------------------------------------------


def test_a_statistics_batch_is_a_mapping_of_per_target_views() -> None:
    # given
    matrix = np.array([[NOW, 5, 2, 3, 1, 180.0, 10, 1, 4], [math.nan] * 9])
    error = StatisticsError("b", Reason.STALE, "old")
    batch = StatisticsBatch(["a", "b"], matrix, {"b": error})

    # then
    assert list(batch) == ["a", "b"]
    assert len(batch) == 2
    assert "a" in batch
    assert "c" not in batch
    assert batch["b"] is error
    assert batch["a"] == TargetStatistics("a", NOW, 5, 2, 3, 1, 180.0, 10, 1, 4)
    assert batch.valid().tolist() == [True, False]
    assert np.isnan(batch.rows_for(["c", "a"])[0]).all()
    assert batch.rows_for(["c", "a"])[1].tolist() == matrix[0].tolist()
    with pytest.raises(KeyError):
        batch["c"]
    joined = StatisticsBatch.concat([batch, StatisticsBatch.empty(["c"])])
    assert joined.ids == ["a", "b", "c"]
    assert joined.errors == {"b": error}
    with pytest.raises(ValueError, match="shape"):
        StatisticsBatch(["a"], matrix)
