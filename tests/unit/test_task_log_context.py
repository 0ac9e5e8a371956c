"""Which task arguments become the log context of a task's lines (tasks.app.log_fields)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "expected"),
    [
        ("pacing.refresh", ["node-1"], {}, {"node": "node-1"}),
        (
            "pacing.pace_shard",
            [12, 3, [["t1", "chat", "AUTO", "ABANDONMENT_RATE", 3, 1.0, 50]]],
            {"epoch": 4},
            {"seq": 12, "shard": 3, "epoch": 4},
        ),
        (
            "pacing.publish_cycle",
            [[{"budget": [1]}], {"seq": 12, "epoch": 4, "node": "node-1", "shard_count": 1}],
            {},
            {"seq": 12, "epoch": 4, "node": "node-1"},
        ),
        ("pacing.record_cycle", [12], {}, {"seq": 12}),
        (
            "pacing.record_leadership",
            [4, "node-2", "2026-11-26T15:00:00+00:00"],
            {},
            {"epoch": 4, "node": "node-2"},
        ),
        ("pacing.pace_shard", ["too", "many", "args", "here", "!"], {}, {}),
    ],
)
def test_log_context_comes_from_the_task_arguments_never_the_payloads(
    name: str, args: list[Any], kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    # given
    from tasks import app
    from tasks.app import log_fields

    # when
    fields = log_fields(app.tasks[name], args, kwargs)

    # then
    assert fields == expected
