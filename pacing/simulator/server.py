"""The simulator's HTTP face: Stat Server gateway, engagement platform, OAuth and ``/sim`` extras.

Everything in docs/contracts.md is served on one port by a stdlib ``ThreadingHTTPServer``:

- ``POST /statserver/{primary,backup}/v1/statistics/query``, ``GET …/v1/health``
- ``POST /engagement/v1/pacing`` (gzip or identity body, bearer token, ``seq`` fence)
- ``POST /oauth/token`` (client credentials, HTTP basic auth)
- ``GET /sim/targets``, ``GET /sim/metrics``, ``GET /sim/published``, ``GET|POST /sim/control``

Faults (a Stat Server or the engagement platform down, slow or answering 500, deltas rejected,
added latency, corrupted rows) are switched at run time through ``/sim/control`` so tests and
demos can exercise the pacing service's failure paths end to end.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hmac
import io
import logging
import math
import secrets
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import orjson

from pacing.domain import is_valid_target_id
from pacing.simulator.world import CORRUPTION_MODES, World

logger = logging.getLogger(__name__)

STAT_SERVER_MODES: frozenset[str] = frozenset({"up", "down", "slow", "error_500"})
ENGAGEMENT_MODES: frozenset[str] = frozenset({"ok", "down", "slow", "error_500", "reject_delta"})
REASONS: frozenset[str] = frozenset(
    {"ok", "cold_start", "no_agents", "queue_full", "stale", "error", "unknown_target"}
)

#: docs/contracts.md §1: a shard asks for at most 5,000 ids.
MAX_QUERY_TARGETS = 5000
#: A query of 5,000 ids is about 150 KB; anything far beyond is not a query.
MAX_QUERY_BYTES = 4 * 1024 * 1024
#: A full snapshot of 10,000 targets is about 1.2 MB of JSON; 100,000 fit in 16 MiB.
MAX_PUBLISH_BYTES = 16 * 1024 * 1024
#: Accepted publishes kept for ``/sim/published`` (a day at one per second).
PUBLISHED_HISTORY = 100_000
#: Responses larger than this are gzip-encoded when the client accepts it.
GZIP_MIN_BYTES = 4 * 1024
#: Lifetime of the OAuth tokens the simulator issues, unless changed through /sim/control.
TOKEN_LIFETIME_SECONDS = 3600


class _HttpError(Exception):
    """Ends a request with ``status`` and ``{"error": code, "detail": detail}``."""

    def __init__(
        self,
        status: HTTPStatus,
        code: str,
        detail: str = "",
        *,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.body: dict[str, object] = {"error": code}
        if detail:
            self.body["detail"] = detail
        if extra:
            self.body.update(extra)
        self.headers = dict(headers or {})
        self.close = close


class _ResetConnection(Exception):
    """Ends a request by resetting the TCP connection (a server that is "down")."""


@dataclass(slots=True)
class Faults:
    """The fault knobs ``/sim/control`` turns; read by every request."""

    stat_server: dict[str, str] = field(default_factory=lambda: {"primary": "up", "backup": "up"})
    engagement: str = "ok"
    latency_ms: float = 0.0  # added to every statistics request
    slow_seconds: float = 10.0  # how long a "slow" server sleeps: beyond any client timeout

    def as_json(self, corruption: Mapping[str, str]) -> dict[str, object]:
        """The current faults as ``GET /sim/control`` shows them."""
        return {
            "stat_server": dict(self.stat_server),
            "engagement": {"mode": self.engagement},
            "latency_ms": self.latency_ms,
            "slow_seconds": self.slow_seconds,
            "corrupt": dict(corruption),
        }


@dataclass(frozen=True, slots=True)
class _Published:
    seq: int
    epoch: int
    kind: str
    targets: int
    received_at: float


@dataclass(frozen=True, slots=True)
class _Publish:
    """A validated engagement payload."""

    seq: int
    epoch: int
    kind: str
    base_seq: int | None
    refresh_period_seconds: float
    target_ids: list[str]
    budgets: list[int]
    reactive_states: list[float]


class SimulatorApp:
    """The request-independent state of the simulator: world, faults, fence, tokens."""

    def __init__(
        self,
        world: World,
        *,
        clock: Callable[[], float] = time.time,
        static_token: str | None = "sim-token",  # noqa: S107 - development double
        client_id: str = "pacing",
        client_secret: str = "sim-secret",  # noqa: S107 - development double
    ) -> None:
        self.world = world
        self.clock = clock
        self.static_token = static_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.max_publish_bytes = MAX_PUBLISH_BYTES
        self.token_lifetime_seconds = TOKEN_LIFETIME_SECONDS
        self.faults = Faults()
        self.stopping = threading.Event()  # wakes "slow" handlers when the server stops
        self._lock = threading.Lock()  # fence, published list, tokens, faults
        self._tokens: dict[str, float] = {}  # access token -> expiry (clock seconds)
        self.last_seq: int | None = None
        self._published: deque[_Published] = deque(maxlen=PUBLISHED_HISTORY)
        self._published_seqs: set[int] = set()
        self.fence_counters: dict[str, int] = {
            "accepted_publishes": 0,
            "rejected_stale": 0,
            "rejected_base_mismatch": 0,
            "duplicates_seen": 0,
            "rejected_invalid": 0,
            "rejected_unauthorized": 0,
        }

    # ----------------------------------------------------------------- tokens

    def issue_token(self) -> tuple[str, int]:
        """A new OAuth access token and its lifetime in seconds."""
        token = secrets.token_urlsafe(24)
        lifetime = self.token_lifetime_seconds
        now = self.clock()
        with self._lock:
            # Expired tokens are dropped here so the table cannot grow without bound.
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + lifetime
        return token, lifetime

    def token_valid(self, token: str) -> bool:
        """True for the static token or an OAuth token that has not expired."""
        if self.static_token is not None and hmac.compare_digest(
            token.encode(), self.static_token.encode()
        ):
            return True
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > self.clock()

    def revoke_tokens(self) -> None:
        """Forget every issued OAuth token (the static token stays valid)."""
        with self._lock:
            self._tokens.clear()

    # ------------------------------------------------------------------ fence

    def publish(self, payload: _Publish) -> dict[str, object]:
        """Apply a validated publish behind the ``seq`` fence; a 409 is an :class:`_HttpError`."""
        with self._lock:
            last = self.last_seq
            if last is not None and payload.seq <= last:
                self.fence_counters["rejected_stale"] += 1
                if payload.seq in self._published_seqs:
                    self.fence_counters["duplicates_seen"] += 1
                raise _HttpError(HTTPStatus.CONFLICT, "stale_seq", extra={"last_seq": last})
            if payload.kind == "delta" and (
                self.faults.engagement == "reject_delta" or payload.base_seq != last
            ):
                self.fence_counters["rejected_base_mismatch"] += 1
                raise _HttpError(HTTPStatus.CONFLICT, "base_mismatch", extra={"last_seq": last})
            now = self.clock()
            # Applied under the fence lock: two concurrent publishes must not interleave
            # their budgets with the order of their seqs.
            self.world.apply_publish(
                payload.target_ids,
                payload.budgets,
                payload.reactive_states,
                full=payload.kind == "full",
                refresh_period_seconds=payload.refresh_period_seconds,
                now=now,
            )
            self.last_seq = payload.seq
            self.fence_counters["accepted_publishes"] += 1
            if len(self._published) == self._published.maxlen:
                self._published_seqs.discard(self._published[0].seq)
            self._published.append(
                _Published(
                    seq=payload.seq,
                    epoch=payload.epoch,
                    kind=payload.kind,
                    targets=len(payload.target_ids),
                    received_at=now,
                )
            )
            self._published_seqs.add(payload.seq)
        # a delta is answered with the counters that moved, a full snapshot with all of them
        feedback = self.world.feedback(now=now, changed_only=payload.kind == "delta")
        return {"accepted_seq": payload.seq, "feedback": feedback}

    def count(self, counter: str) -> None:
        """Add one to a fence counter."""
        with self._lock:
            self.fence_counters[counter] += 1

    def published_after(self, after: int, limit: int) -> dict[str, object]:
        """``GET /sim/published``: accepted publishes with seq > ``after``, oldest first."""
        with self._lock:
            rows = [
                {
                    "seq": p.seq,
                    "epoch": p.epoch,
                    "kind": p.kind,
                    "targets": p.targets,
                    "received_at": p.received_at,
                }
                for p in self._published
                if p.seq > after
            ][:limit]
            rejected = {
                "stale_seq": self.fence_counters["rejected_stale"],
                "base_mismatch": self.fence_counters["rejected_base_mismatch"],
                "duplicates": self.fence_counters["duplicates_seen"],
                "invalid": self.fence_counters["rejected_invalid"],
                "unauthorized": self.fence_counters["rejected_unauthorized"],
            }
            return {"published": rows, "rejected": rejected, "last_seq": self.last_seq}

    def fence_json(self) -> dict[str, object]:
        """The receiver's fence counters for ``/sim/metrics``."""
        with self._lock:
            return {**self.fence_counters, "last_seq": self.last_seq}

    # ---------------------------------------------------------------- control

    def control_json(self) -> dict[str, object]:
        """``GET /sim/control``."""
        with self._lock:
            return self.faults.as_json(self.world.corruption)

    def apply_control(self, body: object) -> dict[str, object]:
        """``POST /sim/control``: validate everything first, then apply it all."""
        if not isinstance(body, dict):
            raise _bad_request("The control body must be a JSON object.")
        known = {
            "stat_server",
            "engagement",
            "corrupt",
            "latency_ms",
            "slow_seconds",
            "clear",
            "reset_metrics",
            "oauth",
        }
        unknown = sorted(set(body) - known)
        if unknown:
            raise _bad_request(f"Unknown control keys {unknown}; known keys are {sorted(known)}.")
        actions: list[Callable[[], None]] = []
        faults = self.faults

        if body.get("clear") is True:

            def clear() -> None:
                faults.stat_server = {"primary": "up", "backup": "up"}
                faults.engagement = "ok"
                faults.latency_ms = 0.0
                self.world.clear_corruption()

            actions.append(clear)
        if "stat_server" in body:
            modes = body["stat_server"]
            if not isinstance(modes, dict) or not set(modes) <= {"primary", "backup"}:
                raise _bad_request('"stat_server" must map "primary"/"backup" to a mode.')
            for role, mode in modes.items():
                if mode not in STAT_SERVER_MODES:
                    raise _bad_request(
                        f"Stat Server mode {mode!r} for {role} is not one of "
                        f"{sorted(STAT_SERVER_MODES)}."
                    )
            actions.append(lambda: faults.stat_server.update(modes))
        if "engagement" in body:
            engagement = body["engagement"]
            mode = engagement.get("mode") if isinstance(engagement, dict) else None
            if mode not in ENGAGEMENT_MODES:
                raise _bad_request(
                    f'"engagement" must be {{"mode": …}} with a mode in {sorted(ENGAGEMENT_MODES)}.'
                )
            engagement_mode = str(mode)
            actions.append(lambda: setattr(faults, "engagement", engagement_mode))
        for key in ("latency_ms", "slow_seconds"):
            if key in body:
                number = _number(body[key])
                if number is None or not 0 <= number <= 600_000:
                    raise _bad_request(f'"{key}" must be a number between 0 and 600000.')
                actions.append(_setter(faults, key, number))
        if "corrupt" in body:
            corrupt = body["corrupt"]
            if not isinstance(corrupt, dict):
                raise _bad_request('"corrupt" must map target ids to a mode or null.')
            known_ids = set(self.world.target_ids())
            for target_id, mode in corrupt.items():
                if target_id not in known_ids:
                    raise _bad_request(f'Unknown target {target_id!r} in "corrupt".')
                if mode is not None and mode not in CORRUPTION_MODES | {"none"}:
                    raise _bad_request(
                        f"Corruption {mode!r} is not one of {sorted(CORRUPTION_MODES)} or null."
                    )

            def corrupt_targets() -> None:
                for target_id, mode in corrupt.items():
                    self.world.set_corruption(target_id, None if mode in (None, "none") else mode)

            actions.append(corrupt_targets)
        if body.get("reset_metrics") is True:
            actions.append(self.world.reset_metrics)
        if "oauth" in body:
            oauth = body["oauth"]
            if not isinstance(oauth, dict) or not set(oauth) <= {"revoke", "expires_in"}:
                raise _bad_request('"oauth" accepts {"revoke": true, "expires_in": seconds}.')
            if "expires_in" in oauth:
                lifetime = oauth["expires_in"]
                if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < 1:
                    raise _bad_request('"oauth.expires_in" must be a positive integer.')
                actions.append(lambda: setattr(self, "token_lifetime_seconds", lifetime))
            if oauth.get("revoke") is True:
                actions.append(self.revoke_tokens)
        for action in actions:
            action()
        logger.info("simulator faults changed", extra={"control": sorted(body)})
        return self.control_json()


