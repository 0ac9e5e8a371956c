"""The simulator's HTTP routes, whatever carries the request (a socket or an in-process call).

Everything in docs/contracts.md is served on one port:

- ``POST /statserver/{primary,backup}/v1/statistics/query``, ``GET …/v1/health``
- ``POST /engagement/v1/pacing`` (gzip or identity body, bearer token, ``seq`` fence)
- ``POST /oauth/token`` (client credentials, HTTP basic auth)
- ``GET /sim/targets``, ``GET /sim/metrics``, ``GET /sim/published``, ``GET|POST /sim/control``

:class:`_Routes` reads the request, applies the faults of :class:`pacing.simulator.app.Faults`
and answers from :class:`pacing.simulator.app.SimulatorApp`; the carriers that subclass it are
in :mod:`pacing.simulator.server`.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import logging
import zlib
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import orjson

from pacing.simulator.app import PUBLISHED_HISTORY, SimulatorApp
from pacing.simulator.errors import _bad_request, _HttpError, _ResetConnection
from pacing.simulator.receiver import parse_publish

logger = logging.getLogger(__name__)

#: docs/contracts.md §1: a shard asks for at most 5,000 ids.
MAX_QUERY_TARGETS = 5000
#: A query of 5,000 ids is about 150 KB; anything far beyond is not a query.
MAX_QUERY_BYTES = 4 * 1024 * 1024
#: Responses larger than this are gzip-encoded when the client accepts it.
GZIP_MIN_BYTES = 4 * 1024


class _Routes:
    """The simulator's HTTP routes, whatever carries the request.

    A subclass supplies the request (``headers``, ``_query``, the body through
    :meth:`_read_exact`) and the way the answer leaves (:meth:`_write_response`, :meth:`_reset`);
    both are in :mod:`pacing.simulator.server`: ``_Handler`` over a socket, ``InProcessExchange``
    for a caller in this process (the virtual-time evaluation, :mod:`pacing.simulator.transport`).
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
