"""Malformed input through the task bodies: whatever the servers send, a shard returns a row per
target and a publish ends in a recorded status; neither raises (a raise would crash the task).

The parsers themselves get thousands of bodies in tests/unit/test_parsers_fuzz.py; here the
generated answers go through :func:`pacing.cycle.shard.pace_shard` and
:func:`pacing.cycle.publish.publish_cycle` as the tasks call them, with real Redis (leased
database) and the scripted loopback stub as Stat Server and engagement platform.
"""

from __future__ import annotations

import gzip
import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacing.clients.engagement import PUBLISH_PATH
from pacing.clients.stat_server import QUERY_PATH
from pacing.cycle.audit import load_audit
from pacing.cycle.plan import CycleContext
from pacing.cycle.publish import publish_cycle
from pacing.cycle.shard import failed_shard, pace_shard
from pacing.cycle.split import ShardTargets, split_into_shards
from pacing.domain import Algorithm, Reason, TargetConfig
from pacing.services import Services
from pacing.settings import load_settings
from tests.http_stub import HttpStub, RecordedRequest, StubResponse
from tests.support import leased_redis_db, redis_url

pytestmark = pytest.mark.integration

IDS = ["t1", "t2", "t3"]
FIELDS = [
    "agents_logged_in",
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "aht_seconds",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
]
FINAL_STATUSES = {"published", "failed", "expired", "in_doubt", "fenced", "stale_seq"}
FINAL_STATUSES |= {"base_mismatch"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 10**12 + 1, 2**64, math.nan, math.inf]),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def stat_rows(draw: st.DrawFn) -> object:
    if draw(st.booleans()):
        return draw(values)
    row: dict[str, object] = {
        "timestamp": draw(st.one_of(st.just(time.time()), scalars)),
        **{name: draw(st.one_of(st.integers(0, 50), scalars)) for name in FIELDS},
    }
    for name in draw(st.sets(st.sampled_from(sorted(row)), max_size=2)):
        del row[name]
    return row


statistics_bodies = st.one_of(
    values,
    st.fixed_dictionaries(
        {"statistics": st.dictionaries(st.sampled_from([*IDS, "other"]), stat_rows(), max_size=4)},
        optional={"unknown": st.one_of(st.lists(st.sampled_from(IDS), max_size=2), scalars)},
    ),
)
feedback = st.dictionaries(
    st.sampled_from([*IDS, "bad id", ""]),
    st.one_of(values, st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS[:4], scalars))),
    max_size=3,
)


@st.composite
def raw_answers(draw: st.DrawFn, bodies: st.SearchStrategy[object]) -> StubResponse:
    body = json.dumps(draw(bodies)).encode()  # NaN and Infinity as strict parsers refuse them
    body = draw(st.sampled_from([body, body, b"", b"\x00\xff not json", b"[" * 5000]))
    headers = {}
    content_type = draw(st.sampled_from(["application/json", "text/html", None]))
    if content_type:
        headers["Content-Type"] = content_type
    encoding = draw(st.sampled_from(["none", "gzip", "broken-gzip"]))
    if encoding == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    elif encoding == "broken-gzip":
        body, headers["Content-Encoding"] = b"\x1f\x8b\x08\x00" + body, "gzip"
    status = draw(st.sampled_from([200, 200, 200, 400, 404, 409, 413, 500, 503]))
    return StubResponse(status=status, body=body, headers=headers)


class MovedClock:
    """Unix time that moves only when the publish retries sleep on it: a publish failing until
    its deadline retries without waiting in real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Scripted:
    def __init__(self) -> None:
        self.answer = StubResponse(status=500)

    def __call__(self, _: RecordedRequest) -> StubResponse:
        return self.answer


@pytest.fixture(scope="module")
def stub() -> Iterator[tuple[HttpStub, Scripted]]:
    scripted = Scripted()
    with HttpStub() as running:
        running.on("POST", QUERY_PATH, scripted)
        running.on("POST", PUBLISH_PATH, scripted)
        yield running, scripted


@pytest.fixture(scope="module")
def clock() -> MovedClock:
    return MovedClock()


@pytest.fixture(scope="module")
def services(stub: tuple[HttpStub, Scripted], clock: MovedClock) -> Iterator[Services]:
    server, _ = stub
    with leased_redis_db() as db:
        built = Services(
            load_settings(
                {
                    "environment": "development",
                    "broker_url": redis_url(db),
                    "key_prefix": f"fuzz-{uuid.uuid4().hex[:8]}",
                    "stat_server_primary_url": server.url,
                    "stat_server_backup_url": server.url,
                    "engagement_url": server.url,
                    "engagement_token": "fuzz-token",
                    "refresh_period_seconds": 0.5,  # short deadlines keep failed publishes quick
                }
            ),
            clock=clock,
        )
        try:
            yield built
        finally:
            built.close()


CONFIGS = [TargetConfig(tid, algorithm=Algorithm.SUPER_PROGRESSIVE) for tid in IDS]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=raw_answers(statistics_bodies))
def test_a_shard_answers_every_target_whatever_the_stat_server_sends(
    services: Services, stub: tuple[HttpStub, Scripted], answer: StubResponse
) -> None:
    stub[1].answer = answer

    rows = pace_shard(services, seq=1, shard=0, targets=ShardTargets.of(CONFIGS))

    assert rows.ids == IDS
    assert all(isinstance(b, int) and b >= 0 for b in rows.budget)
    assert all(0.0 <= r <= 1.0 for r in rows.reactive)
    for reason, budget in zip(rows.reason, rows.budget, strict=True):
        if reason in (Reason.ERROR, Reason.STALE, Reason.UNKNOWN_TARGET, Reason.NO_AGENTS):
            assert budget == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answer=raw_answers(
        st.one_of(values, st.fixed_dictionaries({"accepted_seq": scalars, "feedback": feedback}))
    )
)
def test_a_publish_ends_in_a_recorded_status_whatever_the_receiver_sends(
    services: Services, stub: tuple[HttpStub, Scripted], clock: MovedClock, answer: StubResponse
) -> None:
    stub[1].answer = answer
    outcome = services.leadership.tick(
        node="fuzz", lease_ttl_seconds=30, deadline_seconds=services.settings.cycle_deadline
    )
    context = CycleContext(
        seq=outcome.seq,
        epoch=outcome.epoch,
        node="fuzz",
        started_at=services.clock(),
        shard_count=1,
        new_leader=outcome.new_leader,
    )
    rows = failed_shard(seq=context.seq, shard=0, rows=split_into_shards(CONFIGS, len(CONFIGS))[0])

    record: Any = publish_cycle(services, [rows.to_json()], context, sleep=clock.sleep)

    assert record.seq == context.seq
    assert record.publish_status in FINAL_STATUSES
    assert "fuzz-token" not in (record.error or "")
    assert load_audit(services, context.seq) is not None
