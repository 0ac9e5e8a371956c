"""Client of the engagement platform: publishes pacing results (docs/contracts.md §2).

Public surface:

* authentication — :class:`Authenticator` (protocol), :class:`BearerToken` (static token) and
  :class:`OAuth2ClientCredentials` (token cached until shortly before it expires);
* :class:`EngagementClient` — ``POST {engagement_url}/v1/pacing`` returning a :class:`PublishAck`.

This module does the I/O. The bodies, pure, are in :mod:`pacing.clients.engagement_payload`:
``encode_payload`` (the payload dict as gzip-compressed JSON) and ``parse_publish_response``
(the validation of a ``200``'s per-target feedback).

Errors come from :mod:`pacing.errors`: :class:`~pacing.errors.EngagementUnavailable` (connect
error, timeout, 5xx, 429), :class:`~pacing.errors.DeltaBaseMismatch` and
:class:`~pacing.errors.StaleSequence` (the two 409s), :class:`~pacing.errors.EngagementRejected`
(any other refusal) and :class:`~pacing.errors.InvalidResponse` (a body off the contract).
Secrets (tokens, client secrets) never appear in messages, reprs or logs.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import orjson
import requests
from numpy.typing import NDArray

from pacing.clients._http import is_json, read_capped, url_for_messages
from pacing.clients.engagement_payload import (
    parse_feedback_rows,
    parse_publish_response,
)
from pacing.domain import OfferFeedback
from pacing.errors import (
    ConfigurationError,
    DeltaBaseMismatch,
    EngagementRejected,
    EngagementUnavailable,
    InvalidResponse,
    StaleEpoch,
    StaleSequence,
)

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "PUBLISH_PATH",
    "Authenticator",
    "BearerToken",
    "EngagementClient",
    "OAuth2ClientCredentials",
    "PublishAck",
]

logger = logging.getLogger(__name__)

PUBLISH_PATH: Final = "/v1/pacing"
#: Feedback for 10,000 targets is about 1.2 MB of JSON; 16 MiB leaves room without risking memory.
DEFAULT_MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
#: A token response is a few hundred bytes; anything near this is not a token endpoint.
_MAX_TOKEN_RESPONSE_BYTES: Final = 64 * 1024
#: Error bodies are one short JSON object; only ``error``, ``last_seq`` and ``last_epoch`` are
#: read from them.
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
#: RFC 6750 b64token. Anything else could smuggle header syntax, and requests would echo the
#: offending value (the secret) in its InvalidHeader message.
_BEARER_TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


# --- authentication -----------------------------------------------------------------------------


class Authenticator(Protocol):
    """Supplies the ``Authorization`` header of a publish."""

    def authorization_header(self) -> str:
        """The header value, e.g. ``"Bearer abc"``; may fetch a token."""
        ...

    def invalidate(self) -> None:
        """Forget any cached credential after the platform answered 401."""
        ...


class BearerToken:
    """A static bearer token (setting ``engagement_token``)."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not _BEARER_TOKEN_PATTERN.fullmatch(token):
            raise ConfigurationError(
                "engagement_token is empty or contains characters that are not allowed in a "
                "bearer token (RFC 6750); copy the token again without spaces or quotes (the "
                "simulator accepts any token)."
            )
        self._token = token

    def __repr__(self) -> str:
        return "BearerToken(token='***')"

    def authorization_header(self) -> str:
        """``Bearer <token>``."""
        return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Nothing to do: a static token cannot be refreshed; the 401 surfaces to the caller."""


class OAuth2ClientCredentials:
    """OAuth2 client-credentials grant against ``auth_url`` with a cached access token.

    The token is reused until ``min(30 s, lifetime / 10)`` before it expires, measured on the
    injected ``clock`` (seconds; monotonic by default) from the moment the token request was sent.
    ``verify_tls`` applies to the token endpoint as it does to the pacing endpoint.
    """

    __slots__ = (
        "_auth_url",
        "_cached_token",
        "_client_id",
        "_client_secret",
        "_clock",
        "_lock",
        "_refresh_at",
        "_session",
        "_timeouts",
        "_verify_tls",
    )

    def __init__(
        self,
        *,
        auth_url: str,
        client_id: str,
        client_secret: str,
        session: requests.Session,
        connect_timeout: float,
        read_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        verify_tls: bool = True,
    ) -> None:
        self._auth_url = auth_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._session = session
        self._timeouts = (connect_timeout, read_timeout)
        self._clock = clock
        self._verify_tls = verify_tls
        # Celery prefork runs one task per process, but a threaded pool must not fetch twice.
        self._lock = threading.Lock()
        self._cached_token: str | None = None
        self._refresh_at = 0.0

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(auth_url={url_for_messages(self._auth_url)!r}, "
            f"client_id={self._client_id!r}, client_secret='***')"
        )

    def authorization_header(self) -> str:
        """``Bearer <token>``, fetching a new token if none is cached or it is about to expire."""
        with self._lock:
            token = self._cached_token
            if token is None or self._clock() >= self._refresh_at:
                token = self._fetch_token()
            return f"Bearer {token}"

    def invalidate(self) -> None:
        """Drop the cached token; the next :meth:`authorization_header` fetches a new one."""
        with self._lock:
            self._cached_token = None
            self._refresh_at = 0.0

    def _fetch_token(self) -> str:
        """Fetch, cache and return a new access token (the caller holds the lock)."""
        url = url_for_messages(self._auth_url)
        requested_at = self._clock()
        try:
            with self._session.post(
                self._auth_url,
                data={"grant_type": "client_credentials"},
                auth=(self._client_id, self._client_secret),
                headers={"Accept": "application/json"},
                timeout=self._timeouts,
                verify=self._verify_tls,
                stream=True,
                allow_redirects=False,
            ) as response:
                status = response.status_code
                content_type = response.headers.get("Content-Type")
                deadline = time.monotonic() + sum(self._timeouts)
                if status == 200:
                    raw = read_capped(
                        response,
                        max_bytes=_MAX_TOKEN_RESPONSE_BYTES,
                        deadline=deadline,
                        what=f"The OAuth2 token endpoint {url}",
                    )
                else:
                    raw = _read_error_body(response, deadline=deadline)
        except requests.RequestException as exc:
            raise EngagementUnavailable(
                f"The OAuth2 token endpoint {url} could not be reached "
                f"({_describe_request_error(exc)}); check auth_url and the network."
            ) from exc
        if status >= 500 or status == 429:
            raise EngagementUnavailable(
                f"The OAuth2 token endpoint {url} answered HTTP {status}; it may recover."
            )
        if status != 200:
            raise EngagementRejected(
                f"The OAuth2 token endpoint {url} refused the client credentials "
                f"(HTTP {status}); check client_id and client_secret.",
                status_code=status,
            )
        if not is_json(content_type):
            raise InvalidResponse(f"The OAuth2 token endpoint {url} did not answer with JSON.")
        body = _loads(raw, what=f"The OAuth2 token endpoint {url}")
        token, lifetime = _parse_token_response(body, url=url)
        self._cached_token = token
        self._refresh_at = requested_at + lifetime - min(30.0, lifetime / 10)
        return token


def _parse_token_response(body: object, *, url: str) -> tuple[str, float]:
    if not isinstance(body, Mapping):
        raise InvalidResponse(f"The OAuth2 token endpoint {url} did not answer with an object.")
    token = body.get("access_token")
    token_type = body.get("token_type")
    lifetime = body.get("expires_in")
    if not isinstance(token, str) or not _BEARER_TOKEN_PATTERN.fullmatch(token):
        raise InvalidResponse(
            f"The OAuth2 token endpoint {url} returned no usable access_token "
            "(missing, or characters not allowed in a bearer token)."
        )
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise InvalidResponse(
            f"The OAuth2 token endpoint {url} returned a token_type other than Bearer."
        )
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not math.isfinite(lifetime)
        or lifetime <= 0
    ):
        raise InvalidResponse(f"The OAuth2 token endpoint {url} returned no positive expires_in.")
    return token, float(lifetime)


# --- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishAck:
    """What the engagement platform said about one accepted publish.

    ``response`` is the decoded body; its ``feedback`` is validated when :attr:`feedback` is
    read, not when the publish is acknowledged: a receiver that took the cycle holds it even if
    its counters are malformed, and the pipeline hands the cycle to the audit before it spends
    time on up to one entry per target (see ``pacing.cycle.publish.publish_cycle``).
    """

    accepted_seq: int
    response: object = field(repr=False)
    bytes_sent: int
    status_code: int
    elapsed_seconds: float

    @property
    def feedback(self) -> dict[str, OfferFeedback]:
        """The counters per target (:func:`parse_publish_response`; InvalidResponse if the
        feedback is not an object)."""
        return parse_publish_response(self.response)

    def feedback_rows(self) -> tuple[list[str], NDArray[np.float64]]:
        """The same counters as (ids, (n, 4) array) (:func:`parse_feedback_rows`)."""
        return parse_feedback_rows(self.response)


class EngagementClient:
    """Publishes gzip-encoded pacing payloads to ``{engagement_url}/v1/pacing``."""

    def __init__(
        self,
        *,
        engagement_url: str,
        auth: Authenticator,
        session: requests.Session,
        connect_timeout: float,
        read_timeout: float,
        verify_tls: bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._url = engagement_url.rstrip("/") + PUBLISH_PATH
        self._auth = auth
        self._session = session
        self._timeout = (connect_timeout, read_timeout)
        self._verify_tls = verify_tls
        self._max_response_bytes = max_response_bytes

    def __repr__(self) -> str:
        return (
            f"EngagementClient(url={url_for_messages(self._url)!r}, auth={self._auth!r}, "
            f"verify_tls={self._verify_tls!r})"
        )

    def publish(self, *, seq: int, body: bytes) -> PublishAck:
        """POST one cycle's payload (``body`` from :func:`encode_payload`) with ``seq`` as key.

        Retrying the same ``seq`` is safe: the receiver applies a ``seq`` at most once.
        """
        url = url_for_messages(self._url)
        # The token fetch may itself raise EngagementUnavailable or EngagementRejected.
        authorization = self._auth.authorization_header()
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            "Authorization": authorization,
            "Idempotency-Key": str(seq),
        }
        started = time.perf_counter()
        try:
            with self._session.post(
                self._url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                verify=self._verify_tls,
                stream=True,
                # A redirect is a misconfigured URL; following it could hand the token to
                # another host and would turn the POST into a GET.
                allow_redirects=False,
            ) as response:
                status = response.status_code
                content_type = response.headers.get("Content-Type")
                deadline = time.monotonic() + self._timeout[0] + self._timeout[1]
                if status == 200:
                    raw = read_capped(
                        response,
                        max_bytes=self._max_response_bytes,
                        deadline=deadline,
                        what=f"The engagement platform at {url}",
                    )
                else:
                    raw = _read_error_body(response, deadline=deadline)
        except requests.RequestException as exc:
            raise EngagementUnavailable(
                f"The engagement platform at {url} could not be reached "
                f"({_describe_request_error(exc)}); the next attempt may succeed."
            ) from exc
        elapsed = time.perf_counter() - started

        if status == 200:
            if not is_json(content_type):
                raise InvalidResponse(f"The engagement platform at {url} did not answer JSON.")
            decoded = _loads(raw, what=f"The engagement platform at {url}")
            accepted_seq = _accepted_seq(decoded, seq=seq, url=url)
            return PublishAck(
                accepted_seq=accepted_seq,
                response=decoded,
                bytes_sent=len(body),
                status_code=status,
                elapsed_seconds=elapsed,
            )
        raise self._error_for(status, raw, seq=seq, url=url)

    def _error_for(self, status: int, raw: bytes, *, seq: int, url: str) -> Exception:
        error, last_seq, last_epoch = _error_fields(raw)
        if status >= 500 or status == 429:
            # 429 is a refusal "for now": retrying within the cycle deadline may succeed.
            return EngagementUnavailable(
                f"The engagement platform at {url} answered HTTP {status} to seq {seq}."
            )
        if status == 401:
            self._auth.invalidate()
            logger.warning("Engagement platform rejected the token", extra={"seq": seq})
            return EngagementRejected(
                f"The engagement platform at {url} rejected the credentials (HTTP 401) for seq "
                f"{seq}; the token was dropped and the next publish authenticates again. If it "
                "persists, check engagement_token or client_id/client_secret.",
                status_code=status,
            )
        if status == 409 and error == "base_mismatch":
            return DeltaBaseMismatch(
                f"The engagement platform does not hold the base of delta seq {seq} "
                f"(its last seq is {last_seq}); the next cycle must publish a full snapshot.",
                status_code=status,
            )
        if status == 409 and error == "stale_seq":
            holds = f"seq {last_seq}" if last_seq is not None else "a newer seq"
            return StaleSequence(
                f"The engagement platform already holds {holds}, so seq {seq} is not newer: "
                "this cycle or a newer one has been published already.",
                status_code=status,
                last_seq=last_seq,
            )
        if status == 409 and error == "stale_epoch":
            holds = f"epoch {last_epoch}" if last_epoch is not None else "a newer term"
            return StaleEpoch(
                f"The engagement platform already holds {holds} (seq {last_seq}), a newer "
                f"leadership term than the one of seq {seq}: this leader's term has ended.",
                status_code=status,
                last_seq=last_seq,
                last_epoch=last_epoch,
            )
        if 300 <= status < 400:
            return InvalidResponse(
                f"The engagement platform at {url} answered with a redirect (HTTP {status}); "
                "set engagement_url to the final address."
            )
        detail = f" ({error})" if error else ""
        return EngagementRejected(
            f"The engagement platform at {url} refused seq {seq} with HTTP {status}{detail}.",
            status_code=status,
        )


def _accepted_seq(body: object, *, seq: int, url: str) -> int:
    accepted = body.get("accepted_seq") if isinstance(body, Mapping) else None
    if isinstance(accepted, bool) or not isinstance(accepted, int):
        raise InvalidResponse(
            f"The engagement platform at {url} answered 200 without an integer accepted_seq."
        )
    # Anything else would mean the receiver applied a different cycle than the one we sent,
    # which breaks the fence; treat it as a contract violation rather than success.
    if accepted != seq:
        raise InvalidResponse(
            f"The engagement platform at {url} acknowledged seq {accepted} for a publish of {seq}."
        )
    return accepted


def _error_fields(raw: bytes) -> tuple[str | None, int | None, int | None]:
    """The ``error`` code (only if short and plain), ``last_seq`` and ``last_epoch`` of an error
    body, each None when absent or malformed."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(body, Mapping):
        return None, None, None
    error = body.get("error")
    # The code ends up in exception messages and logs; keep remote text short and inert.
    if not isinstance(error, str) or not re.fullmatch(r"[A-Za-z0-9_.\- ]{1,64}", error):
        error = None
    return error, _integer(body.get("last_seq")), _integer(body.get("last_epoch"))


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- HTTP helpers --------------------------------------------------------------------------------


def _read_error_body(response: requests.Response, *, deadline: float) -> bytes:
    """At most a small error body; an unreadable one is empty (the status says enough)."""
    try:
        return read_capped(
            response, max_bytes=_MAX_ERROR_BODY_BYTES, deadline=deadline, what="error body"
        )
    except (InvalidResponse, requests.RequestException):
        return b""


def _loads(raw: bytes, *, what: str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponse(f"{what} sent a body that is not valid JSON.") from exc


def _describe_request_error(exc: requests.RequestException) -> str:
    # Never str(exc): it is built by urllib3 and is not ours to vet for secrets.
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS verification failed"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed or broke"
    return type(exc).__name__