def _bad_request(detail: str, code: str = "invalid_request") -> _HttpError:
    return _HttpError(HTTPStatus.BAD_REQUEST, code, detail)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _number(value: object) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _setter(target: object, name: str, value: object) -> Callable[[], None]:
    def apply() -> None:
        setattr(target, name, value)

    return apply


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_publish(body: object, idempotency_key: str | None) -> _Publish:
    """Validate an engagement payload (docs/contracts.md §2); raises a 400 :class:`_HttpError`."""
    if not isinstance(body, dict):
        raise _bad_request("The body must be a JSON object.", "invalid_payload")

    def fail(detail: str) -> _HttpError:
        return _bad_request(detail, "invalid_payload")

    seq = body.get("seq")
    if not _is_count(seq):
        raise fail('"seq" must be an integer >= 0.')
    assert isinstance(seq, int)  # narrowed by _is_count, for mypy
    if idempotency_key is not None and idempotency_key.strip() != str(seq):
        raise fail(f'The Idempotency-Key header ({idempotency_key!r}) must equal "seq" ({seq}).')
    epoch = body.get("epoch")
    if not _is_count(epoch):
        raise fail('"epoch" must be an integer >= 0.')
    assert isinstance(epoch, int)
    if not _is_number(body.get("generated_at")):
        raise fail('"generated_at" must be a number (Unix seconds).')
    period_ms = body.get("refresh_period_ms")
    if not _is_count(period_ms) or period_ms == 0:
        raise fail('"refresh_period_ms" must be a positive integer.')
    assert isinstance(period_ms, int)
    kind = body.get("kind")
    if kind not in ("full", "delta"):
        raise fail('"kind" must be "full" or "delta".')
    base_seq = body.get("base_seq")
    if kind == "delta":
        if not _is_count(base_seq):
            raise fail('A delta needs "base_seq", an integer >= 0.')
        assert isinstance(base_seq, int)
    else:
        base_seq = None
    targets = body.get("targets")
    if not isinstance(targets, list):
        raise fail('"targets" must be a list.')
    channels = body.get("channels")
    if not isinstance(channels, dict):
        raise fail('"channels" must be an object of per-channel sums.')
    for name, sums in channels.items():
        if not (
            isinstance(sums, dict)
            and _is_count(sums.get("proactive_budget"))
            and _is_count(sums.get("ready_capacity"))
        ):
            raise fail(
                f'channels["{name}"] must hold integer "proactive_budget" and "ready_capacity".'
            )

    target_ids: list[str] = []
    budgets: list[int] = []
    states: list[float] = []
    seen: set[str] = set()
    for i, target in enumerate(targets):
        if not isinstance(target, dict):
            raise fail(f"targets[{i}] must be an object.")
        target_id = target.get("id")
        if not is_valid_target_id(target_id):
            raise fail(f"targets[{i}].id must be a target id (1–128 safe characters).")
        assert isinstance(target_id, str)
        if target_id in seen:
            raise fail(f"targets[{i}].id {target_id!r} appears twice.")
        seen.add(target_id)
        if not isinstance(target.get("channel"), str):
            raise fail(f"targets[{i}].channel must be a string.")
        budget = target.get("proactive_budget")
        if not _is_count(budget):
            raise fail(f"targets[{i}].proactive_budget must be an integer >= 0.")
        state = _number(target.get("reactive_state"))
        if state is None or not 0.0 <= state <= 1.0:
            raise fail(f"targets[{i}].reactive_state must be a number in [0, 1].")
        if not _is_count(target.get("ready_capacity")):
            raise fail(f"targets[{i}].ready_capacity must be an integer >= 0.")
        if target.get("reason") not in REASONS:
            raise fail(f"targets[{i}].reason must be one of {sorted(REASONS)}.")
        target_ids.append(target_id)
        assert isinstance(budget, int)
        budgets.append(budget)
        states.append(state)
    return _Publish(
        seq=seq,
        epoch=epoch,
        kind=str(kind),
        base_seq=base_seq,
        refresh_period_seconds=period_ms / 1000.0,
        target_ids=target_ids,
        budgets=budgets,
        reactive_states=states,
    )


