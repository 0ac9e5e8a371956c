"""The exporter's HTTP server: ``/metrics`` behind optional basic auth, and ``/healthz``.

``pacing exporter`` builds a :class:`~pacing.metrics.collector.PacingCollector` and hands it to
:func:`serve_metrics`; each scrape of ``/metrics`` then runs the collector's ``collect()``
(read the new cycle events, then the cluster state). Nothing here reads Redis itself.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from pacing.metrics.collector import PacingCollector

__all__ = ["basic_auth", "serve_metrics"]

_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def basic_auth(app: _WSGIApp, credentials: str | None) -> _WSGIApp:
    """Wrap ``app`` so it answers 401 unless the request carries ``credentials`` (user:pass)."""
    if credentials is None:
        return app
    expected = credentials.encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, encoded = header.partition(" ")
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if scheme.lower() == "basic" and hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="pacing metrics"'), ("Content-Type", "text/plain")],
        )
        return [b"Authentication required.\n"]

    return guarded


def _routes(metrics: _WSGIApp) -> _WSGIApp:
    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":  # liveness of the exporter only; says nothing about the cluster
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not found; metrics are at /metrics.\n"]

    return route


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape must not keep the process alive on Ctrl-C


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the service's own log."""


def serve_metrics(
    collector: PacingCollector, *, address: str, port: int, credentials: str | None
) -> WSGIServer:
    """An HTTP server for ``/metrics`` (basic auth if ``credentials``) and ``/healthz``.

    The caller runs ``serve_forever()`` (and ``shutdown()`` from another thread to stop it).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    app = _routes(basic_auth(make_wsgi_app(registry), credentials))
    return make_server(address, port, app, server_class=_Server, handler_class=_QuietHandler)
