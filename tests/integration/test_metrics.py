"""The Prometheus exporter scraped during a real run: cycles on a real Celery worker (threads
pool, in this process) against real Redis and the simulator, the exporter's HTTP server on a
free loopback port with basic auth."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import free_port, published_seqs, run_cycle_by_hand, wait_for

pytestmark = pytest.mark.integration

CREDENTIALS = ("prometheus", "scrape-secret")
#: cycles the abandonment comparison runs: at least, and at most (5 minutes at the 1 s period)
MIN_CYCLES, MAX_CYCLES = 10, 150


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
    from pacing.cluster.connection import redis_client
    from pacing.cluster.keys import Keys
    from pacing.metrics import PacingCollector, serve_metrics

    client = redis_client(stack_settings)
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
        # an empty map heals nothing: name the target
        requests.post(
            f"{simulator.base_url}/sim/control",
            json={"corrupt": {targets[0]["id"]: None}},
            timeout=LOOPBACK_TIMEOUT_SECONDS,
        ).raise_for_status()
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
        _, stderr = process.communicate(timeout=LOOPBACK_TIMEOUT_SECONDS)
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

    # when: the samples and, for gauges without a sample yet (a channel's abandonment before
    # any interaction), the families the scrape declares
    response = requests.get(exporter, auth=CREDENTIALS, timeout=LOOPBACK_TIMEOUT_SECONDS)
    declared = {family.name for family in text_string_to_metric_families(response.text)}
    exported = set(scrape(exporter)) | declared

    # then
    used = set(re.findall(r"\bpacing_[a-z0-9_]+", rules))
    assert used
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def _simulator_channels(simulator: Any) -> dict[str, dict[str, Any]]:
    """The simulator's true counts per channel since its metrics window began."""
    response = requests.get(f"{simulator.base_url}/sim/metrics", timeout=LOOPBACK_TIMEOUT_SECONDS)
    response.raise_for_status()
    return dict(response.json()["channels"])