class _Routes:
    """The simulator's HTTP routes, whatever carries the request.

    A subclass supplies the request (``headers``, ``_query``, the body through
    :meth:`_read_exact`) and the way the answer leaves (:meth:`_write_response`, :meth:`_reset`):
    :class:`_Handler` over a socket, :class:`InProcessExchange` for a caller in this process
    (the virtual-time evaluation, :mod:`pacing.simulator.transport`).
    """

    headers: Any  # case-insensitive .get(name, default), like http.client's message
    close_connection: bool
    _query: dict[str, list[str]]
    _body_read: bool

    _routes: ClassVar[dict[tuple[str, str], str]] = {
        ("POST", "/statserver/primary/v1/statistics/query"): "_statistics_primary",
        ("POST", "/statserver/backup/v1/statistics/query"): "_statistics_backup",
        ("GET", "/statserver/primary/v1/health"): "_health_primary",
        ("GET", "/statserver/backup/v1/health"): "_health_backup",
        ("POST", "/engagement/v1/pacing"): "_pacing",
        ("POST", "/oauth/token"): "_token",
        ("GET", "/sim/targets"): "_sim_targets",
        ("GET", "/sim/metrics"): "_sim_metrics",
        ("GET", "/sim/published"): "_sim_published",
        ("GET", "/sim/control"): "_sim_control_get",
        ("POST", "/sim/control"): "_sim_control_post",
    }

    @property
    def app(self) -> SimulatorApp:
        raise NotImplementedError

    def _read_exact(self, length: int) -> bytes:
        """Up to ``length`` bytes of the request body (fewer if the client hung up)."""
        raise NotImplementedError

    def _write_response(
        self, status: HTTPStatus, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        """Send the status line, ``headers`` and ``body``."""
        raise NotImplementedError

    def _reset(self) -> None:
        """Abort the exchange as a crashed server would (a TCP reset)."""
        raise NotImplementedError

    def _dispatch(self, method: str, path: str) -> None:
        url = urlsplit(path)
        self._query = parse_qs(url.query)
        self._body_read = False
        try:
            name = self._routes.get((method, url.path))
            if name is None:
                if any(route == url.path for _, route in self._routes):
                    raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed")
                raise _HttpError(HTTPStatus.NOT_FOUND, "not_found", f"No route {url.path}.")
            getattr(self, name)()
        except _ResetConnection:
            self._reset()
        except _HttpError as error:
            # With keep-alive, an unread body would be parsed as the next request, so the
            # connection ends with this response (and says so in its headers).
            if error.close or (method == "POST" and not self._body_read):
                self.close_connection = True
            self._send_json(error.status, error.body, error.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            # A bad request must never take the server down; the traceback is logged.
            logger.exception("simulator request failed", extra={"path": url.path})
            self.close_connection = True
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal_error"})
        finally:
            if not self._body_read and method == "POST":
                self.close_connection = True

    # ---------------------------------------------------------------- helpers

    def _sleep(self, seconds: float) -> None:
        # Interruptible: stopping the simulator wakes every "slow" request at once.
        self.app.stopping.wait(seconds)

    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise _HttpError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "Send a Content-Length.", close=True
            )
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else 0
        except ValueError:
            raise _bad_request("Content-Length is not an integer.") from None
        if length < 0:
            raise _bad_request("Content-Length is negative.")
        if length > limit:
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "payload_too_large",
                f"The body is {length} bytes; the limit is {limit}.",
                close=True,
            )
        body = self._read_exact(length)
        self._body_read = True
        if len(body) != length:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _decode(self, body: bytes, limit: int) -> bytes:
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("identity", ""):
            return body
        if encoding != "gzip":
            raise _HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                f"Content-Encoding {encoding!r} is not supported; use gzip or identity.",
            )
        # Bounded inflate: a small gzip bomb must not allocate gigabytes.
        inflater = zlib.decompressobj(wbits=31)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise _bad_request("The body is not valid gzip.", "invalid_payload") from None
        if len(data) > limit:
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "payload_too_large",
                f"The decompressed body exceeds {limit} bytes.",
            )
        if not inflater.eof:
            raise _bad_request("The gzip body is truncated.", "invalid_payload")
        return data

    def _json_body(self, limit: int) -> object:
        data = self._decode(self._read_body(limit), limit)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise _bad_request(f"The body is not valid JSON: {error}.", "invalid_json") from None

    def _send_json(
        self,
        status: HTTPStatus,
        body: object,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        payload = orjson.dumps(body)
        fields = [("Content-Type", "application/json")]
        if len(payload) >= GZIP_MIN_BYTES and "gzip" in self.headers.get("Accept-Encoding", ""):
            # Level 1: most of the size reduction for a fraction of the CPU.
            payload = gzip.compress(payload, compresslevel=1)
            fields.append(("Content-Encoding", "gzip"))
        fields.append(("Content-Length", str(len(payload))))
        fields.extend((headers or {}).items())
        if self.close_connection:
            fields.append(("Connection", "close"))
        self._write_response(status, fields, payload)

    # ------------------------------------------------------------ stat server

    def _stat_server_fault(self, role: str) -> None:
        mode = self.app.faults.stat_server[role]
        if mode == "down":
            raise _ResetConnection
        if mode == "error_500":
            raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error")
        if mode == "slow":
            self._sleep(self.app.faults.slow_seconds)

    def _statistics(self, role: str) -> None:
        if self.app.faults.stat_server[role] == "down":
            raise _ResetConnection
        body = self._json_body(MAX_QUERY_BYTES)
        self._stat_server_fault(role)
        if self.app.faults.latency_ms > 0:
            self._sleep(self.app.faults.latency_ms / 1000.0)
        targets = body.get("targets") if isinstance(body, dict) else None
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise _bad_request('The body must be {"targets": [id, …]} with string ids.')
        if len(targets) > MAX_QUERY_TARGETS:
            raise _bad_request(
                f"At most {MAX_QUERY_TARGETS} ids per request; this one has {len(targets)}."
            )
        statistics, unknown = self.app.world.statistics(targets, now=self.app.clock())
        self._send_json(
            HTTPStatus.OK,
            {
                "server": role,
                "generated_at": self.app.clock(),
                "statistics": statistics,
                "unknown": unknown,
            },
        )

    def _statistics_primary(self) -> None:
        self._statistics("primary")

    def _statistics_backup(self) -> None:
        self._statistics("backup")

    def _health(self, role: str) -> None:
        self._stat_server_fault(role)
        self._send_json(HTTPStatus.OK, {"status": "ok", "role": role})

    def _health_primary(self) -> None:
        self._health("primary")

    def _health_backup(self) -> None:
        self._health("backup")

    # ------------------------------------------------------------- engagement

    def _pacing(self) -> None:
        app = self.app
        mode = app.faults.engagement
        if mode == "down":
            raise _ResetConnection
        raw = self._read_body(app.max_publish_bytes)
        if mode == "error_500":
            raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error")
        if mode == "slow":
            self._sleep(app.faults.slow_seconds)
        authorization = self.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or not app.token_valid(token.strip()):
            app.count("rejected_unauthorized")
            raise _HttpError(
                HTTPStatus.UNAUTHORIZED,
                "invalid_token",
                "Send Authorization: Bearer <token> with the static token or an OAuth token.",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        try:
            body = orjson.loads(self._decode(raw, app.max_publish_bytes))
        except orjson.JSONDecodeError as error:
            app.count("rejected_invalid")
            raise _bad_request(f"The body is not valid JSON: {error}.", "invalid_json") from None
        except _HttpError:
            app.count("rejected_invalid")
            raise
        try:
            payload = parse_publish(body, self.headers.get("Idempotency-Key"))
        except _HttpError:
            app.count("rejected_invalid")
            raise
        self._send_json(HTTPStatus.OK, app.publish(payload))

    def _token(self) -> None:
        app = self.app
        body = self._read_body(64 * 1024)
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        try:
            client_id, _, client_secret = (
                base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            client_id = client_secret = ""
        if not (
            scheme.lower() == "basic"
            and hmac.compare_digest(client_id.encode(), app.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), app.client_secret.encode())
        ):
            raise _HttpError(
                HTTPStatus.UNAUTHORIZED,
                "invalid_client",
                "Authenticate with HTTP basic auth client_id:client_secret.",
                headers={"WWW-Authenticate": 'Basic realm="simulator"'},
            )
        form = parse_qs(body.decode("utf-8", errors="replace"))
        if form.get("grant_type") != ["client_credentials"]:
            raise _bad_request(
                "Only grant_type=client_credentials is supported.", "unsupported_grant_type"
            )
        token, lifetime = app.issue_token()
        self._send_json(
            HTTPStatus.OK,
            {"access_token": token, "token_type": "Bearer", "expires_in": lifetime},
            headers={"Cache-Control": "no-store"},
        )

    # -------------------------------------------------------------- /sim extras

    def _sim_targets(self) -> None:
        self._send_json(HTTPStatus.OK, {"targets": self.app.world.targets_listing()})

    def _sim_metrics(self) -> None:
        per_target = self._query.get("per_target", ["0"])[-1].lower() in ("1", "true", "yes")
        metrics = self.app.world.metrics(per_target=per_target, now=self.app.clock())
        metrics["fence"] = self.app.fence_json()
        self._send_json(HTTPStatus.OK, metrics)

    def _sim_published(self) -> None:
        try:
            after = int(self._query.get("after", ["-1"])[-1])
            limit = int(self._query.get("limit", [str(PUBLISHED_HISTORY)])[-1])
        except ValueError:
            raise _bad_request('"after" and "limit" must be integers.') from None
        self._send_json(HTTPStatus.OK, self.app.published_after(after, max(0, limit)))

    def _sim_control_get(self) -> None:
        self._send_json(HTTPStatus.OK, self.app.control_json())

    def _sim_control_post(self) -> None:
        self._send_json(HTTPStatus.OK, self.app.apply_control(self._json_body(1024 * 1024)))


class _Handler(_Routes, BaseHTTPRequestHandler):
    """One HTTP/1.1 connection; routes to the simulator app."""

    server: SimulatorHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the pacing clients reuse connections
    server_version = "PacingSimulator/1.0"
    timeout = 60  # an idle keep-alive connection is closed after this many seconds
    # TCP_NODELAY: the headers and the body leave in two writes; with Nagle's algorithm the
    # body waits for the ACK of the headers, which the client delays by up to 40 ms (measured:
    # a 250-target statistics request took 44 ms instead of 1 ms).
    disable_nagle_algorithm = True

    @property
    def app(self) -> SimulatorApp:
        return self.server.app

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines go to the debug log, not to stderr."""
        logger.debug("simulator http: " + format, *args)  # noqa: G003

    def do_GET(self) -> None:
        """Route a GET."""
        self._dispatch("GET", self.path)

    def do_POST(self) -> None:
        """Route a POST."""
        self._dispatch("POST", self.path)

    def _read_exact(self, length: int) -> bytes:
        return self.rfile.read(length)

    def _write_response(
        self, status: HTTPStatus, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            return
        self.connection.close()


@dataclass(frozen=True, slots=True)
class InProcessAnswer:
    """What the simulator answered an in-process request (``reset``: it reset the connection)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reset: bool = False


class InProcessExchange(_Routes):
    """One request handed to the simulator by a caller in this process, without a socket.

    The routes, validation, faults, fence and world are exactly those the HTTP server runs;
    only the bytes do not cross a socket. :mod:`pacing.simulator.transport` builds a requests
    transport on it.
    """

    def __init__(self, app: SimulatorApp, headers: Mapping[str, str], body: bytes) -> None:
        self._app = app
        self.headers = _CaseInsensitiveHeaders(headers)
        self._body = io.BytesIO(body)
        self.close_connection = False
        self._answer: InProcessAnswer | None = None

    @property
    def app(self) -> SimulatorApp:
        return self._app

    def answer(self, method: str, path: str) -> InProcessAnswer:
        """Route ``method path`` and return the answer."""
        self._dispatch(method.upper(), path)
        if self._answer is None:  # the client "hung up" before an answer was written
            return InProcessAnswer(status=0, headers=[], body=b"", reset=True)
        return self._answer

    def _read_exact(self, length: int) -> bytes:
        return self._body.read(length)

    def _write_response(
        self, status: HTTPStatus, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self._answer = InProcessAnswer(status=int(status), headers=headers, body=body)

    def _reset(self) -> None:
        self._answer = InProcessAnswer(status=0, headers=[], body=b"", reset=True)


class _CaseInsensitiveHeaders:
    """Request headers looked up like http.client's message: by name, any case."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = {name.lower(): value for name, value in headers.items()}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name.lower(), default)


class SimulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that can close its open keep-alive connections on stop."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when 40 shards ask at once.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], app: SimulatorApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the connection so :meth:`close_connections` can end it."""
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection, then close it."""
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection so idle keep-alive handlers return."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: its handler closed it meanwhile.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
