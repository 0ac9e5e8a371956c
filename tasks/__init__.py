"""The Celery side of the pacing service: ``celery -A tasks worker|beat|flower``."""

from tasks import cycle  # noqa: F401  (registers the tasks on the app)
from tasks.app import app
from tasks.flower_settings import use_service_flower_config

# `celery -A tasks flower` reads basic auth and the tasks page's columns from the settings
use_service_flower_config()

__all__ = ["app"]
