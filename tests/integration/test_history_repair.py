"""The history after Redis lost writes (``pacing.cycle.repair``): every seq the receiver may
hold has a row. Real Redis, the history on SQLite and on a throwaway PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pacing.cycle.audit import audit_record, stage_audit
from pacing.cycle.plan import CycleContext
from pacing.cycle.repair import (
    LOST_RECORD_ERROR,
    repair_due,
    repair_history,
    request_history_repair,
    take_due_repairs,
)
from pacing.history import last_cycles, record_cycle
from pacing.services import Services
from pacing.settings import load_settings
from tests.integration.test_audit_during_publish import database_url, redis_db  # noqa: F401
from tests.support import LOOPBACK_NODE_SETTINGS, redis_url

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def services(redis_db: int, database_url: str, clock: Clock) -> Iterator[Services]:  # noqa: F811
    settings = load_settings(
        {
            "environment": "development",
            "node_name": "node-a",
            "broker_url": redis_url(redis_db),
            "database_url": database_url,
            "key_prefix": f"repair-test-{uuid.uuid4().hex[:8]}",
            **LOOPBACK_NODE_SETTINGS,
        }
    )
    built = Services(settings, clock=clock)
    try:
        yield built
    finally:
        built.close()


def cycle(seq: int) -> CycleContext:
    started = (T0 + timedelta(seconds=2 * seq)).timestamp()
    return CycleContext(
        seq=seq, epoch=3, node="node-a", started_at=started, shard_count=1, new_leader=False
    )


def written(services: Services, seq: int, clock: Clock) -> None:
    record = audit_record(cycle(seq), status="published", error=None, clock=clock)
    assert record_cycle(services.history, record)


def test_seqs_with_neither_a_row_nor_a_staged_record_are_recorded_in_doubt(
    services: Services, clock: Clock
) -> None:
    # given cycles 1-4 and 7 written, 8 still staged, 5 and 6 lost with Redis's data
    for seq in (1, 2, 3, 4, 7):
        written(services, seq, clock)
    stage_audit(services, audit_record(cycle(8), status="in_doubt", error=None, clock=clock))

    # when
    recorded = repair_history(services, upto=8)

    # then
    assert recorded == [5, 6]
    rows = {row.seq: row for row in last_cycles(services.history, 10)}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6, 7]
    for seq in (5, 6):
        assert rows[seq].publish_status == "in_doubt"
        assert rows[seq].error == LOST_RECORD_ERROR
        assert rows[seq].payload_kind == "none"
        # started when the cycle before it did: the history's time queries stay ordered
        assert rows[seq].started_at == rows[4].started_at
    # and a second check finds nothing more, and never overwrites a row
    assert repair_history(services, upto=8) == []


def test_only_the_window_below_the_requested_seq_is_checked(
    services: Services, clock: Clock
) -> None:
    # given an empty history (a new installation, or one whose history was purged)
    # when
    recorded = repair_history(services, upto=100, window=3)

    # then
    assert recorded == [98, 99, 100]


def test_a_request_is_taken_once_when_due(services: Services, clock: Clock) -> None:
    # given
    due = repair_due(services.settings, clock())
    request_history_repair(services, upto=41, due=due)

    # when / then: not before it is due, then once
    assert take_due_repairs(services) == []
    clock.now = due
    assert take_due_repairs(services) == [41]
    assert take_due_repairs(services) == []
