"""The exporter's collector on canned stream entries (a stub Redis client): what each event adds,
what it skips, and what a scrape says when Redis is down."""

from __future__ import annotations

import json
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pacing.cluster.keys import Keys
from pacing.metrics import PacingCollector, basic_auth

KEYS = Keys("unit")


def event(seq: int, **overrides: Any) -> dict[bytes, bytes]:
    fields: dict[str, Any] = {
        "seq": seq,
        "epoch": 1,
        "node": "node-a",
        "status": "published",
        "latency_ms": 300.0,
        "fetch_ms": 100.0,
        "pace_ms": 50.0,
        "merge_ms": 10.0,
        "publish_ms": 120.0,
        "targets": 3,
        "changed": 2,
        "error_rows": 1,
        "payload_kind": "delta",
        "payload_bytes": 400,
        "reasons": json.dumps({"ok": 2, "stale": 1}),
        "channels": json.dumps(
            {
                "chat": {"proactive_budget": 7, "ready_capacity": 4, "target_count": 2},
                "email": {"proactive_budget": 1, "ready_capacity": 1, "target_count": 1},
            }
        ),
    }
    fields.update(overrides)
    return {k.encode(): str(v).encode() for k, v in fields.items()}


class StreamStub:
    """Answers XREAD from a list of entries, like Redis, from the id after ``last``."""

    def __init__(self, entries: list[dict[bytes, bytes]]) -> None:
        self.entries = [(f"{i + 1}-0".encode(), fields) for i, fields in enumerate(entries)]

    def xread(self, streams: dict[str, bytes], count: int) -> list[Any]:
        ((stream, last),) = streams.items()
        after = int(last.split(b"-")[0])
        batch = [e for e in self.entries if int(e[0].split(b"-")[0]) > after][:count]
        return [[stream.encode(), batch]] if batch else []


def collector(client: Any) -> PacingCollector:
    return PacingCollector(client, KEYS, refresh_period_seconds=2.0, clock=lambda: 1000.0)


def samples(metric: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metric.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_each_event_feeds_the_histograms_counters_and_gauges() -> None:
    # given two events in the stream
    metrics = collector(StreamStub([event(1), event(2, payload_kind="full", payload_bytes=900)]))

    # when
    read = metrics.read_events()

    # then
    assert read == 2
    stages = samples(metrics.stage_seconds)
    assert stages[("pacing_cycle_stage_seconds_count", (("stage", "fetch"),))] == 2
    assert stages[("pacing_cycle_stage_seconds_sum", (("stage", "total"),))] == 0.6
    assert (
        samples(metrics.targets_paced)[("pacing_targets_paced_total", (("reason", "stale"),))] == 2
    )
    assert samples(metrics.publish_bytes) == {
        ("pacing_publish_bytes_total", (("kind", "delta"),)): 400,
        ("pacing_publish_bytes_total", (("kind", "full"),)): 900,
    }
    assert (
        samples(metrics.channel_budget)[("pacing_channel_proactive_budget", (("channel", "chat"),))]
        == 7
    )
    assert samples(metrics.last_event_seq) == {("pacing_last_cycle_seq", ()): 2}


def test_reading_again_reads_only_new_events() -> None:
    # given
    stream = StreamStub([event(1)])
    metrics = collector(stream)
    metrics.read_events()

    # when
    stream.entries.append((b"2-0", event(2)))
    second = metrics.read_events()
    third = metrics.read_events()

    # then
    assert (second, third) == (1, 0)
    assert samples(metrics.cycles) == {("pacing_cycles_total", (("status", "published"),)): 2}


def test_an_abandoned_cycle_counts_only_its_total_time() -> None:
    # given / when
    metrics = collector(StreamStub([event(1, status="abandoned", channels="{}")]))
    metrics.read_events()

    # then
    stages = samples(metrics.stage_seconds)
    assert stages[("pacing_cycle_stage_seconds_count", (("stage", "total"),))] == 1
    assert ("pacing_cycle_stage_seconds_count", (("stage", "fetch"),)) not in stages
    assert samples(metrics.publish_bytes) == {}


def test_a_channel_that_disappears_leaves_the_gauges() -> None:
    # given
    only_chat = json.dumps(
        {"chat": {"proactive_budget": 3, "ready_capacity": 2, "target_count": 2}}
    )
    metrics = collector(StreamStub([event(1), event(2, channels=only_chat)]))

    # when
    metrics.read_events()

    # then
    assert {labels for _, labels in samples(metrics.channel_ready)} == {(("channel", "chat"),)}


def test_an_unreadable_event_is_skipped_and_reading_goes_on() -> None:
    # given an event from a future release between two good ones
    metrics = collector(StreamStub([event(1), event(2, reasons="not json"), event(3)]))

    # when
    read = metrics.read_events()

    # then
    assert read == 3
    assert samples(metrics.cycles) == {("pacing_cycles_total", (("status", "published"),)): 2}
    assert samples(metrics.last_event_seq) == {("pacing_last_cycle_seq", ()): 3}


class DownStub:
    def xread(self, *_: Any, **__: Any) -> Any:
        raise redis.exceptions.ConnectionError("Connection refused")


def test_a_scrape_while_redis_is_down_says_so_and_keeps_the_history() -> None:
    # given
    registry = CollectorRegistry()
    registry.register(collector(DownStub()))

    # when
    text = generate_latest(registry).decode()

    # then
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["pacing_redis_up"].samples[0].value == 0
    assert "pacing_cycle_stage_seconds" in families
    assert "pacing_last_published_age_seconds" not in families


def test_basic_auth_lets_only_the_right_credentials_through() -> None:
    # given
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"metrics"]

    guarded = basic_auth(app, "prom:secret")
    statuses: list[str] = []

    def call(header: str | None) -> bytes:
        environ = {} if header is None else {"HTTP_AUTHORIZATION": header}
        return b"".join(guarded(environ, lambda status, headers: statuses.append(status)))

    # when
    bodies = [
        call(None),
        call("Basic cHJvbTp3cm9uZw=="),  # prom:wrong
        call("Basic !!!not-base64"),
        call("Bearer cHJvbTpzZWNyZXQ="),
        call("Basic cHJvbTpzZWNyZXQ="),  # prom:secret
    ]

    # then
    assert statuses == ["401 Unauthorized"] * 4 + ["200 OK"]
    assert bodies[-1] == b"metrics"
    assert all(b"metrics" not in body for body in bodies[:-1])
