"""The exporter's per-channel abandonment over a real Redis stream: cycle events added with XADD
in the pipeline's format, read by ``PacingCollector`` with a clock the test sets, scraped as
Prometheus text. (That the pipeline writes these events is shown through a real worker in
tests/integration/test_metrics.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
WINDOW = 900.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Stream:
    """A private cycle-event stream on the run's Redis database, and exporters reading it."""

    def __init__(self, client: Any, prefix: str) -> None:
        from pacing.cluster.keys import Keys

        self.client = client
        self.keys = Keys(prefix)
        self.now = NOW
        self.seq = 0

    def add_cycle(
        self,
        started_at: float,
        outcomes: dict[str, list[float]] | None,
        channels: dict[str, dict[str, int]] | None = None,
        **overrides: Any,
    ) -> None:
        """One cycle event as pacing.cycle.publish._finish writes it; ``outcomes`` None: an
        event of an older release, without the field."""
        self.seq += 1
        fields: dict[str, Any] = {
            "seq": self.seq,
            "epoch": 1,
            "node": "node-1",
            "status": "published",
            "latency_ms": 80.0,
            "fetch_ms": 20.0,
            "pace_ms": 30.0,
            "merge_ms": 5.0,
            "publish_ms": 20.0,
            "started_at": started_at,
            "targets": 10,
            "changed": 1,
            "error_rows": 0,
            "payload_kind": "delta",
            "payload_bytes": 300,
            "reasons": orjson.dumps({"ok": 10}),
            "channels": orjson.dumps(channels or {}),
        }
        if outcomes is not None:
            fields["outcomes"] = orjson.dumps(outcomes)
        fields.update(overrides)
        self.client.xadd(self.keys.cycle_events, fields)

    def exporter(self) -> Any:
        """A new exporter (as after a restart), on this stream, at the test's clock."""
        from pacing.metrics import PacingCollector

        return PacingCollector(
            self.client, self.keys, refresh_period_seconds=2.0, clock=lambda: self.now
        )


@pytest.fixture
def stream(stack_settings: Any) -> Iterator[Stream]:
    from pacing.cluster.connection import redis_client

    client = redis_client(stack_settings)
    prefix = f"exporter-test-{uuid.uuid4().hex[:8]}"
    try:
        yield Stream(client, prefix)
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def scrape(collector: Any) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_channel(samples: Samples, name: str) -> dict[str, float]:
    return {
        dict(labels)["channel"]: value
        for (found, labels), value in samples.items()
        if found == name
    }


def counter(samples: Samples, name: str, channel: str, objective: str) -> float:
    return samples[(name, (("channel", channel), ("objective", objective)))]


RATIO = "pacing_channel_abandonment_ratio_15m"
GOAL = "pacing_channel_abandonment_goal_ratio_15m"
INTERACTIONS = "pacing_channel_interactions_15m"
COLD = "pacing_channel_cold_start_ratio"
ANSWERED = "pacing_channel_interactions_answered_total"
ABANDONED = "pacing_channel_interactions_abandoned_total"


def chat(answered: int, abandoned: int, goal: float = 0.03) -> list[float]:
    """A channel's sums where every target has the same abandonment goal."""
    return [answered, abandoned, answered, abandoned, goal * (answered + abandoned)]


def test_the_abandonment_covers_the_cycles_that_started_in_the_last_15_minutes(
    stream: Stream,
) -> None:
    # given cycles that started 20, 12 and 1 minutes ago, by their own timestamps
    stream.add_cycle(NOW - 1200, {"chat": chat(900, 100)})
    stream.add_cycle(NOW - 720, {"chat": chat(380, 20)})
    stream.add_cycle(NOW - 60, {"chat": chat(570, 30)})
    exporter = stream.exporter()

    # when
    samples = scrape(exporter)

    # then the window holds the last two: 50 abandoned of 1,000
    assert by_channel(samples, INTERACTIONS) == {"chat": 1000}
    assert by_channel(samples, RATIO) == {"chat": pytest.approx(0.05)}
    assert by_channel(samples, GOAL) == {"chat": pytest.approx(0.03)}
    # and the counters hold every cycle read
    assert counter(samples, ANSWERED, "chat", "abandonment_rate") == 1850
    assert counter(samples, ABANDONED, "chat", "abandonment_rate") == 150

    # when five minutes pass without a cycle, the 12-minute-old one leaves the window
    stream.now += 300
    later = scrape(exporter)

    # then
    assert by_channel(later, INTERACTIONS) == {"chat": 600}
    assert by_channel(later, RATIO) == {"chat": pytest.approx(0.05)}

    # and when the last one is 15 minutes old too, nothing is left to report but the zero
    stream.now = NOW - 60 + WINDOW
    assert by_channel(scrape(exporter), INTERACTIONS) == {}
    assert by_channel(scrape(exporter), RATIO) == {}


