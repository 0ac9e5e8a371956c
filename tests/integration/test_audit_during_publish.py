"""The audit written while its publish is in flight (``pacing.cycle.audit.write_audit`` on a
record staged before the POST): real Redis, the loopback stub as the receiver, and the history on
SQLite and on a throwaway PostgreSQL database. The audit runs on a thread here, as it would on
another worker process: it writes the rows, waits for the outcome and commits only the final
state."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from pacing.clients.engagement import PUBLISH_PATH
from pacing.cycle.audit import audit_record, load_audit, load_staged_audit, stage_audit, write_audit
from pacing.cycle.plan import CycleContext
from pacing.cycle.publish import publish_cycle
from pacing.cycle.rows import ShardRows
from pacing.domain import Reason
from pacing.history import last_cycles
from pacing.history.migrate import upgrade_to_head
from pacing.history.models import DecisionModel
from pacing.services import Services
from pacing.settings import load_settings
from tests.http_stub import HttpStub, RecordedRequest, StubResponse, json_response
from tests.integration.test_publish_pipeline import start_cycle
from tests.support import (
    LOOPBACK_NODE_SETTINGS,
    leased_redis_db,
    redis_url,
    throwaway_postgres_database,
)

pytestmark = pytest.mark.integration

POST_SECONDS = 0.3  # how long the receiver takes to answer
TARGETS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    with leased_redis_db() as db:
        yield db


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new history database per test: each test's cycles start again at seq 1."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'history.db'}"
        upgrade_to_head(url)
        yield url
        return
    with throwaway_postgres_database() as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
def stub() -> Iterator[HttpStub]:
    with HttpStub() as running:
        yield running


@pytest.fixture
def services(redis_db: int, stub: HttpStub, database_url: str) -> Iterator[Services]:
    settings = load_settings(
        {
            "environment": "development",
            "node_name": "node-a",
            "broker_url": redis_url(redis_db),
            "database_url": database_url,
            "key_prefix": f"audit-test-{uuid.uuid4().hex[:8]}",
            "engagement_url": stub.url,
            "engagement_token": "t",
            **LOOPBACK_NODE_SETTINGS,
        }
    )
    built = Services(settings)
    try:
        yield built
    finally:
        built.close()


def results(context: CycleContext) -> list[dict[str, Any]]:
    return [
        ShardRows(
            shard=0,
            seq=context.seq,
            ids=TARGETS,
            channel=["chat"] * 3,
            budget=[1, 2, 3],
            reactive=[1.0] * 3,
            reason=[int(Reason.OK)] * 3,
            ready=[2] * 3,
            busy=[3] * 3,
            waiting=[0] * 3,
            fetch_ms=1.0,
            pace_ms=1.0,
        ).to_json()
    ]


class AuditOnAnotherProcess:
    """``audit_ready`` as the Celery task has it, with a thread for the other worker process;
    notes what the audit saw when it began."""

    def __init__(self, services: Services, stub: HttpStub) -> None:
        self.services, self.stub = services, stub
        self.thread: threading.Thread | None = None
        self.posts_when_handed: int | None = None
        self.due: float | None = None  # the staged record's outcome_due when handed over
        self.written: list[bool] = []
        self.finished_at = 0.0  # Unix seconds, on the services' clock

    def __call__(self, seq: int) -> None:
        self.posts_when_handed = len(self.stub.requests_to(PUBLISH_PATH))
        staged = load_staged_audit(self.services, seq)
        self.due = staged.outcome_due if staged is not None else None
        self.thread = threading.Thread(target=self._write, args=(seq,))
        self.thread.start()

    def _write(self, seq: int) -> None:
        self.written.append(write_audit(self.services, seq))
        self.finished_at = self.services.clock()

    def join(self) -> None:
        """Wait for the audit; by design it ends by its outcome's due time at the latest."""
        assert self.thread is not None
        self.thread.join()


def decision_count(services: Services, seq: int) -> int:
    with services.history.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(DecisionModel).where(DecisionModel.seq == seq)
            ).scalar_one()
        )


def accept_slowly(request: RecordedRequest) -> StubResponse:
    return json_response(
        {"accepted_seq": request.json()["seq"], "feedback": {}}, delay_seconds=POST_SECONDS
    )


