"""Engagement client: payload encoding, authentication and publish outcomes over loopback HTTP."""

from __future__ import annotations

import base64
import gzip
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
import requests

from pacing.clients.engagement import (
    PUBLISH_PATH,
    BearerToken,
    EngagementClient,
    OAuth2ClientCredentials,
    PublishAck,
)
from pacing.clients.engagement_payload import encode_payload, parse_publish_response
from pacing.domain import OfferFeedback
from pacing.errors import (
    ConfigurationError,
    DeltaBaseMismatch,
    EngagementRejected,
    EngagementUnavailable,
    InvalidResponse,
    PacingError,
    PermanentError,
    StaleEpoch,
    StaleSequence,
    TransientError,
)
from tests.http_stub import (
    GIVE_UP_SECONDS,
    LOOPBACK_TIMEOUT_SECONDS,
    NEVER_ANSWERS,
    HttpStub,
    StubResponse,
    json_response,
    refused_url,
)
from tests.support import unavailable

TOKEN_PATH = "/oauth/token"
STATIC_TOKEN = "static-TOKEN-0123456789"
CLIENT_SECRET = "client-SECRET-s3cr3t"
SECRETS = (STATIC_TOKEN, CLIENT_SECRET, "access-token-1", "access-token-2")

PAYLOAD: dict[str, Any] = {
    "seq": 1042,
    "epoch": 7,
    "generated_at": 1795000002.031,
    "refresh_period_ms": 2000,
    "kind": "delta",
    "base_seq": 1041,
    "targets": [
        {
            "id": "sales-chat-01",
            "channel": "chat",
            "proactive_budget": 2,
            "reactive_state": 1.0,
            "ready_capacity": 3,
            "reason": "ok",
        }
    ],
    "channels": {"chat": {"proactive_budget": 812, "ready_capacity": 431}},
}

FEEDBACK = {
    "sales-chat-01": {
        "offers_sent_total": 5120,
        "offers_accepted_total": 1290,
        "offers_resolved_total": 5101,
        "offers_pending": 19,
    }
}


