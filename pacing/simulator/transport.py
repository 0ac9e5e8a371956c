"""A requests transport that hands requests to a simulator in this process, without a socket.

The virtual-time evaluation (:mod:`pacing.evaluation`) runs the service's own clients — the
Stat Server client and the engagement client, with their sessions, timeouts, size caps and
parsers — against the simulator's own routes, validation, fence and world, all in one process
and on one clock that the evaluation moves. Only the socket is left out: the bytes of each
request and answer are the ones that would cross it, gzip included. With no socket there is no
wall-clock timeout that a busy machine could trip, so a virtual-time run gives the same result
however fast the machine is::

    session = requests.Session()
    session.mount(SIMULATOR_BASE_URL, SimulatorTransport(app))
    session.post(SIMULATOR_BASE_URL + "/statserver/primary/v1/statistics/query", json=...)

A connection the simulator resets (a Stat Server or engagement platform that is "down") raises
``requests.ConnectionError``, as it does over a socket.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3 import HTTPHeaderDict, HTTPResponse

from pacing.simulator.app import SimulatorApp
from pacing.simulator.server import InProcessExchange

__all__ = ["SIMULATOR_BASE_URL", "SimulatorTransport"]

#: The base URL an in-process simulator answers on: ``.invalid`` can never resolve to a host, so a
#: session that lacks the transport fails at once instead of reaching something real.
SIMULATOR_BASE_URL = "http://simulator.invalid"


class SimulatorTransport(BaseAdapter):
    """Answers every request of the session it is mounted on from ``app``."""

    def __init__(self, app: SimulatorApp) -> None:
        super().__init__()
        self._app = app
        # build_response turns a urllib3 response into requests' Response, exactly as for a
        # request that crossed the network (cookies, encoding, streaming, decompression)
        self._builder = HTTPAdapter()

    def send(  # noqa: PLR0917 - the signature of requests' transport API
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Answer ``request`` from the simulator (the transport API of requests)."""
        url = urlsplit(request.url or "")
        path = url.path + (f"?{url.query}" if url.query else "")
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):  # a file-like or generator body: read it whole
            body = b"".join(body)
        exchange = InProcessExchange(self._app, dict(request.headers), body)
        answer = exchange.answer(request.method or "GET", path)
        if answer.reset:
            raise requests.ConnectionError(
                "The simulator reset the connection (it plays a server that is down).",
                request=request,
            )
        raw = HTTPResponse(
            body=io.BytesIO(answer.body),
            headers=HTTPHeaderDict(answer.headers),
            status=answer.status,
            preload_content=False,
            decode_content=True,
            request_method=request.method,
        )
        response = self._builder.build_response(request, raw)
        if not stream:
            _ = response.content  # read now, as requests does for a non-streamed request
        return response

    def close(self) -> None:
        """Nothing to release: no connections are kept."""
        self._builder.close()
