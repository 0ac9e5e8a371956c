"""The synthetic history filler and timers (pacing.history.synthetic) on a throwaway PostgreSQL
database: row counts, the shape of the data, and a target history over it. No timing asserts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from sqlalchemy import Engine, text

from pacing.history import create_history_engine, last_cycles, target_history
from pacing.history.migrate import upgrade_to_head
from pacing.history.synthetic import (
    fill_synthetic,
    fill_synthetic_hour,
    synthetic_target_ids,
    time_record_cycle,
    time_target_history,
)
from pacing.simulator.targets import generate_targets
from tests.support import throwaway_postgres_database

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TARGETS = 200
CYCLES = 90
FULL_EVERY = 30


@pytest.fixture(scope="module")
def filled() -> Iterator[tuple[Engine, int]]:
    """90 cycles of 200 targets at 2 s, full every 30th, 20 % changed; and the rows written."""
    with throwaway_postgres_database() as url:
        upgrade_to_head(url)
        engine = create_history_engine(url)
        try:
            rows = fill_synthetic_hour(
                engine,
                targets=TARGETS,
                cycles=CYCLES,
                period_seconds=2.0,
                changed_fraction=0.2,
                full_every=FULL_EVERY,
                start=START,
            )
            yield engine, rows
        finally:
            engine.dispose()


def scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as connection:
        return connection.execute(text(sql)).scalar_one()


def test_the_filler_writes_cycles_decisions_and_channel_totals(
    filled: tuple[Engine, int],
) -> None:
    # given / when
    engine, rows = filled

    # then: one row per target in the 3 full snapshots, about 20 % of them in the 87 others
    assert scalar(engine, "SELECT count(*) FROM decisions") == rows
    delta_rows = rows - 3 * TARGETS
    assert 0.15 * 87 * TARGETS < delta_rows < 0.25 * 87 * TARGETS
    assert scalar(engine, "SELECT count(*) FROM cycles") == CYCLES
    assert scalar(engine, "SELECT min(seq) || '-' || max(seq) FROM cycles") == "1-90"
    assert scalar(engine, "SELECT count(DISTINCT seq) FROM decisions") == CYCLES
    channels = scalar(engine, "SELECT count(DISTINCT channel) FROM channel_totals")
    assert scalar(engine, "SELECT count(*) FROM channel_totals") == CYCLES * channels
    # each cycle's counts match its rows, and full snapshots are where they should be
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM cycles c WHERE changed_count <> "
            "(SELECT count(*) FROM decisions d WHERE d.seq = c.seq)",
        )
        == 0
    )
    assert scalar(
        engine,
        "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM cycles WHERE payload_kind = 'full'",
    ) == ",".join(str(1 + i) for i in range(0, CYCLES, FULL_EVERY))


def test_the_filler_uses_the_simulators_ids_and_the_period(filled: tuple[Engine, int]) -> None:
    engine, _ = filled

    with engine.connect() as connection:
        ids = {row[0] for row in connection.execute(text("SELECT target_id FROM decisions"))}
    assert ids == {spec.target_id for spec in generate_targets(TARGETS)}
    assert all(re.fullmatch(r"(chat|webcallback|email)-\d{4}", target_id) for target_id in ids)

    newest = last_cycles(engine, 2)
    assert newest[0].started_at == START + timedelta(seconds=2 * (CYCLES - 1))
    assert newest[0].started_at - newest[1].started_at == timedelta(seconds=2)
    assert newest[0].recorded_at is not None
    assert newest[0].recorded_at > newest[0].started_at


def test_a_target_history_over_the_filler_is_a_step_function(filled: tuple[Engine, int]) -> None:
    # given a target and a window that starts between two of its changes
    engine, _ = filled
    target_id = synthetic_target_ids(TARGETS)[0][0]
    since, until = START + timedelta(seconds=61), START + timedelta(seconds=2 * CYCLES)

    # when
    points = target_history(engine, target_id, since=since, until=until)
    everything = target_history(engine, target_id)

    # then: the first step is the decision in force at `since`, and every step is a change
    assert points
    assert points[0].at <= since
    assert [p.seq for p in points] == sorted(p.seq for p in points)
    for before, after in pairwise(points):
        assert (before.proactive_budget, before.reactive_state, before.reason) != (
            after.proactive_budget,
            after.reactive_state,
            after.reason,
        )
    # full snapshots repeat the decision in force, so they add rows but not steps
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT count(*) FROM decisions WHERE target_id = :t"), {"t": target_id}
        ).scalar_one()
    assert len(everything) < stored
    assert everything[0].seq == 1


def test_a_second_fill_continues_after_the_stored_cycles(filled: tuple[Engine, int]) -> None:
    engine, _ = filled
    later = START + timedelta(hours=1)

    result = fill_synthetic(
        engine,
        targets=20,
        cycles=3,
        period_seconds=2.0,
        changed_fraction=0.5,
        full_every=30,
        start=later,
    )

    assert (result.first_seq, result.last_seq) == (CYCLES + 1, CYCLES + 3)
    assert result.decision_rows >= 20
    with engine.begin() as connection:  # leave the module's data as the other tests expect
        for table in ("decisions", "channel_totals", "cycles"):
            connection.execute(text(f"DELETE FROM {table} WHERE seq > {CYCLES}"))


def test_the_timers_return_one_figure_per_call(filled: tuple[Engine, int]) -> None:
    engine, _ = filled
    ids = [target_id for target_id, _ in synthetic_target_ids(TARGETS)[:3]]

    history_ms = time_target_history(engine, ids, START, START + timedelta(minutes=3), repeats=2)
    assert len(history_ms) == 6
    assert all(ms > 0 for ms in history_ms)

    record_ms = time_record_cycle(engine, targets=50, repeats=2)
    assert len(record_ms) == 2
    newest = last_cycles(engine, 4)
    assert [c.seq for c in newest] == [CYCLES + 4, CYCLES + 3, CYCLES + 2, CYCLES + 1]
    assert all(c.recorded_at is not None and c.payload_kind == "full" for c in newest)
    with engine.begin() as connection:
        for table in ("decisions", "channel_totals", "cycles"):
            connection.execute(text(f"DELETE FROM {table} WHERE seq > {CYCLES}"))


def test_the_filler_checks_its_arguments(filled: tuple[Engine, int]) -> None:
    engine, _ = filled
    with pytest.raises(ValueError, match="timezone-aware"):
        fill_synthetic_hour(engine, start=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="changed_fraction"):
        fill_synthetic_hour(engine, start=START, changed_fraction=1.5)