def test_the_goal_weighs_each_target_s_goal_by_its_interactions(stream: Stream) -> None:
    # given a channel with targets at 3 % (800 interactions) and 5 % (200), and busy-factor
    # targets (1,000 interactions, 100 abandoned) that have no abandonment goal
    answered, abandoned = 760 + 190 + 900, 40 + 10 + 100
    stream.add_cycle(
        NOW - 30,
        {"chat": [answered, abandoned, 760 + 190, 40 + 10, 0.03 * 800 + 0.05 * 200]},
    )

    # when
    samples = scrape(stream.exporter())

    # then the ratio and the goal are those of the targets with an abandonment goal
    assert by_channel(samples, INTERACTIONS) == {"chat": 1000}
    assert by_channel(samples, RATIO) == {"chat": pytest.approx(0.05)}
    assert by_channel(samples, GOAL) == {"chat": pytest.approx(0.034)}
    # and the counters keep the busy-factor targets apart
    assert counter(samples, ANSWERED, "chat", "busy_factor") == 900
    assert counter(samples, ABANDONED, "chat", "busy_factor") == 100
    assert counter(samples, ABANDONED, "chat", "abandonment_rate") == 50


def test_a_restarted_exporter_reports_the_same_window_from_the_stream(stream: Stream) -> None:
    # given an exporter that has been reading for a while
    channels = {
        "chat": {"proactive_budget": 5, "ready_capacity": 3, "target_count": 8, "cold_start": 2},
        "email": {"proactive_budget": 1, "ready_capacity": 1, "target_count": 2, "cold_start": 0},
    }
    for minute in range(20, 0, -1):
        stream.add_cycle(NOW - 60 * minute, {"chat": chat(95, 5), "email": chat(10, 0)}, channels)
    first = stream.exporter()
    before = scrape(first)

    # when it restarts: a new process replays the stream
    after = scrape(stream.exporter())

    # then the window is whole at once: the cycles of the last 15 minutes (14 of them, the one
    # exactly 15 minutes old having just left), and the last cycle's cold-start share
    assert by_channel(after, INTERACTIONS) == {"chat": 1400, "email": 140}
    assert by_channel(after, RATIO) == {"chat": pytest.approx(0.05), "email": 0.0}
    for name in (INTERACTIONS, RATIO, GOAL, COLD):
        assert by_channel(after, name) == by_channel(before, name)
    assert by_channel(after, COLD) == {"chat": 0.25, "email": 0.0}


def test_a_channel_without_interactions_or_gone_from_the_targets(stream: Stream) -> None:
    # given: "voice" had interactions, then its targets were removed; "email" has only quiet
    # targets, "callback" only busy-factor ones
    stream.add_cycle(
        NOW - 300,
        {"voice": chat(190, 10), "email": chat(0, 0)},
        {"voice": {"proactive_budget": 0, "ready_capacity": 0, "target_count": 4, "cold_start": 4}},
    )
    stream.add_cycle(
        NOW - 10,
        {"email": chat(0, 0), "callback": [100, 9, 0, 0, 0.0]},
        {
            "email": {
                "proactive_budget": 0,
                "ready_capacity": 2,
                "target_count": 2,
                "cold_start": 1,
            },
            "callback": {
                "proactive_budget": 1,
                "ready_capacity": 1,
                "target_count": 1,
                "cold_start": 0,
            },
        },
    )

    # when
    samples = scrape(stream.exporter())

    # then "voice" keeps its 15 minutes but leaves the last cycle's gauges
    assert by_channel(samples, RATIO) == {"voice": pytest.approx(0.05)}
    assert by_channel(samples, INTERACTIONS) == {"voice": 200, "email": 0, "callback": 0}
    assert by_channel(samples, GOAL) == {"voice": pytest.approx(0.03)}
    assert by_channel(samples, COLD) == {"email": 0.5, "callback": 0.0}
    # and the busy-factor channel's abandonment is in the counters only
    assert counter(samples, ABANDONED, "callback", "busy_factor") == 9


def test_events_without_interactions_count_nothing_and_bad_ones_nothing_at_all(
    stream: Stream,
) -> None:
    # given an event of an older release (no "outcomes"), an abandoned cycle, an event whose
    # sums have another length and one with a negative count, between two good ones
    stream.add_cycle(NOW - 50, {"chat": chat(100, 4)})
    stream.add_cycle(NOW - 40, None)
    stream.add_cycle(NOW - 35, {}, status="abandoned")
    stream.add_cycle(NOW - 30, {"chat": [1, 2, 3]})
    stream.add_cycle(NOW - 20, {"chat": [10, -1, 10, -1, 0.27]})
    stream.add_cycle(NOW - 10, {"chat": chat(96, 0)})

    # when
    samples = scrape(stream.exporter())

    # then the two good ones count; the bad ones were skipped whole (not even their cycle)
    assert by_channel(samples, INTERACTIONS) == {"chat": 200}
    assert by_channel(samples, RATIO) == {"chat": pytest.approx(0.02)}
    assert samples[("pacing_cycles_total", (("status", "published"),))] == 3
    assert samples[("pacing_exporter_events_read_total", ())] == 4
