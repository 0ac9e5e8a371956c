"""The Prometheus exporter scraped during a real run: cycles on a real Celery worker (threads
pool, in this process) against real Redis and the simulator, the exporter's HTTP server on a
free loopback port with basic auth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import free_port, published_seqs, run_cycle_by_hand, wait_for

pytestmark = pytest.mark.integration

CREDENTIALS = ("prometheus", "scrape-secret")


class ScrapeClock:
    """The exporter's clock: Unix time, plus whatever the test moved it ahead by."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def scrape_clock() -> ScrapeClock:
    return ScrapeClock()


@pytest.fixture
def exporter(stack_settings: Any, scrape_clock: ScrapeClock) -> Iterator[str]:
    """``pacing exporter``'s collector and server, in a thread; yields the metrics URL."""
    from pacing.keys import Keys
    from pacing.metrics import PacingCollector, serve_metrics
    from pacing.services import redis_client

    client = redis_client(stack_settings.effective_redis_url)
    collector = PacingCollector(
        client,
        Keys(stack_settings.key_prefix),
        refresh_period_seconds=stack_settings.refresh_period_seconds,
        clock=scrape_clock,
    )
    port = free_port()
    server = serve_metrics(
        collector, address="127.0.0.1", port=port, credentials=":".join(CREDENTIALS)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        client.close()


def _published_seq(simulator: Any) -> int:
    return max(published_seqs(simulator.base_url), default=0)


def _run_cycles(simulator: Any, count: int) -> None:
    for _ in range(count):
        run_cycle_by_hand(simulator.base_url)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name of each sample → [(labels, value)]."""
    response = requests.get(url, auth=CREDENTIALS, timeout=LOOPBACK_TIMEOUT_SECONDS)
    response.raise_for_status()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` with these labels; fails if there are none."""
    matching = [v for found, v in samples.get(name, []) if labels.items() <= found.items()]
    assert matching, f"{name}{labels or ''} is missing from the scrape"
    return sum(matching)


def increase(
    before: dict[str, list[tuple[dict[str, str], float]]],
    after: dict[str, list[tuple[dict[str, str], float]]],
    name: str,
    **labels: str,
) -> float:
    """How much a counter grew between two scrapes (a series absent before counts from 0)."""
    earlier = [v for found, v in before.get(name, []) if labels.items() <= found.items()]
    return value(after, name, **labels) - sum(earlier)


def test_scraping_during_a_run_returns_every_business_metric(
    celery_session_worker: Any,
    simulator: Any,
    history_ready: str,
    stack_settings: Any,
    exporter: str,
) -> None:
    # given: the exporter has read what the stream held, then one target turns unknown
    before = scrape(exporter)
    targets = requests.get(
        f"{simulator.base_url}/sim/targets", timeout=LOOPBACK_TIMEOUT_SECONDS
    ).json()["targets"]
    requests.post(
        f"{simulator.base_url}/sim/control",
        json={"corrupt": {targets[0]["id"]: "missing"}},
        timeout=LOOPBACK_TIMEOUT_SECONDS,
    ).raise_for_status()

    # when: three cycles run on the worker, and Prometheus scrapes
    cycles_began = time.time()
    try:
        _run_cycles(simulator, 3)
    finally:
        requests.post(
            f"{simulator.base_url}/sim/control",
            json={"corrupt": {}},
            timeout=LOOPBACK_TIMEOUT_SECONDS,
        )
    samples = scrape(exporter)
    window = time.time() - cycles_began  # the new cycles ran inside it

    # then: the exporter read the three new cycles' events ...
    assert increase(before, samples, "pacing_exporter_events_read_total") >= 3
    # ... cycle latency per stage, as histograms that saw every new cycle, in seconds
    for stage in ("fetch", "pace", "merge", "publish", "total"):
        count = value(samples, "pacing_cycle_stage_seconds_count", stage=stage)
        new = increase(before, samples, "pacing_cycle_stage_seconds_count", stage=stage)
        assert new >= 3
        seconds = increase(before, samples, "pacing_cycle_stage_seconds_sum", stage=stage)
        assert 0 < seconds <= new * window
        assert value(samples, "pacing_cycle_stage_seconds_bucket", stage=stage, le="+Inf") == count
    total = value(samples, "pacing_cycle_stage_seconds_sum", stage="total")
    fetch = value(samples, "pacing_cycle_stage_seconds_sum", stage="fetch")
    assert fetch < total  # a stage is part of the whole
    # ... the last publish: fresh, the newest seq, acknowledged
    age = value(samples, "pacing_last_published_age_seconds")
    assert 0 <= age <= window
    published_seq = value(samples, "pacing_last_published_seq")
    assert published_seq == _published_seq(simulator)
    assert value(samples, "pacing_last_seq") >= published_seq
    assert value(samples, "pacing_cycles_total", status="published") >= 3
    assert value(samples, "pacing_cycles_published_total") >= 3
    assert value(samples, "pacing_cycles_started_total") >= value(
        samples, "pacing_cycles_published_total"
    )
    # ... the leader and its epoch
    assert value(samples, "pacing_leader", node="test-node") == 1
    assert value(samples, "pacing_epoch") >= 1
    assert 0 < value(samples, "pacing_lease_expires_in_seconds") <= stack_settings.lease_ttl
    assert value(samples, "pacing_leadership_changes_total") >= 1
    assert value(samples, "pacing_overruns_total") >= 0
    # ... targets paced by reason: 40 per cycle, the unknown one among them
    last_cycle = {labels["reason"]: v for labels, v in samples["pacing_last_cycle_targets"]}
    assert sum(last_cycle.values()) == 40
    assert last_cycle["unknown_target"] == 1
    paced = increase(before, samples, "pacing_targets_paced_total")
    assert paced >= 3 * 40
    assert increase(before, samples, "pacing_error_rows_total") >= 3
    # ... budgets and ready capacity per channel, summing to the simulator's channels
    channels = {t["channel"] for t in targets}
    budget = {labels["channel"]: v for labels, v in samples["pacing_channel_proactive_budget"]}
    ready = {labels["channel"]: v for labels, v in samples["pacing_channel_ready_capacity"]}
    assert set(budget) == set(ready) == channels
    assert all(v >= 0 for v in [*budget.values(), *ready.values()])
    assert sum(v for _, v in samples["pacing_channel_targets"]) == 40
    # ... the bytes published, and the audit lag (the history keeps up in this test)
    sent = increase(before, samples, "pacing_publish_bytes_total")
    assert sent >= 3 * 50  # three gzipped payloads
    assert value(samples, "pacing_last_payload_bytes") > 0
    assert value(samples, "pacing_audit_pending") >= 0
    assert 0 <= value(samples, "pacing_audit_oldest_age_seconds") < 60
    assert value(samples, "pacing_redis_up") == 1
    assert value(samples, "pacing_refresh_period_seconds") == stack_settings.refresh_period_seconds


def test_the_last_published_age_grows_between_scrapes_without_cycles(
    celery_session_worker: Any,
    simulator: Any,
    history_ready: str,
    exporter: str,
    scrape_clock: ScrapeClock,
) -> None:
    # given a published cycle
    _run_cycles(simulator, 1)
    first = value(scrape(exporter), "pacing_last_published_age_seconds")

    # when a minute passes on the exporter's clock without a cycle (no beat runs in tests)
    scrape_clock.ahead += 60.0

    # then the age is computed at scrape time
    assert value(scrape(exporter), "pacing_last_published_age_seconds") >= first + 60.0


def test_the_metrics_need_the_credentials(exporter: str) -> None:
    # given / when
    anonymous = requests.get(exporter, timeout=LOOPBACK_TIMEOUT_SECONDS)
    wrong = requests.get(exporter, auth=("prometheus", "guess"), timeout=LOOPBACK_TIMEOUT_SECONDS)
    health = requests.get(
        exporter.replace("/metrics", "/healthz"), timeout=LOOPBACK_TIMEOUT_SECONDS
    )

    # then
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert "pacing_" not in anonymous.text
    assert wrong.status_code == 401
    assert health.status_code == 200
    assert health.text == "ok\n"


def test_pacing_exporter_serves_until_sigterm(stack_settings: Any) -> None:
    # given `pacing exporter` started as operators start it, with credentials
    port = free_port()
    env = {**os.environ, "PACING_METRICS_BASIC_AUTH": ":".join(CREDENTIALS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pacing.cli", "exporter", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def answers() -> bool:
            try:
                response = requests.get(url, auth=CREDENTIALS, timeout=LOOPBACK_TIMEOUT_SECONDS)
                return response.status_code == 200
            except requests.ConnectionError:
                return False

        # when
        wait_for(answers, timeout=30, message="pacing exporter never answered")
        samples = scrape(url)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    # then
    assert value(samples, "pacing_redis_up") == 1
    assert value(samples, "pacing_refresh_period_seconds") == stack_settings.refresh_period_seconds
    assert process.returncode == 0
    assert f"Serving metrics at http://127.0.0.1:{port}/metrics (basic auth)" in stderr
    assert CREDENTIALS[1] not in stderr


def test_status_check_exits_4_while_nothing_publishes_and_0_after_a_cycle(
    celery_session_worker: Any,
    simulator: Any,
    history_ready: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from pacing.cli import main

    runner = CliRunner()

    # given a cluster (key prefix) where nothing ever ran
    with monkeypatch.context() as patch:
        patch.setenv("PACING_KEY_PREFIX", "pacing-test-nothing-ran")
        # when
        idle = runner.invoke(main, ["status", "--check"])
    # then
    assert idle.exit_code == 4
    assert "the cluster is not publishing: last publish never, leader none" in idle.stderr

    # given / when: a cycle just published on the test cluster
    _run_cycles(simulator, 1)
    healthy = runner.invoke(main, ["status", "--check", "--json"])

    # then
    assert healthy.exit_code == 0, healthy.output
    assert json.loads(healthy.stdout)["leader"] == "test-node"


def test_every_metric_the_alert_rules_use_is_exported(
    celery_session_worker: Any, simulator: Any, history_ready: str, exporter: str
) -> None:
    import re
    from pathlib import Path

    # given the alert rules and a scrape after a cycle
    rules = (Path(__file__).resolve().parents[2] / "docs/prometheus/pacing-rules.yaml").read_text(
        encoding="utf-8"
    )
    _run_cycles(simulator, 1)

    # when
    exported = set(scrape(exporter))

    # then
    used = set(re.findall(r"\bpacing_[a-z_]+", rules))
    assert used
    assert used <= exported, f"not exported: {sorted(used - exported)}"
