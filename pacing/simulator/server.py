"""The simulator's carriers: a stdlib ``ThreadingHTTPServer`` and an in-process exchange.

Both hand a request to the same routes (:mod:`pacing.simulator.routes`) over the same app
(:mod:`pacing.simulator.app`): :class:`SimulatorHTTPServer` with its :class:`_Handler` over a
socket (``pacing simulate``, the integration tests), :class:`InProcessExchange` for a caller in
this process (:mod:`pacing.simulator.transport`, the virtual-time evaluation).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pacing.simulator.app import SimulatorApp
from pacing.simulator.routes import _Routes

logger = logging.getLogger(__name__)


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