class FakeClock:
    """Monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def accepted(seq: int = 1042, feedback: object = FEEDBACK) -> StubResponse:
    return json_response({"accepted_seq": seq, "feedback": feedback})


def token_response(token: str, expires_in: object = 3600) -> StubResponse:
    return json_response({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})


def exception_texts(exc: BaseException) -> str:
    """str and repr of an exception and every exception chained to it."""
    texts = []
    current: BaseException | None = exc
    while current is not None:
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http_session:
        yield http_session


@pytest.fixture
def server() -> Iterator[HttpStub]:
    with HttpStub() as stub:
        yield stub


def bearer_client(
    session: requests.Session,
    url: str,
    *,
    read_timeout: float = LOOPBACK_TIMEOUT_SECONDS,
    **kwargs: Any,
) -> EngagementClient:
    """A client whose timeouts no answering stub can miss (tests/http_stub.py)."""
    return EngagementClient(
        engagement_url=url,
        auth=BearerToken(STATIC_TOKEN),
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=read_timeout,
        **kwargs,
    )


def oauth(
    session: requests.Session,
    server: HttpStub,
    clock: FakeClock,
    *,
    read_timeout: float = LOOPBACK_TIMEOUT_SECONDS,
) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(
        auth_url=server.url + TOKEN_PATH,
        client_id="pacing-node",
        client_secret=CLIENT_SECRET,
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=read_timeout,
        clock=clock,
    )


# --- encode_payload / parse_publish_response --------------------------------------------------


def test_encoded_payload_gunzips_to_the_payload() -> None:
    body = encode_payload(PAYLOAD)

    assert body[:2] == b"\x1f\x8b"
    assert orjson.loads(gzip.decompress(body)) == PAYLOAD


def test_encoding_is_deterministic_so_retries_send_identical_bytes() -> None:
    assert encode_payload(PAYLOAD) == encode_payload(dict(PAYLOAD))


def test_feedback_is_parsed_per_target() -> None:
    result = parse_publish_response({"accepted_seq": 1, "feedback": FEEDBACK})

    assert result == {"sales-chat-01": OfferFeedback(5120, 1290, 5101, 19)}


@pytest.mark.parametrize(
    "body", [{"accepted_seq": 1}, {"accepted_seq": 1, "feedback": None}, {"feedback": {}}]
)
def test_absent_feedback_is_empty(body: object) -> None:
    assert parse_publish_response(body) == {}


GOOD_COUNTERS = FEEDBACK["sales-chat-01"]


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(None, id="null"),
        pytest.param([1, 2, 3, 4], id="list"),
        pytest.param({**GOOD_COUNTERS, "offers_pending": -1}, id="negative"),
        pytest.param({**GOOD_COUNTERS, "offers_sent_total": 1.5}, id="float"),
        pytest.param({**GOOD_COUNTERS, "offers_sent_total": float("nan")}, id="nan"),
        pytest.param({**GOOD_COUNTERS, "offers_sent_total": float("inf")}, id="inf"),
        pytest.param({**GOOD_COUNTERS, "offers_sent_total": True}, id="bool"),
        pytest.param({**GOOD_COUNTERS, "offers_sent_total": "5"}, id="string"),
        pytest.param({**GOOD_COUNTERS, "offers_sent_total": 10**13}, id="absurd"),
        pytest.param(
            {k: v for k, v in GOOD_COUNTERS.items() if k != "offers_pending"}, id="missing"
        ),
    ],
)
def test_invalid_feedback_entries_are_skipped(entry: object) -> None:
    result = parse_publish_response({"feedback": {"bad": entry, **FEEDBACK}})

    assert set(result) == {"sales-chat-01"}


def test_feedback_for_invalid_target_ids_is_skipped() -> None:
    result = parse_publish_response({"feedback": {"no spaces allowed": GOOD_COUNTERS}})

    assert result == {}


@pytest.mark.parametrize(
    "body",
    [None, [], "ok", 42, {"feedback": []}, {"feedback": "x"}, {"feedback": 3}],
)
def test_nonsense_body_is_invalid(body: object) -> None:
    with pytest.raises(InvalidResponse):
        parse_publish_response(body)


# --- authentication ---------------------------------------------------------------------------


def test_reprs_hide_secrets(session: requests.Session, server: HttpStub) -> None:
    bearer = BearerToken(STATIC_TOKEN)
    credentials = oauth(session, server, FakeClock())
    client = bearer_client(session, "https://user:pw-SECRET@engage.example/x?token=t0p")

    texts = [repr(bearer), str(bearer), repr(credentials), str(credentials), repr(client)]

    for text in texts:
        assert_no_secrets(text)
        assert "pw-SECRET" not in text
        assert "t0p" not in text
    assert "pacing-node" in repr(credentials)


@pytest.mark.parametrize("token", ["", "has space", "line\nbreak", 'quote"d', "é"])
def test_unusable_static_token_is_a_configuration_error(token: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        BearerToken(token)

    assert "engagement_token" in str(caught.value)
    if token:
        assert token not in str(caught.value)


def test_oauth_request_follows_the_contract(session: requests.Session, server: HttpStub) -> None:
    # given
    server.on("POST", TOKEN_PATH, token_response("access-token-1"))

    # when
    header = oauth(session, server, FakeClock()).authorization_header()

    # then
    assert header == "Bearer access-token-1"
    (request,) = server.requests_to(TOKEN_PATH)
    assert parse_qs(request.body.decode()) == {"grant_type": ["client_credentials"]}
    basic = request.header("Authorization") or ""
    assert basic.startswith("Basic ")
    assert base64.b64decode(basic.removeprefix("Basic ")).decode() == (
        f"pacing-node:{CLIENT_SECRET}"
    )


def test_oauth_token_is_cached_until_shortly_before_expiry(
    session: requests.Session, server: HttpStub
) -> None:
    # given
    clock = FakeClock()
    server.on(
        "POST", TOKEN_PATH, token_response("access-token-1"), token_response("access-token-2")
    )
    server.on("POST", PUBLISH_PATH, accepted(1), accepted(2), accepted(3), accepted(4))
    credentials = oauth(session, server, clock)
    client = EngagementClient(
        engagement_url=server.url,
        auth=credentials,
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
    )

    # when: three publishes inside the lifetime minus the 30 s margin
    for seq in (1, 2, 3):
        client.publish(seq=seq, body=encode_payload({"seq": seq}))
        clock.now += 1000
    # 3000 s after the fetch; the margin is min(30, 3600 / 10) = 30 s, so 3569 s is still fine
    clock.now += 569
    assert credentials.authorization_header() == "Bearer access-token-1"
    clock.now += 1
    client.publish(seq=4, body=encode_payload({"seq": 4}))

    # then
    assert len(server.requests_to(TOKEN_PATH)) == 2
    tokens = [request.header("Authorization") for request in server.requests_to(PUBLISH_PATH)]
    assert tokens == ["Bearer access-token-1"] * 3 + ["Bearer access-token-2"]


def test_short_lived_token_refreshes_a_tenth_of_its_lifetime_early(
    session: requests.Session, server: HttpStub
) -> None:
    clock = FakeClock()
    server.on(
        "POST", TOKEN_PATH, token_response("access-token-1", 100), token_response("access-token-2")
    )
    credentials = oauth(session, server, clock)

    credentials.authorization_header()
    clock.now += 89.9
    assert credentials.authorization_header() == "Bearer access-token-1"
    clock.now += 0.1
    assert credentials.authorization_header() == "Bearer access-token-2"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(json_response({"error": "invalid_client"}, status=401), EngagementRejected),
        pytest.param(json_response({"error": "invalid_request"}, status=400), EngagementRejected),
        pytest.param(StubResponse(status=503), EngagementUnavailable),
        pytest.param(StubResponse(status=200, body=b"<html>"), InvalidResponse, id="html"),
        pytest.param(json_response({"token_type": "Bearer", "expires_in": 60}), InvalidResponse),
        pytest.param(
            json_response({"access_token": "a b", "token_type": "Bearer", "expires_in": 60}),
            InvalidResponse,
            id="token-with-space",
        ),
        pytest.param(
            json_response({"access_token": "abc", "token_type": "mac", "expires_in": 60}),
            InvalidResponse,
            id="not-bearer",
        ),
        pytest.param(token_response("abc", expires_in=0), InvalidResponse, id="expires-0"),
        pytest.param(token_response("abc", expires_in="60"), InvalidResponse, id="expires-str"),
        pytest.param(token_response("abc", expires_in=None), InvalidResponse, id="expires-null"),
        pytest.param(json_response(["abc"]), InvalidResponse, id="list"),
    ],
)
def test_token_endpoint_failures_raise_clean_errors_without_secrets(
    session: requests.Session, server: HttpStub, answer: StubResponse, error: type[PacingError]
) -> None:
    server.on("POST", TOKEN_PATH, answer)
    credentials = oauth(session, server, FakeClock())

    with pytest.raises(error) as caught:
        credentials.authorization_header()

    assert type(caught.value) is error
    assert_no_secrets(exception_texts(caught.value))


def test_a_token_endpoint_that_never_answers_is_unavailable(
    session: requests.Session, server: HttpStub
) -> None:
    server.on("POST", TOKEN_PATH, NEVER_ANSWERS)
    credentials = oauth(session, server, FakeClock(), read_timeout=GIVE_UP_SECONDS)

    with pytest.raises(EngagementUnavailable) as caught:
        credentials.authorization_header()

    assert "could not be reached" in str(caught.value)
    assert_no_secrets(exception_texts(caught.value))


def test_unreachable_token_endpoint_is_unavailable(session: requests.Session) -> None:
    credentials = OAuth2ClientCredentials(
        auth_url=refused_url() + TOKEN_PATH,
        client_id="pacing-node",
        client_secret=CLIENT_SECRET,
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
    )

    with pytest.raises(EngagementUnavailable) as caught:
        credentials.authorization_header()

    assert_no_secrets(exception_texts(caught.value))


# --- publish ----------------------------------------------------------------------------------


def test_publish_sends_the_contract_headers_and_body(
    session: requests.Session, server: HttpStub
) -> None:
    # given
    server.on("POST", PUBLISH_PATH, accepted())
    client = bearer_client(session, server.url + "/")
    body = encode_payload(PAYLOAD)

    # when
    started = time.perf_counter()
    ack = client.publish(seq=1042, body=body)
    took = time.perf_counter() - started

    # then
    (request,) = server.requests
    assert request.path == PUBLISH_PATH
    assert request.header("Content-Type") == "application/json"
    assert request.header("Content-Encoding") == "gzip"
    assert request.header("Authorization") == f"Bearer {STATIC_TOKEN}"
    assert request.header("Idempotency-Key") == "1042"
    assert request.body == body
    assert request.json() == PAYLOAD
    assert ack.accepted_seq == 1042
    assert ack.feedback == {"sales-chat-01": OfferFeedback(5120, 1290, 5101, 19)}
    assert ack.bytes_sent == len(body)
    assert ack.status_code == 200
    assert 0 < ack.elapsed_seconds <= took  # seconds of this call, not milliseconds
    assert isinstance(ack, PublishAck)


def test_gzip_encoded_response_is_accepted(session: requests.Session, server: HttpStub) -> None:
    server.on(
        "POST", PUBLISH_PATH, json_response({"accepted_seq": 7, "feedback": {}}, gzip_body=True)
    )

    ack = bearer_client(session, server.url).publish(seq=7, body=encode_payload({"seq": 7}))

    assert ack.accepted_seq == 7
    assert ack.feedback == {}


def test_409_base_mismatch(session: requests.Session, server: HttpStub) -> None:
    server.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "base_mismatch", "last_seq": 1039}, status=409),
    )

    with pytest.raises(DeltaBaseMismatch) as caught:
        bearer_client(session, server.url).publish(seq=1042, body=encode_payload(PAYLOAD))

    assert caught.value.status_code == 409
    assert isinstance(caught.value, PermanentError)
    assert "full snapshot" in str(caught.value)


def test_409_stale_seq_carries_the_receivers_last_seq(
    session: requests.Session, server: HttpStub
) -> None:
    server.on(
        "POST", PUBLISH_PATH, json_response({"error": "stale_seq", "last_seq": 1043}, status=409)
    )

    with pytest.raises(StaleSequence) as caught:
        bearer_client(session, server.url).publish(seq=1042, body=encode_payload(PAYLOAD))

    assert caught.value.last_seq == 1043
    assert caught.value.status_code == 409


def test_409_stale_epoch_carries_the_receivers_term(
    session: requests.Session, server: HttpStub
) -> None:
    server.on(
        "POST",
        PUBLISH_PATH,
        json_response({"error": "stale_epoch", "last_seq": 1041, "last_epoch": 8}, status=409),
    )

    with pytest.raises(StaleEpoch) as caught:
        bearer_client(session, server.url).publish(seq=1042, body=encode_payload(PAYLOAD))

    assert caught.value.last_epoch == 8
    assert caught.value.last_seq == 1041
    assert "term has ended" in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        json_response({"error": "something_else"}, status=409),
        StubResponse(status=409, body=b"not json"),
        json_response({"error": "stale_seq\r\nX-Injected: 1"}, status=409),
    ],
)
def test_other_409s_are_plain_rejections(
    session: requests.Session, server: HttpStub, answer: StubResponse
) -> None:
    server.on("POST", PUBLISH_PATH, answer)

    with pytest.raises(EngagementRejected) as caught:
        bearer_client(session, server.url).publish(seq=1, body=encode_payload({}))

    assert type(caught.value) is EngagementRejected
    assert "X-Injected" not in str(caught.value)


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_other_4xx_are_rejections(session: requests.Session, server: HttpStub, status: int) -> None:
    server.on("POST", PUBLISH_PATH, json_response({"error": "too_large"}, status=status))

    with pytest.raises(EngagementRejected) as caught:
        bearer_client(session, server.url).publish(seq=1, body=encode_payload({}))

    assert type(caught.value) is EngagementRejected
    assert caught.value.status_code == status
    assert f"HTTP {status}" in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(StubResponse(status=500), id="500"),
        pytest.param(json_response({"error": "busy"}, status=503), id="503"),
        pytest.param(StubResponse(status=429), id="429"),
    ],
)
def test_unavailable_receiver_is_transient(
    session: requests.Session, server: HttpStub, answer: StubResponse
) -> None:
    server.on("POST", PUBLISH_PATH, answer)

    with pytest.raises(EngagementUnavailable) as caught:
        bearer_client(session, server.url).publish(seq=1, body=encode_payload({}))

    assert isinstance(caught.value, TransientError)
    assert_no_secrets(exception_texts(caught.value))


def test_a_receiver_that_never_answers_is_transient(
    session: requests.Session, server: HttpStub
) -> None:
    server.on("POST", PUBLISH_PATH, NEVER_ANSWERS)
    client = bearer_client(session, server.url, read_timeout=GIVE_UP_SECONDS)

    with pytest.raises(EngagementUnavailable) as caught:
        client.publish(seq=1, body=encode_payload({}))

    assert isinstance(caught.value, TransientError)
    assert "could not be reached" in str(caught.value)
    assert_no_secrets(exception_texts(caught.value))


def test_refused_connection_is_unavailable(session: requests.Session) -> None:
    with pytest.raises(EngagementUnavailable) as caught:
        bearer_client(session, refused_url()).publish(seq=1, body=encode_payload({}))

    assert "could not be reached" in str(caught.value)
    assert_no_secrets(exception_texts(caught.value))


def test_401_drops_the_oauth_token_and_the_next_publish_fetches_a_new_one(
    session: requests.Session, server: HttpStub
) -> None:
    # given
    server.on(
        "POST", TOKEN_PATH, token_response("access-token-1"), token_response("access-token-2")
    )
    server.on("POST", PUBLISH_PATH, StubResponse(status=401), accepted(2))
    client = EngagementClient(
        engagement_url=server.url,
        auth=oauth(session, server, FakeClock()),
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
    )

    # when
    with pytest.raises(EngagementRejected) as caught:
        client.publish(seq=1, body=encode_payload({"seq": 1}))
    ack = client.publish(seq=2, body=encode_payload({"seq": 2}))

    # then
    assert caught.value.status_code == 401
    assert_no_secrets(exception_texts(caught.value))
    assert ack.accepted_seq == 2
    assert len(server.requests_to(TOKEN_PATH)) == 2
    tokens = [request.header("Authorization") for request in server.requests_to(PUBLISH_PATH)]
    assert tokens == ["Bearer access-token-1", "Bearer access-token-2"]


def test_401_with_a_static_token_is_a_rejection(
    session: requests.Session, server: HttpStub
) -> None:
    server.on("POST", PUBLISH_PATH, StubResponse(status=401))

    with pytest.raises(EngagementRejected) as caught:
        bearer_client(session, server.url).publish(seq=1, body=encode_payload({}))

    assert caught.value.status_code == 401
    assert_no_secrets(exception_texts(caught.value))


BAD_200S = [
    pytest.param(
        StubResponse(body=b"{oops", headers={"Content-Type": "application/json"}), id="not-json"
    ),
    pytest.param(
        StubResponse(body=b'{"accepted_seq": 1}', headers={"Content-Type": "text/plain"}),
        id="text-plain",
    ),
    pytest.param(StubResponse(body=b'{"accepted_seq": 1}'), id="no-content-type"),
    pytest.param(json_response([1]), id="list"),
    pytest.param(json_response({"feedback": {}}), id="no-accepted-seq"),
    pytest.param(json_response({"accepted_seq": "1"}), id="accepted-seq-string"),
    pytest.param(json_response({"accepted_seq": True}), id="accepted-seq-bool"),
    pytest.param(json_response({"accepted_seq": 2}), id="accepted-seq-other"),
    pytest.param(
        StubResponse(
            body=b"\x1f\x8bnot gzip at all",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        id="bad-gzip",
    ),
    pytest.param(json_response({"accepted_seq": 1, "pad": "x" * 5000}), id="oversized"),
    pytest.param(
        StubResponse(
            body=orjson.dumps({"accepted_seq": 1, "pad": "x" * 5000}),
            headers={"Content-Type": "application/json"},
            send_content_length=False,
        ),
        id="oversized-without-length",
    ),
    pytest.param(
        json_response({"accepted_seq": 1, "pad": "x" * 50_000}, gzip_body=True),
        id="oversized-after-gunzip",
    ),
    pytest.param(
        StubResponse(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"}),
        id="redirect",
    ),
]


@pytest.mark.parametrize("answer", BAD_200S)
def test_bad_success_bodies_are_invalid_responses(
    session: requests.Session, server: HttpStub, answer: StubResponse
) -> None:
    server.on("POST", PUBLISH_PATH, answer)
    client = bearer_client(session, server.url, max_response_bytes=4096)

    with pytest.raises(InvalidResponse) as caught:
        client.publish(seq=1, body=encode_payload({}))

    assert_no_secrets(exception_texts(caught.value))


def test_malformed_feedback_fails_when_read_not_when_the_publish_is_acknowledged(
    session: requests.Session, server: HttpStub
) -> None:
    # given: a receiver that takes the cycle but answers feedback as a list
    server.on("POST", PUBLISH_PATH, json_response({"accepted_seq": 1, "feedback": [1]}))

    # when
    ack = bearer_client(session, server.url).publish(seq=1, body=encode_payload({}))

    # then: acknowledged (the receiver holds the cycle); the feedback itself is refused
    assert ack.accepted_seq == 1
    with pytest.raises(InvalidResponse, match="'feedback' is not an object") as caught:
        _ = ack.feedback
    assert_no_secrets(exception_texts(caught.value))


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable(
            "openssl is needed to make a self-signed certificate; `apt-get install openssl`"
        )
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_server(self_signed_cert: tuple[str, str]) -> Iterator[HttpStub]:
    with HttpStub(tls_cert=self_signed_cert) as stub:
        yield stub


def test_tls_is_verified_by_default(session: requests.Session, tls_server: HttpStub) -> None:
    tls_server.on("POST", PUBLISH_PATH, accepted(1))

    with pytest.raises(EngagementUnavailable, match="TLS verification failed"):
        bearer_client(session, tls_server.url).publish(seq=1, body=encode_payload({}))

    assert tls_server.requests == []


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_verification_can_be_switched_off(
    session: requests.Session, tls_server: HttpStub
) -> None:
    tls_server.on("POST", PUBLISH_PATH, accepted(1))
    client = bearer_client(session, tls_server.url, verify_tls=False)

    ack = client.publish(seq=1, body=encode_payload({}))

    assert ack.accepted_seq == 1


def test_tls_verify_flag_reaches_the_token_endpoint_too(
    session: requests.Session, tls_server: HttpStub
) -> None:
    tls_server.on("POST", TOKEN_PATH, token_response("access-token-1"))
    credentials = OAuth2ClientCredentials(
        auth_url=tls_server.url + TOKEN_PATH,
        client_id="pacing-node",
        client_secret=CLIENT_SECRET,
        session=session,
        connect_timeout=LOOPBACK_TIMEOUT_SECONDS,
        read_timeout=LOOPBACK_TIMEOUT_SECONDS,
    )

    with pytest.raises(EngagementUnavailable, match="TLS verification failed") as caught:
        credentials.authorization_header()

    assert_no_secrets(exception_texts(caught.value))
