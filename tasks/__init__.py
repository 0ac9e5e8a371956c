"""The Celery side of the pacing service: ``celery -A tasks worker|beat|flower``."""

from tasks import cycle  # noqa: F401  (registers the tasks on the app)
from tasks.app import app

__all__ = ["app"]