def test_the_audit_is_handed_over_before_the_post_and_commits_the_published_cycle(
    services: Services, stub: HttpStub
) -> None:
    # given a receiver that takes a while to answer
    stub.on("POST", PUBLISH_PATH, accept_slowly)
    context = start_cycle(services, shard_count=1)
    audit = AuditOnAnotherProcess(services, stub)

    # when
    record = publish_cycle(services, results(context), context, audit_ready=audit)
    audit.join()

    # then the audit began before anything was sent, and committed the final state
    assert audit.posts_when_handed == 0
    assert audit.written == [True]
    assert record.publish_status == "published"
    [row] = last_cycles(services.history, limit=1)
    assert (row.seq, row.publish_status, row.payload_kind) == (context.seq, "published", "full")
    assert row.published_at is not None
    assert row.publish_ms is not None
    assert row.recorded_at is not None
    assert decision_count(services, context.seq) == 3
    # it was not left waiting for its due time (the publish's deadline plus an attempt's
    # timeouts, minutes away here): the outcome ended the wait
    assert audit.due is not None
    assert audit.finished_at < audit.due
    # and nothing is left staged
    assert load_audit(services, context.seq) is None
    assert services.redis.zscore(services.keys.audit_pending, str(context.seq)) is None
    assert not services.redis.exists(services.keys.audit_settled(context.seq))


def test_a_publish_that_fails_while_its_audit_waits_leaves_no_decision_rows(
    services: Services, stub: HttpStub
) -> None:
    # given a receiver that refuses the cycle (not retried)
    stub.on(
        "POST",
        PUBLISH_PATH,
        lambda request: json_response(
            {"error": "invalid_payload", "message": "no"}, status=400, delay_seconds=POST_SECONDS
        ),
    )
    context = start_cycle(services, shard_count=1)
    audit = AuditOnAnotherProcess(services, stub)

    # when
    record = publish_cycle(services, results(context), context, audit_ready=audit)
    audit.join()

    # then the rows the audit wrote during the POST were rolled back with the outcome
    assert record.publish_status == "failed"
    [row] = last_cycles(services.history, limit=1)
    assert (row.publish_status, row.payload_kind) == ("failed", "none")
    assert row.error is not None
    assert "400" in row.error
    assert decision_count(services, context.seq) == 0


def test_an_audit_whose_publisher_never_writes_the_outcome_records_it_in_doubt_when_due(
    services: Services,
) -> None:
    # given a record staged before a POST whose worker then stopped (no outcome will come)
    context = start_cycle(services, shard_count=1)
    record = audit_record(  # the form publish_cycle stages before its POST
        context,
        status="in_doubt",
        error="the publishing worker stopped",
        clock=services.clock,
    )
    due = services.clock() + 0.5
    stage_audit(services, record, outcome_due=due)

    # when
    written = write_audit(services, context.seq)

    # then it waited until the due time and kept the staged status
    assert written is True
    assert services.clock() >= due
    [row] = last_cycles(services.history, limit=1)
    assert (row.seq, row.publish_status) == (context.seq, "in_doubt")
    assert row.error == "the publishing worker stopped"


def test_an_audit_run_after_its_publish_ended_does_not_wait(
    services: Services, stub: HttpStub
) -> None:
    # given a cycle published with no audit task handed (one process: the audit comes after)
    stub.on("POST", PUBLISH_PATH, accept_slowly)
    context = start_cycle(services, shard_count=1)
    publish_cycle(services, results(context), context)

    # when: the audit finds the outcome already settled, so it has nothing to wait for
    staged = load_staged_audit(services, context.seq)
    assert staged is not None
    assert staged.settled
    written = write_audit(services, context.seq)

    # then
    assert written is True
    [row] = last_cycles(services.history, limit=1)
    assert row.publish_status == "published"
    assert decision_count(services, context.seq) == 3
    # a second delivery finds nothing left to write
    assert write_audit(services, context.seq) is False


def test_the_wake_up_is_removed_with_the_staged_record(services: Services) -> None:
    # the wake-up list of an outcome nobody waited for is removed with the staged record
    context = start_cycle(services, shard_count=1)
    record = audit_record(context, status="expired", error="late", clock=services.clock)
    stage_audit(services, record, outcome_due=services.clock() + 60)
    services.redis.rpush(services.keys.audit_settled(context.seq), 1)
    services.redis.set(
        services.keys.audit_outcome(context.seq),
        b'{"status": "expired", "error": "late", "published_at": null, "publish_ms": null}',
    )

    assert write_audit(services, context.seq) is True
    assert not services.redis.exists(services.keys.audit_settled(context.seq))
