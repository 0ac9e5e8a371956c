"""Stat Server client: per-target validation and primary/backup failover over real loopback HTTP."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pacing.clients.stat_server import (
    DEFAULT_MAX_BODY_BYTES,
    FUTURE_TOLERANCE_SECONDS,
    MAX_IDS_PER_REQUEST,
    QUERY_PATH,
    StatServerClient,
    parse_statistics_response,
)
from pacing.domain import Reason, StatisticsError, TargetStatistics
from pacing.errors import InvalidResponse, StatServerUnavailable, TransientError
from tests.http_stub import (
    GIVE_UP_SECONDS,
    LOOPBACK_TIMEOUT_SECONDS,
    NEVER_ANSWERS,
    HttpStub,
    StubResponse,
    json_response,
    refused_url,
    unreachable_url,
)

NOW = 1_795_000_000.0
MAX_AGE = 6.0


def valid_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "timestamp": NOW - 1.0,
        "agents_logged_in": 12,
        "agents_ready": 3,
        "agents_busy": 8,
        "interactions_waiting": 1,
        "aht_seconds": 184.5,
        "answered_total": 10234,
        "abandoned_total": 211,
        "reactive_arrivals_total": 3310,
    }
    row.update(overrides)
    return row


def statistics_body(rows: dict[str, Any], unknown: list[str] | None = None) -> dict[str, Any]:
    return {
        "server": "primary",
        "generated_at": NOW,
        "statistics": rows,
        "unknown": unknown or [],
    }


def parse_one(row: object) -> TargetStatistics | StatisticsError:
    result = parse_statistics_response(
        statistics_body({"t1": row}), ["t1"], now=NOW, max_age_seconds=MAX_AGE
    )
    return result["t1"]


class FakeClock:
    """Wall clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SteppingClock:
    """A monotonic clock that is ``step`` seconds later at every reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


# --- parse_statistics_response ----------------------------------------------------------------

INTEGER_FIELDS = [
    "agents_logged_in",
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
]
ALL_FIELDS = ["timestamp", "aht_seconds", *INTEGER_FIELDS]


def test_valid_row_becomes_target_statistics() -> None:
    # when
    result = parse_one(valid_row())

    # then
    assert result == TargetStatistics(
        target_id="t1",
        timestamp=NOW - 1.0,
        agents_logged_in=12,
        agents_ready=3,
        agents_busy=8,
        interactions_waiting=1,
        aht_seconds=184.5,
        answered_total=10234,
        abandoned_total=211,
        reactive_arrivals_total=3310,
    )


def test_integer_aht_and_extra_fields_are_accepted() -> None:
    result = parse_one(valid_row(aht_seconds=180, future_field="ignored"))

    assert isinstance(result, TargetStatistics)
    assert result.aht_seconds == 180.0


@pytest.mark.parametrize("field", ALL_FIELDS)
def test_missing_field_is_an_error_naming_it(field: str) -> None:
    row = valid_row()
    del row[field]

    result = parse_one(row)

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.ERROR
    assert field in result.detail


BAD_VALUES = [
    pytest.param("12", id="string"),
    pytest.param(None, id="null"),
    pytest.param([1], id="list"),
    pytest.param({"v": 1}, id="object"),
    pytest.param(True, id="bool-true"),
    pytest.param(False, id="bool-false"),
    pytest.param(-1, id="negative"),
    pytest.param(10**12 + 1, id="absurd"),
    pytest.param(10**30, id="huge-int"),
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="minus-inf"),
]


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("field", ALL_FIELDS)
def test_bad_value_is_an_error_naming_the_field(field: str, value: object) -> None:
    result = parse_one(valid_row(**{field: value}))

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.ERROR
    assert field in result.detail


@pytest.mark.parametrize("field", INTEGER_FIELDS)
def test_integer_fields_reject_floats(field: str) -> None:
    result = parse_one(valid_row(**{field: 3.0}))

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.ERROR
    assert field in result.detail


def test_ready_plus_busy_above_logged_in_is_an_error() -> None:
    result = parse_one(valid_row(agents_logged_in=10, agents_ready=3, agents_busy=8))

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.ERROR
    assert "agents_logged_in" in result.detail


def test_ready_plus_busy_equal_to_logged_in_is_fine() -> None:
    assert isinstance(
        parse_one(valid_row(agents_logged_in=11, agents_ready=3, agents_busy=8)),
        TargetStatistics,
    )


def test_zero_aht_means_nothing_finished_yet_and_is_accepted() -> None:
    # given: interactions answered but none finished (no handle time measured yet)
    result = parse_one(valid_row(aht_seconds=0, answered_total=5))

    # then
    assert isinstance(result, TargetStatistics)
    assert result.aht_seconds == 0.0


def test_row_older_than_the_limit_is_stale() -> None:
    result = parse_one(valid_row(timestamp=NOW - MAX_AGE - 0.5))

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.STALE


def test_row_exactly_at_the_age_limit_is_still_fresh() -> None:
    assert isinstance(parse_one(valid_row(timestamp=NOW - MAX_AGE)), TargetStatistics)


def test_timestamp_slightly_ahead_is_clock_skew() -> None:
    ahead = NOW + FUTURE_TOLERANCE_SECONDS - 0.5
    assert isinstance(parse_one(valid_row(timestamp=ahead)), TargetStatistics)


def test_timestamp_far_in_the_future_is_an_error() -> None:
    result = parse_one(valid_row(timestamp=NOW + FUTURE_TOLERANCE_SECONDS + 1))

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.ERROR
    assert "timestamp" in result.detail


def test_malformed_and_stale_row_reports_the_error() -> None:
    result = parse_one(valid_row(timestamp=NOW - 100, agents_ready="x"))

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.ERROR


@pytest.mark.parametrize("row", [None, 12, "row", [1, 2]])
def test_row_that_is_not_an_object_is_an_error(row: object) -> None:
    result = parse_one(row)

    assert isinstance(result, StatisticsError)
    assert result.reason is Reason.ERROR


def test_unknown_and_absent_targets() -> None:
    # given
    body = statistics_body(
        {"known": valid_row(), "both": valid_row(), "unasked": valid_row()},
        unknown=["listed", "both"],
    )

    # when
    result = parse_statistics_response(
        body, ["known", "listed", "both", "absent", "known"], now=NOW, max_age_seconds=MAX_AGE
    )

    # then
    assert set(result) == {"known", "listed", "both", "absent"}
    assert isinstance(result["known"], TargetStatistics)
    for target_id in ("listed", "both", "absent"):
        error = result[target_id]
        assert isinstance(error, StatisticsError)
        assert error.reason is Reason.UNKNOWN_TARGET
        assert error.target_id == target_id


def test_unknown_field_may_be_omitted() -> None:
    result = parse_statistics_response(
        {"statistics": {"t1": valid_row()}}, ["t1"], now=NOW, max_age_seconds=MAX_AGE
    )
    assert isinstance(result["t1"], TargetStatistics)


def test_one_bad_row_does_not_affect_the_others() -> None:
    body = statistics_body({"good": valid_row(), "bad": valid_row(agents_busy=-3)})

    result = parse_statistics_response(body, ["good", "bad"], now=NOW, max_age_seconds=MAX_AGE)

    assert isinstance(result["good"], TargetStatistics)
    assert isinstance(result["bad"], StatisticsError)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="null"),
        pytest.param([], id="list"),
        pytest.param("statistics", id="string"),
        pytest.param({}, id="no-statistics"),
        pytest.param({"statistics": []}, id="statistics-list"),
        pytest.param({"statistics": None}, id="statistics-null"),
        pytest.param({"statistics": {}, "unknown": "t1"}, id="unknown-string"),
        pytest.param({"statistics": {}, "unknown": {"t1": 1}}, id="unknown-object"),
    ],
)
def test_body_of_the_wrong_shape_is_invalid(body: object) -> None:
    with pytest.raises(InvalidResponse):
        parse_statistics_response(body, ["t1"], now=NOW, max_age_seconds=MAX_AGE)


# --- StatServerClient over HTTP ---------------------------------------------------------------


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http_session:
        yield http_session


@pytest.fixture
def primary() -> Iterator[HttpStub]:
    with HttpStub() as stub:
        yield stub


@pytest.fixture
def backup() -> Iterator[HttpStub]:
    with HttpStub() as stub:
        yield stub


def healthy(target_ids: tuple[str, ...] = ("t1", "t2"), **kwargs: Any) -> StubResponse:
    return json_response(statistics_body({tid: valid_row() for tid in target_ids}), **kwargs)


def make_client(
    session: requests.Session,
    *,
    primary_url: str,
    backup_url: str | None,
    clock: FakeClock | None = None,
    connect_timeout: float = LOOPBACK_TIMEOUT_SECONDS,
    read_timeout: float = LOOPBACK_TIMEOUT_SECONDS,
    **kwargs: Any,
) -> StatServerClient:
    """A client whose timeouts no answering stub can miss (tests/http_stub.py)."""
    return StatServerClient(
        primary_url=primary_url,
        backup_url=backup_url,
        session=session,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_age_seconds=MAX_AGE,
        clock=clock or FakeClock(),
        **kwargs,
    )


def test_fetch_posts_the_ids_and_returns_every_target(
    session: requests.Session, primary: HttpStub, backup: HttpStub
) -> None:
    # given
    primary.on("POST", QUERY_PATH, healthy(("t1",)))
    client = make_client(session, primary_url=primary.url + "/", backup_url=backup.url)

    # when
    result = client.fetch(["t1", "t2"])

    # then
    assert isinstance(result["t1"], TargetStatistics)
    assert isinstance(result["t2"], StatisticsError)
    assert result["t2"].reason is Reason.UNKNOWN_TARGET
    (request,) = primary.requests
    assert request.path == QUERY_PATH
    assert request.header("Content-Type") == "application/json"
    assert request.json() == {"targets": ["t1", "t2"]}
    assert backup.requests == []
    assert client.active_server == "primary"


def test_gzip_encoded_response_is_decoded(session: requests.Session, primary: HttpStub) -> None:
    primary.on("POST", QUERY_PATH, healthy(gzip_body=True))
    client = make_client(session, primary_url=primary.url, backup_url=None)

    result = client.fetch(["t1", "t2"])

    assert all(isinstance(value, TargetStatistics) for value in result.values())


def test_invalid_ids_are_errors_and_not_sent(session: requests.Session, primary: HttpStub) -> None:
    primary.on("POST", QUERY_PATH, healthy(("t1",)))
    client = make_client(session, primary_url=primary.url, backup_url=None)

    result = client.fetch(["t1", "bad id with spaces", ""])

    assert isinstance(result["t1"], TargetStatistics)
    for bad in ("bad id with spaces", ""):
        error = result[bad]
        assert isinstance(error, StatisticsError)
        assert error.reason is Reason.ERROR
    assert primary.requests[0].json() == {"targets": ["t1"]}


def test_large_shards_are_split_at_the_contract_limit(
    session: requests.Session, primary: HttpStub
) -> None:
    primary.on("POST", QUERY_PATH, json_response(statistics_body({})))
    client = make_client(session, primary_url=primary.url, backup_url=None)
    target_ids = [f"t{i}" for i in range(MAX_IDS_PER_REQUEST + 1)]

    result = client.fetch(target_ids)

    assert len(result) == len(target_ids)
    sizes = [len(request.json()["targets"]) for request in primary.requests]
    assert sizes == [MAX_IDS_PER_REQUEST, 1]


def test_refused_primary_fails_over_within_the_call(
    session: requests.Session, backup: HttpStub
) -> None:
    backup.on("POST", QUERY_PATH, healthy())
    client = make_client(session, primary_url=refused_url(), backup_url=backup.url)

    result = client.fetch(["t1", "t2"])

    assert all(isinstance(value, TargetStatistics) for value in result.values())
    assert client.active_server == "backup"


def test_primary_5xx_fails_over_and_backup_is_remembered(
    session: requests.Session, primary: HttpStub, backup: HttpStub
) -> None:
    # given
    primary.on("POST", QUERY_PATH, json_response({"error": "down"}, status=503))
    backup.on("POST", QUERY_PATH, healthy())
    client = make_client(session, primary_url=primary.url, backup_url=backup.url)

    # when
    first = client.fetch(["t1", "t2"])
    second = client.fetch(["t1", "t2"])

    # then
    assert isinstance(first["t1"], TargetStatistics)
    assert isinstance(second["t1"], TargetStatistics)
    assert len(primary.requests) == 1, "the second call must go straight to the backup"
    assert len(backup.requests) == 2
    assert client.active_server == "backup"


def test_a_primary_that_never_answers_is_given_up_after_the_read_timeout(
    session: requests.Session, primary: HttpStub
) -> None:
    # given: a primary that takes the request and never answers, and no backup
    primary.on("POST", QUERY_PATH, NEVER_ANSWERS)
    client = make_client(
        session, primary_url=primary.url, backup_url=None, read_timeout=GIVE_UP_SECONDS
    )

    # when / then
    with pytest.raises(StatServerUnavailable, match=r"primary http://127\.0\.0\.1:\d+: timed out"):
        client.fetch(["t1"])
    assert len(primary.requests) == 1


def test_an_unreachable_primary_fails_over_after_the_connect_timeout(
    session: requests.Session, backup: HttpStub
) -> None:
    # given: a primary whose handshake never completes; the backup answers
    backup.on("POST", QUERY_PATH, healthy())
    with unreachable_url() as primary_url:
        client = make_client(
            session,
            primary_url=primary_url,
            backup_url=backup.url,
            connect_timeout=GIVE_UP_SECONDS,
        )

        # when
        result = client.fetch(["t1"])

    # then
    assert isinstance(result["t1"], TargetStatistics)
    assert client.active_server == "backup"


def test_a_body_still_coming_at_the_deadline_is_cut_off_and_the_backup_serves(
    session: requests.Session, primary: HttpStub, backup: HttpStub
) -> None:
    # given: a primary body of 16 chunks, every one arriving within the read timeout but, on
    # the client's clock, 10 s after the one before: past the connect + read timeout (60 s)
    # at the sixth chunk
    padding = b" " * (16 * 64 * 1024)
    primary.on(
        "POST",
        QUERY_PATH,
        StubResponse(
            headers={"Content-Type": "application/json"},
            body=padding + json.dumps(statistics_body({})).encode(),
            piece_bytes=64 * 1024,
        ),
    )
    backup.on("POST", QUERY_PATH, healthy())
    client = make_client(
        session, primary_url=primary.url, backup_url=backup.url, monotonic=SteppingClock(10.0)
    )

    # when
    result = client.fetch(["t1"])

    # then: the primary's body (which lacks t1) was not used; the backup's was
    assert isinstance(result["t1"], TargetStatistics)
    assert client.active_server == "backup"
    assert len(backup.requests) == 1


BROKEN_ANSWERS = [
    pytest.param(StubResponse(status=500), id="500"),
    pytest.param(StubResponse(status=404), id="404"),
    pytest.param(
        StubResponse(body=b"{not json", headers={"Content-Type": "application/json"}),
        id="not-json",
    ),
    pytest.param(json_response([1, 2, 3]), id="json-list"),
    pytest.param(json_response({"statistics": "none"}), id="no-statistics-object"),
    pytest.param(json_response(statistics_body({}), content_type="text/html"), id="text-html"),
    pytest.param(
        StubResponse(
            body=b"\x1f\x8b definitely not gzip",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        id="bad-gzip",
    ),
    pytest.param(
        StubResponse(
            body=b'{"statistics": {}, "pad": "' + b"x" * 5000 + b'"}',
            headers={"Content-Type": "application/json"},
        ),
        id="oversized",
    ),
    pytest.param(
        StubResponse(
            body=b'{"statistics": {}, "pad": "' + b"x" * 5000 + b'"}',
            headers={"Content-Type": "application/json"},
            send_content_length=False,
        ),
        id="oversized-without-length",
    ),
    pytest.param(
        StubResponse(
            body=gzip.compress(b'{"statistics": {}, "pad": "' + b"x" * 50_000 + b'"}'),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        id="oversized-after-gunzip",
    ),
]


@pytest.mark.parametrize("broken", BROKEN_ANSWERS)
def test_unusable_primary_answer_fails_over(
    session: requests.Session, primary: HttpStub, backup: HttpStub, broken: StubResponse
) -> None:
    primary.on("POST", QUERY_PATH, broken)
    backup.on("POST", QUERY_PATH, healthy())
    client = make_client(
        session, primary_url=primary.url, backup_url=backup.url, max_body_bytes=4096
    )

    result = client.fetch(["t1"])

    assert isinstance(result["t1"], TargetStatistics)
    assert client.active_server == "backup"


@pytest.mark.parametrize("broken", BROKEN_ANSWERS)
def test_unusable_answers_from_both_raise_a_transient_error(
    session: requests.Session, primary: HttpStub, backup: HttpStub, broken: StubResponse
) -> None:
    primary.on("POST", QUERY_PATH, broken)
    backup.on("POST", QUERY_PATH, broken)
    client = make_client(
        session, primary_url=primary.url, backup_url=backup.url, max_body_bytes=4096
    )

    with pytest.raises(StatServerUnavailable):
        client.fetch(["t1"])


def test_fails_back_to_the_primary_after_the_interval(
    session: requests.Session, primary: HttpStub, backup: HttpStub
) -> None:
    # given: the primary fails once, then recovers
    clock = FakeClock()
    primary.on("POST", QUERY_PATH, StubResponse(status=503), healthy())
    backup.on("POST", QUERY_PATH, healthy())
    client = make_client(
        session, primary_url=primary.url, backup_url=backup.url, clock=clock, failback_seconds=30
    )
    client.fetch(["t1"])
    assert client.active_server == "backup"

    # when: before the interval the backup keeps serving
    clock.now += 29
    client.fetch(["t1"])

    # then
    assert len(primary.requests) == 1
    assert client.active_server == "backup"

    # when: after the interval the primary is asked first again
    clock.now += 1
    client.fetch(["t1"])

    # then
    assert len(primary.requests) == 2
    assert len(backup.requests) == 2
    # (re-read: mypy keeps the narrowing from the earlier assert across the call)
    active: str = client.active_server
    assert active == "primary"


def test_failback_to_a_primary_still_down_restarts_the_interval(
    session: requests.Session, primary: HttpStub, backup: HttpStub
) -> None:
    clock = FakeClock()
    primary.on("POST", QUERY_PATH, StubResponse(status=503))
    backup.on("POST", QUERY_PATH, healthy())
    client = make_client(
        session, primary_url=primary.url, backup_url=backup.url, clock=clock, failback_seconds=30
    )
    client.fetch(["t1"])

    clock.now += 30
    client.fetch(["t1"])  # tries the primary, fails, backup answers
    clock.now += 10
    client.fetch(["t1"])  # still inside the restarted interval: backup only

    assert len(primary.requests) == 2
    assert len(backup.requests) == 3
    assert client.active_server == "backup"


def test_both_down_names_both_servers_and_causes_without_credentials(
    session: requests.Session, backup: HttpStub
) -> None:
    # given
    backup.on("POST", QUERY_PATH, StubResponse(status=502))
    primary_url = refused_url().replace("http://", "http://user:hunter2@") + "/gw?key=sekrit"
    backup_url = backup.url.replace("http://", "http://admin:sekrit2@")
    client = make_client(session, primary_url=primary_url, backup_url=backup_url)

    # when
    with pytest.raises(StatServerUnavailable) as caught:
        client.fetch(["t1"])

    # then
    message = str(caught.value)
    assert isinstance(caught.value, TransientError)
    assert "primary http://127.0.0.1:" in message
    assert "/gw" in message
    assert "connection failed" in message
    assert "backup http://127.0.0.1:" in message
    assert "HTTP 502" in message
    for secret in ("hunter2", "sekrit", "sekrit2", "user:", "admin:"):
        assert secret not in message
        assert secret not in repr(client)


@pytest.mark.parametrize("back_first", ["primary", "backup"])
def test_after_both_failed_the_next_fetch_asks_them_again(
    session: requests.Session, primary: HttpStub, backup: HttpStub, back_first: str
) -> None:
    # given: the backup serves while the primary is down, then both fail
    stubs = {"primary": primary, "backup": backup}
    primary.on("POST", QUERY_PATH, StubResponse(status=503))
    backup.on("POST", QUERY_PATH, healthy(("t1",)), StubResponse(status=503))
    client = make_client(session, primary_url=primary.url, backup_url=backup.url)
    client.fetch(["t1"])
    with pytest.raises(StatServerUnavailable):
        client.fetch(["t1"])

    # when: one of them answers again
    stubs[back_first].on("POST", QUERY_PATH, healthy(("t1",)))
    result = client.fetch(["t1"])

    # then: the very next fetch asked and got the answer: nothing remembers both as down
    assert isinstance(result["t1"], TargetStatistics)
    assert client.active_server == back_first


def test_without_backup_a_primary_failure_is_unavailable(session: requests.Session) -> None:
    client = make_client(session, primary_url=refused_url(), backup_url=None)

    with pytest.raises(StatServerUnavailable, match="primary"):
        client.fetch(["t1"])
    assert client.active_server == "primary"


def test_stale_rows_are_judged_by_the_injected_clock(
    session: requests.Session, primary: HttpStub
) -> None:
    clock = FakeClock(NOW + 60)
    primary.on("POST", QUERY_PATH, healthy(("t1",)))
    client = make_client(session, primary_url=primary.url, backup_url=None, clock=clock)

    result = client.fetch(["t1"])

    error = result["t1"]
    assert isinstance(error, StatisticsError)
    assert error.reason is Reason.STALE


def test_default_body_cap_is_16_mib() -> None:
    assert DEFAULT_MAX_BODY_BYTES == 16 * 1024 * 1024
