"""The Celery app, its configuration (derived from the settings) and the beat schedule."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from pacing.logs import configure_logging
from pacing.settings import Settings, load_settings

HISTORY_PURGE_PERIOD = timedelta(days=1)
RESULT_EXPIRES_SECONDS = 600  # chord results are read within one cycle; keep Redis small


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``settings`` (celery-notes.md §2.4 gives the reasons)."""
    period = settings.refresh_period_seconds
    beat_dir = settings.sqlite_path.parent if settings.sqlite_path else Path("var")
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.effective_result_backend,
        # JSON only: a pickled message could execute code in the worker
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "enable_utc": True,
        "timezone": "UTC",
        "result_expires": RESULT_EXPIRES_SECONDS,
        "result_backend_always_retry": True,  # a lost chord part would stall the cycle
        "result_backend_max_retries": 5,
        "redis_backend_health_check_interval": 10,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": 300},
        "result_backend_transport_options": {"visibility_timeout": 300},
        "worker_prefetch_multiplier": 1,  # fewer messages stranded on a dead worker
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,  # Flower shows the tasks by name, state and runtime
        "task_send_sent_event": True,
        "task_default_queue": "pacing",
        "beat_schedule_filename": str(beat_dir / f"celerybeat-schedule-{settings.node_name}"),
        "beat_max_loop_interval": max(period / 2, 0.1),
        "beat_schedule": {
            "pacing-refresh": {
                "task": "pacing.refresh",
                "schedule": timedelta(seconds=period),
                "args": (settings.node_name,),
                # a tick older than one period is useless: never let a backlog build up
                "options": {"expires": period},
            },
            "pacing-purge-history": {
                "task": "pacing.purge_history",
                "schedule": HISTORY_PURGE_PERIOD,
                "options": {"expires": 3600},
            },
        },
    }


settings = load_settings()
app = Celery("pacing")
app.conf.update(celery_config(settings))


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")


@worker_process_init.connect
def _fresh_resources_after_fork(**_: Any) -> None:
    # connections inherited from the parent process must not be shared with it
    from tasks.cycle import reset_services  # noqa: PLC0415 - tasks.cycle imports this module

    reset_services()
