"""Property tests: whatever a server sends, the clients answer per target or raise a clean error.

The parsers are pure, so they get thousands of generated bodies each; the HTTP clients get a few
hundred generated raw answers (bytes, content types, encodings, sizes) on a real loopback socket.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacing.clients.engagement import (
    PUBLISH_PATH,
    BearerToken,
    EngagementClient,
    PublishAck,
)
from pacing.clients.engagement_payload import parse_publish_response
from pacing.clients.stat_server import QUERY_PATH, StatServerClient, parse_statistics_response
from pacing.domain import OfferFeedback, Reason, StatisticsError, TargetStatistics
from pacing.errors import InvalidResponse, PacingError, StatServerUnavailable
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS, HttpStub, RecordedRequest, StubResponse

NOW = 1_795_000_000.0
MAX_AGE = 6.0
STAT_FIELDS = [
    "timestamp",
    "agents_logged_in",
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "aht_seconds",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
]
FEEDBACK_FIELDS = [
    "offers_sent_total",
    "offers_accepted_total",
    "offers_resolved_total",
    "offers_pending",
]
TARGET_IDS = ["t1", "t2", "sales-chat-01", "weird id", ""]

# --- strategies -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, 1, -1, 10**12, 10**12 + 1, 2**63, 2**64, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e12, 1e308, NOW, NOW + 3600]),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=20,
)
target_keys = st.one_of(st.sampled_from(TARGET_IDS), st.text(max_size=12))


def nested(depth: int) -> object:
    value: object = {"statistics": {}}
    for _ in range(depth):
        value = [value]
    return value


plausible_number = st.one_of(
    st.integers(min_value=0, max_value=200),
    st.floats(min_value=NOW - 20, max_value=NOW + 20),
    scalars,
)
stat_rows = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional=dict.fromkeys(STAT_FIELDS, plausible_number)),
)
statistics_bodies = st.one_of(
    json_values,
    st.builds(nested, st.integers(min_value=1, max_value=300)),
    st.fixed_dictionaries(
        {"statistics": st.dictionaries(target_keys, stat_rows, max_size=6)},
        optional={
            "unknown": st.one_of(st.lists(st.one_of(target_keys, scalars), max_size=4), scalars),
            "server": json_values,
            "generated_at": scalars,
        },
    ),
)
feedback_entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            name: st.one_of(st.integers(min_value=0, max_value=10**6), scalars)
            for name in FEEDBACK_FIELDS
        },
    ),
)
publish_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "accepted_seq": scalars,
            "feedback": st.one_of(
                st.dictionaries(target_keys, feedback_entries, max_size=6), json_values
            ),
        },
    ),
)

# --- pure parsers -----------------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(body=statistics_bodies, requested=st.lists(st.sampled_from(TARGET_IDS), max_size=6))
def test_statistics_parser_answers_every_target_or_rejects_the_body(
    body: object, requested: list[str]
) -> None:
    try:
        result = parse_statistics_response(body, requested, now=NOW, max_age_seconds=MAX_AGE)
    except InvalidResponse:
        return

    assert set(result) == set(requested)
    for target_id, value in result.items():
        assert value.target_id == target_id
        if isinstance(value, StatisticsError):
            assert value.reason in (Reason.ERROR, Reason.STALE, Reason.UNKNOWN_TARGET)
            assert 0 < len(value.detail) < 200
            continue
        assert isinstance(value, TargetStatistics)
        numbers = [getattr(value, name) for name in STAT_FIELDS]
        assert all(math.isfinite(number) and 0 <= number <= 1e12 for number in numbers)
        assert value.agents_ready + value.agents_busy <= value.agents_logged_in
        assert NOW - MAX_AGE <= value.timestamp <= NOW + 5


@settings(max_examples=2000, deadline=None)
@given(body=publish_bodies)
def test_feedback_parser_keeps_only_valid_entries_or_rejects_the_body(body: object) -> None:
    try:
        result = parse_publish_response(body)
    except InvalidResponse:
        return

    for target_id, feedback in result.items():
        assert isinstance(target_id, str)
        assert target_id not in ("weird id", "")
        assert isinstance(feedback, OfferFeedback)
        counters = [getattr(feedback, name) for name in FEEDBACK_FIELDS]
        assert all(type(counter) is int and 0 <= counter <= 10**12 for counter in counters)


# --- raw answers through the HTTP clients ----------------------------------------------------


class Scripted:
    """A responder whose answer the current hypothesis example sets."""

    def __init__(self) -> None:
        self.answer = StubResponse(status=500)

    def __call__(self, _: RecordedRequest) -> StubResponse:
        return self.answer


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[tuple[HttpStub, Scripted]]:
    scripted = Scripted()
    with HttpStub() as stub:
        stub.on("POST", QUERY_PATH, scripted)
        stub.on("POST", PUBLISH_PATH, scripted)
        yield stub, scripted


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http_session:
        yield http_session


def encode_json(value: object) -> bytes:
    # json.dumps writes NaN/Infinity, which strict parsers reject: exactly what we want to send.
    return json.dumps(value).encode()


raw_bodies = st.one_of(
    st.binary(max_size=200),
    statistics_bodies.map(encode_json),
    publish_bodies.map(encode_json),
    st.builds(
        lambda seq, feedback: encode_json({"accepted_seq": seq, "feedback": feedback}),
        st.just(1),
        st.dictionaries(target_keys, feedback_entries, max_size=4),
    ),
    st.integers(min_value=0, max_value=3).map(lambda n: b'{"pad": "' + b"x" * 3000 * n + b'"}'),
)


@st.composite
def raw_answers(draw: st.DrawFn) -> StubResponse:
    body = draw(raw_bodies)
    headers: dict[str, str] = {}
    content_type = draw(
        st.sampled_from(
            [None, "application/json", "application/json; charset=utf-8", "text/html", "x/+json"]
        )
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    encoding = draw(st.sampled_from(["none", "gzip", "gzip-corrupt", "gzip-truncated"]))
    if encoding != "none":
        headers["Content-Encoding"] = "gzip"
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "gzip-corrupt":
            body = b"\x1f\x8b\x08\x00" + body
        else:
            body = gzip.compress(body)[: max(1, len(body) // 2)]
    status = draw(st.sampled_from([200, 200, 200, 204, 301, 400, 401, 409, 413, 429, 500, 503]))
    return StubResponse(
        status=status,
        body=body,
        headers=headers,
        send_content_length=draw(st.booleans()),
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(answer=raw_answers())
def test_stat_server_client_gives_targets_or_unavailable(
    scripted_server: tuple[HttpStub, Scripted], session: requests.Session, answer: StubResponse
) -> None:
    stub, scripted = scripted_server
    scripted.answer = answer
    client = StatServerClient(
        primary_url=stub.url,
        backup_url=stub.url,
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
        max_age_seconds=MAX_AGE,
        max_body_bytes=4096,
        clock=lambda: NOW,
    )

    try:
        result = client.fetch(["t1", "t2"])
    except StatServerUnavailable:
        return

    assert set(result) == {"t1", "t2"}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(answer=raw_answers())
def test_engagement_client_gives_an_ack_or_a_pacing_error(
    scripted_server: tuple[HttpStub, Scripted], session: requests.Session, answer: StubResponse
) -> None:
    stub, scripted = scripted_server
    scripted.answer = answer
    client = EngagementClient(
        engagement_url=stub.url,
        auth=BearerToken("fuzz-token"),
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
        max_response_bytes=4096,
    )

    outcome: PublishAck | PacingError
    try:
        outcome = client.publish(seq=1, body=gzip.compress(b"{}"))
    except PacingError as error:
        outcome = error

    if isinstance(outcome, PublishAck):
        assert outcome.accepted_seq == 1
    else:
        assert "fuzz-token" not in str(outcome)


def test_deeply_nested_body_through_http_is_a_clean_error(
    scripted_server: tuple[HttpStub, Scripted], session: requests.Session
) -> None:
    # given: deeper than any JSON parser's recursion limit
    stub, scripted = scripted_server
    body = b"[" * 100_000 + b"]" * 100_000
    scripted.answer = StubResponse(body=body, headers={"Content-Type": "application/json"})
    client = StatServerClient(
        primary_url=stub.url,
        backup_url=None,
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
        max_age_seconds=MAX_AGE,
    )
    publisher = EngagementClient(
        engagement_url=stub.url,
        auth=BearerToken("fuzz-token"),
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
    )

    # when / then
    with pytest.raises(StatServerUnavailable, match="not valid JSON"):
        client.fetch(["t1"])
    with pytest.raises(InvalidResponse):
        publisher.publish(seq=1, body=gzip.compress(b"{}"))
