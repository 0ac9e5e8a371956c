"""Every SQL block of docs/operators-history.md runs on the history schema: the portable ones and
the SQLite ones on SQLite, the portable ones and the PostgreSQL ones on a throwaway PostgreSQL
database, both migrated with Alembic and holding a morning of cycles."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from pacing.history import (
    ChannelTotal,
    CycleRecord,
    DecisionRow,
    create_history_engine,
    record_cycle,
    record_leadership_change,
)
from pacing.history.migrate import upgrade_to_head
from tests.support import throwaway_postgres_database

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "operators-history.md"
BLOCK = re.compile(r"^```sql ?([a-z-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MORNING = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def blocks(*dialects: str) -> list[str]:
    """The SQL blocks of the page whose info string is ``sql`` + one of ``dialects``."""
    found = [(kind, body) for kind, body in BLOCK.findall(DOC.read_text(encoding="utf-8"))]
    return [body for kind, body in found if kind in dialects]


def test_the_page_has_blocks_for_every_database() -> None:
    # given / when / then
    assert len(blocks("")) >= 5
    assert len(blocks("sqlite")) >= 2
    assert len(blocks("postgresql")) >= 3


def fill(engine: Engine) -> None:
    """Four hours of cycles every 10 minutes; chat-0001 has a no_agents spell, then ok."""
    for index in range(24):
        at = MORNING + timedelta(minutes=10 * index)
        reason = "no_agents" if 6 <= index < 9 else "ok"
        budget = 0 if reason != "ok" else 3 + index % 4
        record_cycle(
            engine,
            CycleRecord(
                seq=index + 1,
                epoch=1 if index < 12 else 2,
                node="node-a" if index < 12 else "node-b",
                started_at=at,
                published_at=None if index == 20 else at + timedelta(milliseconds=180 + index),
                fetch_ms=40.0,
                pace_ms=15.0,
                merge_ms=4.0,
                publish_ms=25.0,
                target_count=2,
                changed_count=2,
                error_count=0,
                payload_kind="none" if index == 20 else "full",
                payload_bytes=0 if index == 20 else 400,
                publish_status="failed" if index == 20 else "published",
                error="engagement platform answered 503" if index == 20 else None,
                decisions=[]
                if index == 20
                else [
                    DecisionRow("chat-0001", budget, 1.0, reason, 5, 3, 1),
                    DecisionRow("chat-0002", 2, 0.5, "ok", 2, 8, 0),
                ],
                channels=[ChannelTotal("chat", budget + 2, 7, 2)],
            ),
        )
    record_leadership_change(
        engine,
        epoch=1,
        node="node-a",
        acquired_at=MORNING,
        previous_node=None,
        previous_epoch=None,
    )
    record_leadership_change(
        engine,
        epoch=2,
        node="node-b",
        acquired_at=MORNING + timedelta(hours=2),
        previous_node="node-a",
        previous_epoch=1,
    )


@pytest.fixture(scope="module")
def sqlite_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path_factory.mktemp('queries') / 'history.db'}"
    upgrade_to_head(url)
    engine = create_history_engine(url)
    fill(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def postgres_history() -> Iterator[Engine]:
    with throwaway_postgres_database() as url:
        upgrade_to_head(url)
        engine = create_history_engine(url)
        fill(engine)
        try:
            yield engine
        finally:
            engine.dispose()


def run(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql))]


@pytest.mark.parametrize("sql", blocks("", "sqlite"), ids=lambda s: s.split("\n")[0][:40])
def test_the_documented_queries_run_on_sqlite(sqlite_history: Engine, sql: str) -> None:
    # given a morning of history / when
    rows = run(sqlite_history, sql)

    # then every query finds something in it
    assert rows


@pytest.mark.postgres
@pytest.mark.parametrize("sql", blocks("", "postgresql"), ids=lambda s: s.split("\n")[0][:40])
def test_the_documented_queries_run_on_postgresql(postgres_history: Engine, sql: str) -> None:
    # given a morning of history / when
    rows = run(postgres_history, sql)

    # then
    assert rows


@pytest.mark.parametrize(
    "engine_name", ["sqlite_history", pytest.param("postgres_history", marks=pytest.mark.postgres)]
)
def test_the_queries_answer_what_they_say(engine_name: str, request: pytest.FixtureRequest) -> None:
    # given
    engine: Engine = request.getfixturevalue(engine_name)
    portable = blocks("")
    failed, steps, in_force = portable[1], portable[2], portable[3]

    # when
    history = run(engine, steps)
    at_ten = {row[0]: row[2] for row in run(engine, in_force)}
    not_published = run(engine, failed)

    # then: chat-0001's steps from 08:00 to 12:00, each ending where the next begins
    assert [row[0] for row in history] == [s for s in range(1, 25) if s != 21]
    assert all(row[2] is not None for row in history[:-1])
    assert [row[5] for row in history[6:9]] == ["no_agents"] * 3
    # ... the decisions in force at 10:00 (cycle 13)
    assert at_ten == {"chat-0001": 3 + 12 % 4, "chat-0002": 2}
    # ... and the one cycle that failed to publish, with its error
    assert [(row[0], row[4], row[5]) for row in not_published] == [
        (21, "failed", "engagement platform answered 503")
    ]
