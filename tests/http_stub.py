"""A scripted HTTP server on loopback for client tests: real sockets, no mocking of requests.

Usage::

    with HttpStub() as stub:
        stub.on("POST", "/v1/statistics/query", json_response({"statistics": {}}))
        session.post(stub.url + "/v1/statistics/query", ...)
        assert stub.requests[0].json() == {...}

or as a fixture: ``stub = HttpStub(); stub.start(); yield stub; stub.stop()``.

Each route holds a queue of responses: every request takes the next one and the last one repeats.
A response may also be a callable that builds the answer from the recorded request. Unrouted
requests get ``404``. The server speaks HTTP/1.0 (one request per connection), so stopping it never
waits for an idle keep-alive connection of a client that is still open.

Timeouts: a stub's answer waits for its thread to be scheduled, which on a loaded machine can
take longer than any short client timeout. Clients of stubs that answer therefore use
:data:`LOOPBACK_TIMEOUT_SECONDS`; a timeout path is tested against a server that never answers
(:data:`NEVER_ANSWERS`, :func:`unreachable_url`), so the only timing left is "the client gives up
after its timeout", which holds however slow the machine is.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "GIVE_UP_SECONDS",
    "LOOPBACK_TIMEOUT_SECONDS",
    "NEVER_ANSWERS",
    "HttpStub",
    "RecordedRequest",
    "StubResponse",
    "json_response",
    "refused_url",
    "unreachable_url",
]

#: Connect and read timeout for clients of stubs that answer: far above any scheduling delay of a
#: loaded machine, so an answer is never given up on; a test that waits this long has hung.
LOOPBACK_TIMEOUT_SECONDS = 20.0
#: Timeout for a client of a server that never answers: it gives up after this whatever the load.
GIVE_UP_SECONDS = 0.2


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """A header value, case-insensitively."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def decoded_body(self) -> bytes:
        """The body, gunzipped if the request said ``Content-Encoding: gzip``."""
        if (self.header("Content-Encoding") or "").lower() == "gzip":
            return gzip.decompress(self.body)
        return self.body

    def json(self) -> Any:
        """The (decoded) body parsed as JSON."""
        return json.loads(self.decoded_body())


@dataclass(frozen=True)
class StubResponse:
    """What the stub answers.

    ``delay_seconds`` holds the answer back (a slow server); stopping the stub cuts the delay
    short. ``hold=True`` never answers: the request is held until the stub stops (a hung
    server, see :data:`NEVER_ANSWERS`). ``piece_bytes``/``piece_delay_seconds`` send the body
    in pieces with a pause between them (a trickling server). ``send_content_length=False``
    ends the body by closing the connection instead.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    send_content_length: bool = True
    piece_bytes: int = 0
    piece_delay_seconds: float = 0.0
    hold: bool = False


#: A hung server: reads the request and never answers (until the stub stops).
NEVER_ANSWERS = StubResponse(hold=True)

Responder = StubResponse | Callable[[RecordedRequest], StubResponse]


def json_response(
    payload: object,
    *,
    status: int = 200,
    gzip_body: bool = False,
    content_type: str = "application/json",
    delay_seconds: float = 0.0,
) -> StubResponse:
    """A JSON answer; ``payload`` may be anything ``json.dumps`` takes (NaN included)."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": content_type}
    if gzip_body:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return StubResponse(status=status, body=body, headers=headers, delay_seconds=delay_seconds)


def refused_url() -> str:
    """A loopback URL on which nothing listens (connections are refused)."""
    # Bind to get a free port, then close it: nothing listens there afterwards. Another
    # process could grab the port in between, which on loopback in a test run does not happen.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def unreachable_url() -> Iterator[str]:
    """A loopback URL whose TCP handshake never completes: the client waits for its connect
    timeout, however fast or slow the machine is.

    A listening socket with a backlog of 0 holds one connection that nobody accepts; with its
    accept queue full, Linux drops every further SYN, so a ``connect`` hangs (as it would towards
    a host that is down) instead of being refused. A server reachable on loopback still connects
    at once (the kernel completes the handshake), so a test can give the client a short connect
    timeout for this URL and long read timeouts for every server that answers.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the accept queue
            yield f"http://127.0.0.1:{port}"


class HttpStub:
    """A ThreadingHTTPServer on 127.0.0.1 answering with scripted responses."""

    def __init__(self, *, tls_cert: tuple[str, str] | None = None) -> None:
        """``tls_cert=(certfile, keyfile)`` serves HTTPS instead of HTTP."""
        self._tls_cert = tls_cert
        self._routes: dict[tuple[str, str], list[Responder]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[RecordedRequest] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> HttpStub:
        """Listen on a free loopback port and serve in a background thread."""
        stub = self

        class Handler(_Handler):
            owner = stub

        server = _QuietServer(("127.0.0.1", 0), Handler)
        if self._tls_cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._tls_cert)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        # Handler threads are joined on close; the stop event ends any scripted delay first.
        server.daemon_threads = False
        server.block_on_close = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut scripted delays short and join every thread."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HttpStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running stub."""
        assert self._server is not None, "start() the stub first"
        host, port = self._server.server_address[:2]
        scheme = "https" if self._tls_cert is not None else "http"
        return f"{scheme}://{host!s}:{port}"

    # --- scripting ------------------------------------------------------------------------------
    def on(self, method: str, path: str, *responses: Responder) -> None:
        """Answer ``method path`` with ``responses`` in turn; the last one repeats."""
        assert responses, "give at least one response"
        with self._lock:
            self._routes[(method.upper(), path)] = list(responses)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests for one path, in arrival order."""
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def _answer(self, request: RecordedRequest) -> StubResponse:
        with self._lock:
            self.requests.append(request)
            queue = self._routes.get((request.method, request.path))
            if not queue:
                return StubResponse(status=404, body=b"not found")
            responder = queue.pop(0) if len(queue) > 1 else queue[0]
        return responder(request) if callable(responder) else responder

    @contextmanager
    def serving(self) -> Iterator[HttpStub]:
        """``with stub.serving():`` — start and always stop."""
        self.start()
        try:
            yield self
        finally:
            self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer is expected; anything else is printed as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: HttpStub
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=self.command,
            path=self.path.split("?", 1)[0],
            headers=dict(self.headers.items()),
            body=body,
        )
        response = self.owner._answer(request)
        if response.hold:
            self.owner._stopping.wait()
            return
        if response.delay_seconds and self.owner._stopping.wait(response.delay_seconds):
            return
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.send_content_length:
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            piece = response.piece_bytes or len(response.body) or 1
            for start in range(0, len(response.body), piece):
                if start and self.owner._stopping.wait(response.piece_delay_seconds):
                    return
                self.wfile.write(response.body[start : start + piece])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (timeout, size cap): exactly what some tests provoke.
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""
