"""The pacing history database on a real PostgreSQL server (production backend).

Each test session creates a throwaway database ``pacing_test_<random>`` on the local server,
migrates it with Alembic and drops it afterwards. Set ``PACING_TEST_POSTGRES_URL`` to use another
server (its database is only used to create and drop the throwaway one).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from alembic import command as alembic_command
from psycopg import sql
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError

from pacing.domain import Algorithm, Objective, TargetConfig
from pacing.errors import HistoryUnavailable
from pacing.history import (
    ChannelTotal,
    CycleRecord,
    DecisionRow,
    create_history_engine,
    last_cycles,
    leadership_changes,
    list_targets,
    purge_history,
    record_cycle,
    record_leadership_change,
    set_targets_enabled,
    target_history,
    upsert_targets,
)
from pacing.history import maintenance as history_maintenance
from pacing.history import targets as history_targets
from pacing.history.migrate import alembic_config, check_drift, current_revision, upgrade_to_head
from pacing.history.models import ChannelTotalModel, CycleModel, DecisionModel
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get(
    "PACING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------------------------
# fixtures and builders
# ----------------------------------------------------------------------------------------------


def _admin_conninfo() -> str:
    return make_url(ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_database_factory() -> Iterator[list[str]]:
    """Creates throwaway databases on demand; drops every one of them at the end of the session."""
    created: list[str] = []
    yield created
    with psycopg.connect(_admin_conninfo(), autocommit=True) as admin:
        for name in created:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _new_database(created: list[str]) -> str:
    name = f"pacing_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(
            _admin_conninfo(), autocommit=True, connect_timeout=int(LOOPBACK_TIMEOUT_SECONDS)
        ) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {make_url(ADMIN_URL)!r} is not reachable: {exc}")
    created.append(name)
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def migrated_url(postgres_database_factory: list[str]) -> str:
    """One migrated database shared by the session; tests empty the tables they use."""
    url = _new_database(postgres_database_factory)
    upgrade_to_head(url)
    return url


@pytest.fixture
def empty_url(postgres_database_factory: list[str]) -> str:
    """A brand-new empty database (for the migration tests)."""
    return _new_database(postgres_database_factory)


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    """An engine on the session database, with every table emptied first."""
    history_engine = create_history_engine(migrated_url)
    with history_engine.begin() as connection:
        connection.execute(
            text("TRUNCATE cycles, decisions, channel_totals, targets, leadership_changes")
        )
    yield history_engine
    history_engine.dispose()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def decision(target_id: str, budget: int, *, reason: str = "ok", ready: int = 2) -> DecisionRow:
    return DecisionRow(target_id, budget, 1.0, reason, ready, 3, 0)


def cycle(
    seq: int,
    *,
    decisions: Sequence[DecisionRow] = (),
    channels: Sequence[ChannelTotal] = (),
    payload_kind: str = "delta",
) -> CycleRecord:
    return CycleRecord(
        seq=seq,
        epoch=1,
        node="node-a",
        started_at=at(seq),
        published_at=at(seq) + timedelta(milliseconds=350),
        fetch_ms=120.5,
        pace_ms=30.25,
        merge_ms=4.0,
        publish_ms=80.0,
        target_count=len(decisions),
        changed_count=len(decisions),
        error_count=0,
        payload_kind=payload_kind,
        payload_bytes=1234,
        publish_status="published",
        error=None,
        decisions=tuple(decisions),
        channels=tuple(channels),
    )


def count(engine: Engine, model: type[object]) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(model)).scalar_one()


# ----------------------------------------------------------------------------------------------
# migrations
# ----------------------------------------------------------------------------------------------


def test_upgrade_head_on_an_empty_database_then_no_drift(empty_url: str) -> None:
    assert current_revision(empty_url) is None

    upgrade_to_head(empty_url)

    assert current_revision(empty_url) == "0002"
    check_drift(empty_url)


def test_alembic_cli_upgrade_and_check_from_repo_root(empty_url: str) -> None:
    alembic = Path(sys.executable).parent / "alembic"
    environment = {"PATH": str(Path(sys.executable).parent), "HOME": str(REPO_ROOT)}

    upgrade = subprocess.run(
        [str(alembic), "-x", f"url={empty_url}", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    check = subprocess.run(
        [str(alembic), "-x", f"url={empty_url}", "check"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )

    assert upgrade.returncode == 0, upgrade.stderr
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


# ----------------------------------------------------------------------------------------------
# cycles
# ----------------------------------------------------------------------------------------------


def test_record_cycle_is_idempotent_on_seq(engine: Engine) -> None:
    record = cycle(
        7,
        decisions=[decision("g1", 3), decision("g2", 0)],
        channels=[ChannelTotal("chat", 3, 4, 2)],
    )

    assert record_cycle(engine, record) is True
    assert record_cycle(engine, record) is False

    assert count(engine, CycleModel) == 1
    assert count(engine, DecisionModel) == 2
    assert count(engine, ChannelTotalModel) == 1


def test_concurrent_writers_of_one_seq_store_it_once(engine: Engine) -> None:
    # given two redelivered copies of the same audit task running at once
    record = cycle(9, decisions=[decision(f"g{index}", 1) for index in range(500)])
    results: list[bool] = []
    writers = [
        threading.Thread(target=lambda: results.append(record_cycle(engine, record)))
        for _ in range(2)
    ]

    # when
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    # then
    assert sorted(results) == [False, True]
    assert count(engine, DecisionModel) == 500


def test_full_snapshot_of_ten_thousand_rows_goes_through_copy(engine: Engine) -> None:
    # given
    rows = [
        DecisionRow(f"target-{index:05d}", index % 40, 0.25, "ok", index % 7, None, 3)
        for index in range(10_000)
    ]

    # when
    assert record_cycle(engine, cycle(1, decisions=rows, payload_kind="full"))

    # then every row reads back exactly as written
    with engine.connect() as connection:
        stored = connection.execute(
            select(
                DecisionModel.target_id,
                DecisionModel.proactive_budget,
                DecisionModel.reactive_state,
                DecisionModel.reason,
                DecisionModel.agents_ready,
                DecisionModel.agents_busy,
                DecisionModel.interactions_waiting,
            ).order_by(DecisionModel.target_id)
        ).all()
    assert [DecisionRow(*row) for row in stored] == rows


def test_copy_round_trips_special_characters_floats_and_nulls(engine: Engine) -> None:
    # given rows out of id order whose strings need text-COPY escaping, and awkward numbers
    rows = [
        DecisionRow("zz-last", 1, 0.1 + 0.2, "ok", None, None, None),
        DecisionRow("tab\there", 2, 1 / 3, "back\\slash", 0, 1, 2),
        DecisionRow("line\nbreak\rreturn", 3, 5e-324, "ok", None, 4, None),
        DecisionRow("\\N", 4, 1.7976931348623157e308, "\\N", 5, None, 6),
        DecisionRow("a-first", 5, float("inf"), "ok", 7, 8, 9),
    ]

    # when
    assert record_cycle(engine, cycle(3, decisions=rows, payload_kind="full"))

    # then every value reads back exactly as written
    with engine.connect() as connection:
        stored = connection.execute(
            select(
                DecisionModel.target_id,
                DecisionModel.proactive_budget,
                DecisionModel.reactive_state,
                DecisionModel.reason,
                DecisionModel.agents_ready,
                DecisionModel.agents_busy,
                DecisionModel.interactions_waiting,
            ).where(DecisionModel.seq == 3)
        ).all()
    assert {DecisionRow(*row) for row in stored} == set(rows)


def test_a_row_the_database_refuses_rolls_the_cycle_back_with_an_sqlalchemy_error(
    engine: Engine,
) -> None:
    # given a reason longer than the column (no Python validation catches it)
    rows = [decision("g1", 1), decision("g2", 1, reason="x" * 40)]

    # when / then: the driver's error arrives as SQLAlchemy's, like every other statement's
    with pytest.raises(DataError, match="too long"):
        record_cycle(engine, cycle(1, decisions=rows))
    assert count(engine, CycleModel) == 0
    assert count(engine, DecisionModel) == 0


def test_record_cycle_sets_recorded_at_from_the_clock(engine: Engine) -> None:
    recorded = at(1) + timedelta(milliseconds=2250)

    assert record_cycle(engine, cycle(1, decisions=[decision("g1", 1)]), clock=recorded.timestamp)

    summary = last_cycles(engine, 1)[0]
    assert summary.recorded_at == recorded
    assert summary.recorded_at is not None
    assert summary.recorded_at.tzinfo is UTC


def test_migration_0002_on_a_database_with_history_and_back(empty_url: str) -> None:
    # given a database at 0001 holding a cycle with its decisions
    config = alembic_config(empty_url)
    alembic_command.upgrade(config, "0001")
    engine = create_history_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO cycles (seq, epoch, node, started_at, target_count, "
                    "changed_count, error_count, payload_kind, payload_bytes, publish_status) "
                    "VALUES (1, 1, 'node-a', '2026-01-05 09:01:00+00', 2, 2, 0, 'full', 10, "
                    "'published')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO decisions (target_id, seq, proactive_budget, reactive_state, "
                    "reason) VALUES ('g1', 1, 4, 1.0, 'ok'), ('g2', 1, 0, 1.0, 'no_agents')"
                )
            )

        # when
        upgrade_to_head(empty_url)

        # then
        check_drift(empty_url)
        assert last_cycles(engine, 1)[0].recorded_at is None
        assert [p.proactive_budget for p in target_history(engine, "g1")] == [4]
        with engine.connect() as connection:
            index = connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_decisions_seq'")
            ).scalar_one()
            foreign_keys = connection.execute(
                text(
                    "SELECT count(*) FROM pg_constraint "
                    "WHERE conrelid = 'decisions'::regclass AND contype = 'f'"
                )
            ).scalar_one()
        assert "USING brin (seq)" in index
        assert foreign_keys == 0
    finally:
        engine.dispose()

    # and when downgraded, the foreign key and the B-tree come back
    alembic_command.downgrade(config, "0001")
    assert current_revision(empty_url) == "0001"


def test_retention_still_deletes_every_row_of_old_cycles(engine: Engine) -> None:
    # given (no foreign key cascades any more: purge_history deletes decisions itself)
    for seq in range(1, 7):
        record_cycle(engine, cycle(seq, decisions=[decision(f"g{i}", seq) for i in range(300)]))

    # when
    assert purge_history(engine, older_than=at(4), batch_size=100) == 3

    # then
    assert count(engine, DecisionModel) == 900
    with engine.connect() as connection:
        orphans = connection.execute(
            text("SELECT count(*) FROM decisions WHERE seq NOT IN (SELECT seq FROM cycles)")
        ).scalar_one()
    assert orphans == 0


def test_purge_goes_on_when_the_seq_index_cannot_be_summarised(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # given a summarising statement that fails as it would without the privilege
    for seq in (1, 2, 3):
        record_cycle(engine, cycle(seq, decisions=[decision("g1", seq)]))
    monkeypatch.setattr(
        history_maintenance,
        "_SUMMARIZE_SEQ_INDEX",
        text("SELECT brin_summarize_new_values('no_such_index'::regclass)"),
    )

    # when
    with caplog.at_level(logging.WARNING, logger="pacing.history.maintenance"):
        deleted = purge_history(engine, older_than=at(3))

    # then
    assert deleted == 2
    assert count(engine, DecisionModel) == 1
    assert any("could not summarise" in record.message for record in caplog.records)


def test_cycles_read_back_with_aware_utc_times_whatever_the_session_zone(
    engine: Engine,
) -> None:
    record_cycle(engine, cycle(1))
    with engine.begin() as connection:
        connection.execute(text("SET TIME ZONE 'America/New_York'"))
    summary = last_cycles(engine, 1)[0]
    assert summary.started_at == at(1)
    assert summary.started_at.tzinfo is UTC


# ----------------------------------------------------------------------------------------------
# target history, leadership, targets
# ----------------------------------------------------------------------------------------------


def test_target_history_is_a_step_function_of_changes(engine: Engine) -> None:
    # given g1: 5 (seq 1), 5 again on a full snapshot (2), 7 (3), 7/stale (5), 2 (8)
    record_cycle(engine, cycle(1, decisions=[decision("g1", 5), decision("g2", 1)]))
    record_cycle(engine, cycle(2, decisions=[decision("g1", 5)], payload_kind="full"))
    record_cycle(engine, cycle(3, decisions=[decision("g1", 7, ready=4)]))
    record_cycle(engine, cycle(4, decisions=[decision("g2", 2)]))
    record_cycle(engine, cycle(5, decisions=[decision("g1", 7, reason="stale")]))
    for seq in (6, 7):
        record_cycle(engine, cycle(seq))
    record_cycle(engine, cycle(8, decisions=[decision("g1", 2)]))

    def steps(**window: datetime) -> list[tuple[int, int, str]]:
        return [
            (point.seq, point.proactive_budget, point.reason)
            for point in target_history(engine, "g1", **window)
        ]

    # then
    assert steps() == [(1, 5, "ok"), (3, 7, "ok"), (5, 7, "stale"), (8, 2, "ok")]
    assert steps(since=at(6.5)) == [(5, 7, "stale"), (8, 2, "ok")]
    assert steps(since=at(2), until=at(5)) == [(1, 5, "ok"), (3, 7, "ok")]
    assert steps(until=at(0)) == []


def test_leadership_changes_chain_released_at(engine: Engine) -> None:
    record_leadership_change(
        engine, epoch=1, node="a", acquired_at=at(0), previous_node=None, previous_epoch=None
    )
    record_leadership_change(
        engine, epoch=2, node="b", acquired_at=at(5), previous_node="a", previous_epoch=1
    )
    assert not record_leadership_change(
        engine, epoch=2, node="b", acquired_at=at(5), previous_node="a", previous_epoch=1
    )

    changes = leadership_changes(engine, 10)

    assert [(c.epoch, c.node, c.previous_node, c.released_at) for c in changes] == [
        (2, "b", "a", None),
        (1, "a", None, at(5)),
    ]


def test_upsert_targets_is_all_or_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    good = TargetConfig(
        "good",
        algorithm=Algorithm.PREDICTIVE_B_DUAL,
        objective=Objective.BUSY_FACTOR,
        goal_percent=80,
    )
    upsert_targets(engine, [good])

    # when a batch with one invalid row is refused by Python validation
    with pytest.raises(ValueError, match="proactive_ratio"):
        upsert_targets(engine, [TargetConfig("new"), TargetConfig("bad", proactive_ratio=2.0)])
    # and by the database itself
    monkeypatch.setattr(history_targets, "_validate_target", lambda target: None)
    with pytest.raises(IntegrityError):
        upsert_targets(engine, [TargetConfig("new"), TargetConfig("bad", goal_percent=0)])

    # then nothing of either batch was written
    assert list_targets(engine) == [good]
    assert set_targets_enabled(engine, ["good"], enabled=False) == 1
    assert list_targets(engine, enabled_only=True) == []


# ----------------------------------------------------------------------------------------------
# retention and failures
# ----------------------------------------------------------------------------------------------


def test_purge_history_deletes_old_cycles_in_batches(engine: Engine) -> None:
    for seq in range(1, 11):
        record_cycle(
            engine,
            cycle(
                seq,
                decisions=[decision(f"g{index}", seq) for index in range(5)],
                channels=[ChannelTotal("chat", seq, 1, 5)],
            ),
        )

    assert purge_history(engine, older_than=at(8), batch_size=3) == 7

    assert [summary.seq for summary in last_cycles(engine, 100)] == [10, 9, 8]
    assert count(engine, DecisionModel) == 15
    assert count(engine, ChannelTotalModel) == 3


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_dead_database_raises_history_unavailable_without_the_password() -> None:
    # given a server that is not listening
    password = "s3cr3t-Pa55word"
    engine = create_history_engine(
        f"postgresql://pacer:{password}@127.0.0.1:{_closed_port()}/pacing"
    )

    # when
    with pytest.raises(HistoryUnavailable) as raised:
        record_cycle(engine, cycle(1, decisions=[decision("g1", 1)]))

    # then
    message = str(raised.value)
    assert password not in message
    assert "pacer:***@127.0.0.1" in message
    assert "running and reachable" in message
    engine.dispose()


def test_migrating_a_dead_database_raises_history_unavailable_without_the_password() -> None:
    password = "an0ther-Secret"
    url = f"postgresql://pacer:{password}@127.0.0.1:{_closed_port()}/pacing"

    with pytest.raises(HistoryUnavailable) as raised:
        upgrade_to_head(url)

    assert password not in str(raised.value)
    assert "pacer:***@127.0.0.1" in str(raised.value)
