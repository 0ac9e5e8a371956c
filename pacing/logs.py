"""Logging set up in one place: text or JSON lines, with seq/epoch/shard/node on every line.

The context of the task being run (its seq, epoch, shard, node, task name and id) lives in a
context variable: ``tasks`` binds it when a task starts (``task_prerun``) and clears it when the
task ends (``task_postrun``), and both formatters add it to every line logged in between. Fields
passed with ``extra=`` win over the bound context.

Nothing here imports Celery; the filter that keeps task results out of Celery's success line
only looks at the record Celery hands to the ``celery.app.trace`` logger.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "ShortTaskSuccess",
    "TextFormatter",
    "bind_log_context",
    "clear_log_context",
    "configure_logging",
    "log_context",
]

#: Fields bound to lines, in the order they are shown.
CONTEXT_FIELDS = ("seq", "epoch", "shard", "node", "target", "task", "task_id")

_NOTHING_BOUND: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "pacing_log_context", default=_NOTHING_BOUND
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}
# Celery passes its whole log context as ``extra={"data": …}``: it holds task arguments and
# results, so it never goes into a line.
_NEVER_LOGGED = frozenset({"data"})


def bind_log_context(**fields: Any) -> None:
    """Bind ``fields`` (None values are dropped) to every line logged in this context."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def clear_log_context() -> None:
    """Forget every bound field (a pool thread or process runs another task next)."""
    _context.set(_NOTHING_BOUND)


def log_context() -> Mapping[str, Any]:
    """The fields bound now."""
    return _context.get()


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    bound = _context.get()
    fields: dict[str, Any] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = bound.get(name)
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, bound context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context_of(record))
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and name not in _NEVER_LOGGED:
                entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, then the bound context in brackets: ``[seq=12 epoch=3 shard=0]``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{name}={value}" for name, value in _context_of(record).items())
        return f"{line} [{context}]" if context else line


class ShortTaskSuccess(logging.Filter):
    """Drop the return value from Celery's "Task … succeeded in …s: <result>" line.

    ``pacing.pace_shard`` returns every paced row of its shard; Celery would log up to
    ``resultrepr_maxsize`` characters of it at INFO for every shard of every cycle. Celery hands
    the line's fields to handlers as ``record.data`` (celery.app.trace.info), which is what this
    filter recognises; the line keeps the task name, id and runtime.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if isinstance(data, Mapping) and "return_value" in data and "runtime" in data:
            record.msg = "Task %(name)s[%(id)s] succeeded in %(runtime).3fs"
            record.args = {k: v for k, v in data.items() if k in ("name", "id", "runtime")}
        return True


_SHORT_TASK_SUCCESS = ShortTaskSuccess()


def configure_logging(
    *, level: str = "INFO", json_lines: bool = False, stream: TextIO | None = None
) -> None:
    """Replace the root handlers with one handler (stderr by default) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else TextFormatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # one line per request from these would drown the one line per cycle
    for noisy in ("urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    trace = logging.getLogger("celery.app.trace")
    if _SHORT_TASK_SUCCESS not in trace.filters:
        trace.addFilter(_SHORT_TASK_SUCCESS)
