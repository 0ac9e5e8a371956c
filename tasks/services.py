"""This process's settings, read once on import, and the clients built from them.

The Celery app (:mod:`tasks.app`) is configured from these settings and drops the clients in
each pool process after the fork; the tasks (:mod:`tasks.cycle`) use them. Both import this
module, which imports neither.
"""

from __future__ import annotations

from pacing.services import Services
from pacing.settings import load_settings

settings = load_settings()
_services: Services | None = None


def services() -> Services:
    """This process's clients, created on first use (after the worker forked)."""
    global _services  # noqa: PLW0603 - one set of connections per process, by design
    if _services is None:
        _services = Services(settings)
    return _services


def reset_services() -> None:
    global _services  # noqa: PLW0603
    _services = None
