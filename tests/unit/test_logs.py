"""The log formats: JSON and text lines with the bound task context, and Celery's success line
without the task's result."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from pacing.logs import (
    JsonFormatter,
    ShortTaskSuccess,
    TextFormatter,
    bind_log_context,
    clear_log_context,
    configure_logging,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[Any]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("pacing.test_logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        clear_log_context()


def test_json_lines_carry_the_bound_context_and_extras(captured: Any) -> None:
    # given
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    bind_log_context(seq=12, epoch=3, shard=None, node="node-1")

    # when
    logger.info("shard %d paced", 4, extra={"shard": 4, "targets": 250})

    # then
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "shard 4 paced"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "pacing.test_logs"
    assert (entry["seq"], entry["epoch"], entry["shard"], entry["node"]) == (12, 3, 4, "node-1")
    assert entry["targets"] == 250
    assert entry["time"].endswith("+00:00")


def test_extra_wins_over_the_bound_context(captured: Any) -> None:
    # given
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    bind_log_context(node="node-1")

    # when
    logger.info("became leader", extra={"node": "node-2"})

    # then
    assert json.loads(stream.getvalue())["node"] == "node-2"


def test_cleared_context_is_not_logged(captured: Any) -> None:
    # given
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    bind_log_context(seq=1, epoch=1)
    clear_log_context()

    # when
    logger.info("idle")

    # then
    assert set(json.loads(stream.getvalue())) == {"time", "level", "logger", "message"}


def test_text_lines_end_with_the_context_in_brackets(captured: Any) -> None:
    # given
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    bind_log_context(seq=7, epoch=2, shard=0)

    # when
    logger.warning("stale statistics")

    # then
    assert stream.getvalue() == "WARNING stale statistics [seq=7 epoch=2 shard=0]\n"


def test_celery_success_lines_lose_the_return_value(captured: Any) -> None:
    # given Celery's success record, as celery.app.trace.info() makes it
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    logger.addFilter(ShortTaskSuccess())
    data = {
        "id": "abc",
        "name": "pacing.pace_shard",
        "return_value": "{'budget': [1, 2, 3], 'ids': ['t1', 't2', 't3']}",
        "runtime": 0.0123,
        "args": "(seq=1, shard=0, targets=3)",
        "kwargs": "{}",
    }

    # when
    logger.info(
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        data,
        extra={"data": data},
    )

    # then
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "Task pacing.pace_shard[abc] succeeded in 0.012s"
    assert "budget" not in stream.getvalue()


def test_configure_logging_installs_the_success_filter_once() -> None:
    # given
    trace = logging.getLogger("celery.app.trace")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        # when
        configure_logging(json_lines=True, stream=io.StringIO())
        configure_logging(json_lines=True, stream=io.StringIO())

        # then
        assert sum(isinstance(f, ShortTaskSuccess) for f in trace.filters) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
