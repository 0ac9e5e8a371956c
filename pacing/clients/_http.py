"""Small HTTP helpers shared by the Stat Server and engagement clients."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import requests

from pacing.errors import InvalidResponse

_CHUNK_BYTES: Final = 64 * 1024


def read_capped(
    response: requests.Response,
    *,
    max_bytes: int,
    deadline: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The decoded body of a streamed response, at most ``max_bytes`` long.

    Raises :class:`InvalidResponse` for a larger or undecodable body and ``requests.Timeout``
    once ``deadline`` (on ``clock``, monotonic seconds) passes: requests' read timeout bounds
    each socket read, not the whole body, so a server trickling bytes would otherwise hold the
    caller.
    """
    too_large = InvalidResponse(f"{what} sent a body larger than {max_bytes} bytes.")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    buffer = bytearray()
    try:
        # iter_content decompresses, so the cap applies to the decoded size (no gzip bombs).
        for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
            buffer += chunk
            if len(buffer) > max_bytes:
                raise too_large
            if clock() > deadline:
                raise requests.Timeout("the body took longer than the connect + read timeout")
    except requests.exceptions.ContentDecodingError as exc:
        raise InvalidResponse(f"{what} sent a body that could not be decompressed.") from exc
    return bytes(buffer)


def is_json(content_type: str | None) -> bool:
    """True for ``application/json`` and ``…+json`` media types (parameters ignored)."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def url_for_messages(url: str) -> str:
    """The URL without user info, query or fragment, which may carry credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))
