"""How a simulator request ends other than with its answer: an HTTP error or a reset connection.

::

    Exception
    ├── _HttpError        a JSON error body {"error": code, "detail": …} with a status
    └── _ResetConnection  the TCP connection is reset (a server that is "down")

The app (:mod:`pacing.simulator.app`), the publish validation (:mod:`pacing.simulator.receiver`)
and the routes (:mod:`pacing.simulator.routes`) raise them; ``_Routes._dispatch`` turns them
into what the client sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus


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


def _bad_request(detail: str, code: str = "invalid_request") -> _HttpError:
    return _HttpError(HTTPStatus.BAD_REQUEST, code, detail)
