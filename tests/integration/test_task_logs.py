"""Structured logs of a real task run: JSON lines with seq, epoch, shard and node bound by the
worker's task_prerun signal, one line per cycle, and no payloads or secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import cycle_wait_seconds, run_cycle_by_hand, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Everything logged while the test runs, as PACING_LOG_FORMAT=json writes it."""
    from pacing.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_a_cycle_logs_json_lines_bound_to_its_seq_epoch_and_shard(
    celery_session_worker: Any, simulator: Any, history_ready: str, json_lines: io.StringIO
) -> None:
    # given / when: one cycle runs on the worker and is audited
    seq = run_cycle_by_hand(simulator.base_url)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in json_lines.getvalue().splitlines()]

    def done(task: str) -> bool:
        return any(
            e["message"].startswith(f"Task {task}[")
            and "succeeded in" in e["message"]
            and e.get("seq") == seq
            for e in lines()
        )

    # the audit may end before the publish task logs its last lines: wait for both
    wait_for(
        lambda: done("pacing.record_cycle") and done("pacing.publish_cycle"),
        timeout=cycle_wait_seconds(),
        message="record_cycle or publish_cycle never finished",
    )
    entries = [e for e in lines() if e.get("seq") == seq]

    # then: every line a task of the cycle logged carries its context ...
    by_task: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_task.setdefault(entry.get("task", "?"), []).append(entry)
    assert {"pacing.refresh", "pacing.pace_shard", "pacing.publish_cycle"} <= set(by_task)
    epoch = by_task["pacing.publish_cycle"][0]["epoch"]
    assert epoch >= 1
    assert all(e["epoch"] == epoch for e in by_task["pacing.pace_shard"])
    assert all(e["shard"] == 0 for e in by_task["pacing.pace_shard"])
    assert all(e["node"] == "test-node" for e in by_task["pacing.publish_cycle"])
    assert all(e["task_id"] for e in entries if "task" in e)
    # ... with exactly one INFO line for the cycle, its outcome and latency
    cycle_lines = [
        e for e in entries if e["logger"] == "pacing.cycle.publish" and "cycle" in e["message"]
    ]
    assert len(cycle_lines) == 1
    assert cycle_lines[0]["level"] == "INFO"
    assert cycle_lines[0]["message"].startswith(f"cycle {seq} published in ")
    assert (cycle_lines[0]["epoch"], cycle_lines[0]["node"]) == (epoch, "test-node")
    # ... Celery's success line without the task's result (a shard's rows are a payload) ...
    shard_done = [e for e in by_task["pacing.pace_shard"] if "succeeded in" in e["message"]]
    assert shard_done
    assert all(e["message"].endswith("s") for e in shard_done)
    text = json_lines.getvalue()
    assert "'budget'" not in text
    assert '"budget"' not in text
    # ... and no secrets
    assert "sim-token" not in text
    # ... and once the task is over, nothing stays bound in the pool's threads
    from pacing.logs import log_context

    assert dict(log_context()) == {}
