"""The Celery app, its configuration (derived from the settings) and the beat schedule."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from celery.apps.worker import Worker as WorkerCommand
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)

from pacing.cluster.connection import celery_redis_config
from pacing.logs import bind_log_context, clear_log_context, configure_logging
from pacing.runtime import settle_heap
from pacing.settings import Settings
from tasks import patches
from tasks.services import reset_services, settings

HISTORY_PURGE_PERIOD = timedelta(days=1)
RESULT_EXPIRES_SECONDS = 600  # chord results are read within one cycle; keep Redis small


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``settings`` (celery-notes.md §2.4 gives the reasons)."""
    period = settings.refresh_period_seconds
    beat_dir = settings.sqlite_path.parent if settings.sqlite_path else Path("var")
    # the broker and result backend: URLs and transport options, plain or Sentinel mode
    return celery_redis_config(settings) | {
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
        # Two per process: each process's next shard is already reserved when it finishes one.
        # With 1, every acks_late shard waited for its ack and a fresh broker fetch before the
        # next could start. 10,000 targets, 10 shards on 2 processes, e2e medians of runs
        # alternating 1 / 2 / 4 on the benchmark machine: 1 → 402–427 ms, 2 → 380–398 ms,
        # 4 → 346–424 ms (not better than 2). Still small enough that a dead worker strands
        # few messages and that the nodes of a cluster share a cycle's shards fairly.
        "worker_prefetch_multiplier": 2,
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


patches.apply()  # before any worker connects or forks: see tasks/patches.py
app = Celery("pacing")
app.conf.update(celery_config(settings))


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")


#: Set in a ``celery worker`` process (and so in its pool processes, forked from it); never in a
#: worker a test runs inside its own process (celery.contrib.testing), whose heap must not be
#: frozen (pacing.runtime.settle_heap).
_worker_command = {"running": False}


@worker_init.connect
def _settle_the_workers_heap(sender: Any = None, **_: Any) -> None:
    # before the pool forks: its processes inherit the frozen heap and do not copy its pages
    if isinstance(sender, WorkerCommand):
        _worker_command["running"] = True
        settle_heap()


@worker_process_init.connect
def _fresh_resources_after_fork(**_: Any) -> None:
    # connections inherited from the parent process must not be shared with it
    reset_services()
    if _worker_command["running"]:
        settle_heap()  # what the pool process loaded since the fork


#: Task parameters bound to every log line of the task (the cycle's ``context`` dict of
#: ``pacing.publish_cycle`` is searched too). Never ``targets`` or ``results``: those are payloads.
LOGGED_PARAMETERS = ("seq", "epoch", "shard", "node")


def log_fields(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The seq, epoch, shard and node a task was called with, by parameter name."""
    try:
        bound = inspect.signature(task.run).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):  # a malformed message: Celery reports it, logs stay plain
        return {}
    fields = {name: bound[name] for name in LOGGED_PARAMETERS if name in bound}
    context = bound.get("context")
    if isinstance(context, Mapping):
        for name in LOGGED_PARAMETERS:
            if name in context:
                fields.setdefault(name, context[name])
    return fields


@task_prerun.connect
def _bind_task_log_context(
    task_id: str | None = None,
    task: Any = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    clear_log_context()
    if task is None:
        return
    bind_log_context(task=task.name, task_id=task_id, **log_fields(task, args, kwargs or {}))


@task_postrun.connect
def _clear_task_log_context(**_: Any) -> None:
    # the pool's thread or process runs another task next; its lines must not carry these
    clear_log_context()