class _Ticker:
    """Beat's tick by hand, one cycle at a time, each as soon as the previous one finished.

    The test environment's refresh period is long (tests/conftest.py: a busy machine must not
    miss its timeouts), so waiting a period between ticks would take minutes; the exporter's
    counts do not depend on how fast the cycles follow each other."""

    def __init__(self, settings: Any, exporter: str) -> None:
        from pacing.cluster.connection import redis_client
        from pacing.cluster.keys import Keys

        self.client = redis_client(settings)
        self.keys = Keys(settings.key_prefix)
        self.exporter = exporter

    def cycle(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Tick once the previous cycle has finished; return the scrape once the exporter has
        read this cycle's event."""
        from tasks.cycle import refresh

        # a tick while a cycle is in flight is skipped (an overrun): wait for the marker the
        # previous cycle clears as it finishes, after the event the exporter read
        wait_for(
            lambda: not self.client.exists(self.keys.inflight),
            timeout=30,
            message="a cycle stayed in flight",
        )
        before = int(self.client.get(self.keys.seq) or 0)
        refresh.delay("test-node")
        wait_for(
            lambda: int(self.client.get(self.keys.seq) or 0) > before,
            timeout=30,
            message="the tick started no cycle",
        )
        seq = int(self.client.get(self.keys.seq) or 0)
        scraped: dict[str, list[tuple[dict[str, str], float]]] = {}

        def read() -> bool:
            scraped.clear()
            scraped.update(scrape(self.exporter))
            return value(scraped, "pacing_last_cycle_seq") >= seq

        wait_for(read, timeout=30, message=f"the exporter never read cycle {seq}")
        return scraped


def test_the_exporter_s_abandonment_per_channel_is_the_simulator_s_over_the_same_cycles(
    celery_session_worker: Any,
    simulator: Any,
    history_ready: str,
    stack_settings: Any,
    exporter: str,
) -> None:
    ticker = _Ticker(stack_settings, exporter)
    usable = {"ok", "cold_start", "no_agents", "queue_full"}

    def answered(start: dict[str, Any], end: dict[str, Any]) -> int:
        return sum(end[c]["answered"] - start[c]["answered"] for c in end)

    # given: no target's statistics corrupted, and a cycle has read every target's counters
    # into its state (the simulator's true counts read just before its tick and just after it)
    requests.post(
        f"{simulator.base_url}/sim/control", json={"clear": True}, timeout=LOOPBACK_TIMEOUT_SECONDS
    ).raise_for_status()
    before_first = _simulator_channels(simulator)
    first = ticker.cycle()
    after_first = _simulator_channels(simulator)
    assert {labels["reason"] for labels, v in first["pacing_last_cycle_targets"] if v} <= usable

    # when: cycles run one after another, the simulator read just before each tick and just
    # after it, until its visitors were answered (whether any abandoned depends on the
    # pacing, which other tests are about: the answered and abandoned counts take the same
    # path, a pair of Stat Server counters, tests/unit/test_channel_abandonment.py)
    for cycles in itertools.count(2):
        before_last = _simulator_channels(simulator)
        last = ticker.cycle()
        after_last = _simulator_channels(simulator)
        if cycles >= MIN_CYCLES and answered(after_first, before_last) > 0:
            break
        assert cycles < MAX_CYCLES, f"nobody was answered in {cycles} cycles"
    ticker.client.close()
    assert {labels["reason"] for labels, v in last["pacing_last_cycle_targets"] if v} <= usable

    # then, per channel, the exporter counted what the Stat Server's counters moved by between
    # the first cycle's fetch and the last one's: at least what the simulator counted between
    # the readings just after the first cycle and just before the last, at most what it
    # counted between those just before the first and just after the last
    counted: set[str] = set()
    for channel in after_last:

        def simulated(
            counter: str, start: dict[str, Any], end: dict[str, Any], channel: str = channel
        ) -> int:
            return int(end[channel][counter] - start[channel][counter])

        exported = {
            counter: int(
                increase(
                    first, last, f"pacing_channel_interactions_{counter}_total", channel=channel
                )
            )
            for counter in ("answered", "abandoned")
        }
        for counter, count in exported.items():
            inside = simulated(counter, after_first, before_last)
            outside = simulated(counter, before_first, after_last)
            assert inside <= count <= outside, (channel, counter, inside, count, outside)
        # (every simulator target has the default 3 % abandonment goal)
        busy_factor = increase(
            first,
            last,
            "pacing_channel_interactions_answered_total",
            channel=channel,
            objective="busy_factor",
        )
        assert busy_factor == 0

        # ... so its abandonment, abandoned / (answered + abandoned), lies between the ratios
        # those bounds allow; the simulator's, abandoned / accepted over the outer readings,
        # counts the visitors who joined the queue instead of those who left it: the two
        # differ by the queue's growth, accepted = answered + abandoned + Δwaiting (exact
        # fractions: the bounds can be attained)
        left_inside = simulated("answered", after_first, before_last) + simulated(
            "abandoned", after_first, before_last
        )
        left_outside = simulated("answered", before_first, after_last) + simulated(
            "abandoned", before_first, after_last
        )
        if exported["answered"] + exported["abandoned"] > 0:
            counted.add(channel)
        if left_inside == 0:
            continue
        ratio = Fraction(exported["abandoned"], exported["answered"] + exported["abandoned"])
        low = Fraction(simulated("abandoned", after_first, before_last), left_outside)
        high = Fraction(simulated("abandoned", before_first, after_last), left_inside)
        assert low <= ratio <= high, (channel, float(low), float(ratio), float(high))
        accepted = simulated("accepted", before_first, after_last)
        growth = simulated("waiting", before_first, after_last)
        assert accepted == left_outside + growth
        true_ratio = Fraction(simulated("abandoned", before_first, after_last), accepted)
        allowed = (high - low) + true_ratio * abs(growth) / left_outside
        assert abs(ratio - true_ratio) <= allowed, (
            channel,
            float(ratio),
            float(true_ratio),
            float(allowed),
        )

    # and the gauges of the last 15 minutes (which hold these cycles) are there for every
    # channel that had interactions, next to the goal, with the share of targets in cold start
    # of the last cycle
    ratios = {labels["channel"]: v for labels, v in last["pacing_channel_abandonment_ratio_15m"]}
    goals = {
        labels["channel"]: v for labels, v in last["pacing_channel_abandonment_goal_ratio_15m"]
    }
    assert counted
    assert counted <= ratios.keys() == goals.keys() <= set(after_last)
    assert all(0 <= v <= 1 for v in ratios.values())
    assert all(v == pytest.approx(0.03) for v in goals.values())
    cold = {labels["channel"]: v for labels, v in last["pacing_channel_cold_start_ratio"]}
    counts = {labels["channel"]: v for labels, v in last["pacing_channel_targets"]}
    assert sum(cold[c] * counts[c] for c in counts) == pytest.approx(
        value(last, "pacing_last_cycle_targets", reason="cold_start")
    )
