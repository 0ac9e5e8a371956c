"""Business metrics for Prometheus (``pacing exporter``), read from Redis.

Celery workers are many processes on many hosts, so no worker serves metrics itself (that would
need prometheus_client's multiprocess mode per host and still miss the cluster-wide figures).
Instead every cycle appends one event to the ``cycle_events`` stream (:mod:`pacing.cycle.publish`)
and one long-running exporter turns the stream into histograms and counters, plus the cluster
state (:func:`pacing.cluster.status.cluster_status`) read at scrape time, so ages are computed when
Prometheus asks.

Each scrape first reads the stream from the last id it saw (``XREAD``), so nothing runs between
scrapes. On start the exporter replays what the stream still holds (about an hour), which fills
the gauges; the counters begin again from the replayed cycles (Prometheus' ``rate()`` ignores a
new series' starting value, but across a restart of the same series it counts the replay again).

Per channel, the abandonment over the last 15 minutes is computed here, at scrape time, from the
events whose cycles started in those 15 minutes (by the cycles' own timestamps), so a restarted
exporter reports the whole window at its first scrape: the replay holds it.

Metric names (all prefixed ``pacing_``) are documented in docs/operators-monitoring.md. The
HTTP server that answers the scrapes is :mod:`pacing.metrics.server`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, cast

import orjson
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pacing.cluster.keys import Keys
from pacing.cluster.status import cluster_status
from pacing.cycle.rows import OUTCOME_FIELDS

__all__ = ["STAGES", "PacingCollector"]

logger = logging.getLogger(__name__)

#: The cycle's stages as the events report them, and the whole cycle.
STAGES: Final = ("fetch", "pace", "merge", "publish", "total")
#: From 5 ms (a small shard's pacing) to 16 s (8 refresh periods: far past any deadline).
LATENCY_BUCKETS_SECONDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
#: Events read per XREAD call; a scrape every 15 s at a 2 s period finds about 8.
READ_BATCH: Final = 500
#: The window of the per-channel abandonment gauges (what the PacingAbandonmentAboveGoal alert
#: compares with the goal): 15 minutes, the service level's usual reporting interval.
ABANDONMENT_WINDOW_SECONDS: Final = 900.0
#: The label values of the interaction counters' ``objective``.
_GOAL, _NO_GOAL = "abandonment_rate", "busy_factor"


@dataclasses.dataclass(frozen=True, slots=True)
class _WindowEntry:
    """One cycle's counts towards the abandonment window: channel → (interactions, abandoned,
    abandonments allowed), for the targets with an abandonment goal."""

    at: float  # the cycle's start, Unix seconds
    channels: dict[str, tuple[float, float, float]]


class PacingCollector(Collector):
    """Everything ``pacing exporter`` serves; register it in a :class:`CollectorRegistry`."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        refresh_period_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._keys = keys
        self._refresh_period = refresh_period_seconds
        self._clock = clock
        self._last_id = b"0-0"
        self._lock = threading.Lock()
        # The stream-fed metrics live in a private registry; collect() yields them after
        # reading the new events, so one scrape always sees the stream up to that moment.
        self._events = CollectorRegistry(auto_describe=False)
        registry = self._events
        self.stage_seconds = Histogram(
            "pacing_cycle_stage_seconds",
            "Duration of each stage of a cycle (fetch, pace, merge, publish) and of the "
            "whole cycle (total), from the beat tick to the end of the publish.",
            ["stage"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.cycles = Counter(
            "pacing_cycles",
            "Finished cycles by outcome (published, fenced, expired, failed, abandoned, ...).",
            ["status"],
            registry=registry,
        )
        self.targets_paced = Counter(
            "pacing_targets_paced",
            "Target decisions made, by the reason of the decision (ok, stale, error, ...).",
            ["reason"],
            registry=registry,
        )
        self.last_cycle_targets = Gauge(
            "pacing_last_cycle_targets",
            "Targets of the last finished cycle, by the reason of their decision.",
            ["reason"],
            registry=registry,
        )
        self.error_rows = Counter(
            "pacing_error_rows",
            "Targets paced with an error row (budget 0 because of bad or missing statistics).",
            registry=registry,
        )
        self.changed_targets = Counter(
            "pacing_changed_targets",
            "Target decisions that changed since the previous publish.",
            registry=registry,
        )
        self.publish_bytes = Counter(
            "pacing_publish_bytes",
            "Gzipped payload bytes of the cycles that published, by payload kind.",
            ["kind"],
            registry=registry,
        )
        self.last_payload_bytes = Gauge(
            "pacing_last_payload_bytes",
            "Gzipped payload bytes of the last cycle that built a payload.",
            registry=registry,
        )
        self.channel_budget = Gauge(
            "pacing_channel_proactive_budget",
            "Proactive invitations allowed in the next period, summed over a channel's "
            "targets, as of the last finished cycle.",
            ["channel"],
            registry=registry,
        )
        self.channel_ready = Gauge(
            "pacing_channel_ready_capacity",
            "Free agent slots now, summed over a channel's targets, as of the last cycle.",
            ["channel"],
            registry=registry,
        )
        self.channel_targets = Gauge(
            "pacing_channel_targets",
            "Targets per channel in the last finished cycle.",
            ["channel"],
            registry=registry,
        )
        self.channel_cold_start = Gauge(
            "pacing_channel_cold_start_ratio",
            "Share of a channel's targets paced in cold start (prior parameters) in the last "
            "finished cycle, 0 to 1.",
            ["channel"],
            registry=registry,
        )
        self.interactions_answered = Counter(
            "pacing_channel_interactions_answered",
            "Interactions answered at a channel's targets, from the differences of the Stat "
            "Server's answered_total between cycles; objective says whether the targets have "
            "an abandonment goal (abandonment_rate) or a busy factor goal (busy_factor).",
            ["channel", "objective"],
            registry=registry,
        )
        self.interactions_abandoned = Counter(
            "pacing_channel_interactions_abandoned",
            "Interactions abandoned in queue at a channel's targets, from the differences of "
            "the Stat Server's abandoned_total between cycles; objective as for answered.",
            ["channel", "objective"],
            registry=registry,
        )
        self.last_event_seq = Gauge(
            "pacing_last_cycle_seq",
            "Seq of the last finished cycle the exporter has read.",
            registry=registry,
        )
        self.events_read = Counter(
            "pacing_exporter_events_read",
            "Cycle events the exporter has read from the Redis stream.",
            registry=registry,
        )
        self._window: list[_WindowEntry] = []

    # --- the stream -------------------------------------------------------------------

    def read_events(self) -> int:
        """Apply every event added since the last call; returns how many were read."""
        read = 0
        while True:
            answer = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                self._client.xread({self._keys.cycle_events: self._last_id}, count=READ_BATCH),
            )
            entries = answer[0][1] if answer else []
            if not entries:
                return read
            for entry_id, fields in entries:
                self._last_id = entry_id
                try:
                    self._apply(_decode(fields))
                except (KeyError, ValueError, TypeError):
                    # an event from a newer release, or damaged: skip it, never stop reading
                    logger.warning("unreadable cycle event skipped", extra={"id": entry_id})
            read += len(entries)
            if len(entries) < READ_BATCH:
                return read

    def _apply(self, event: Mapping[str, str]) -> None:
        status = event["status"]
        latency = float(event["latency_ms"]) / 1000
        reasons = {str(k): int(v) for k, v in orjson.loads(event["reasons"]).items()}
        channels = orjson.loads(event["channels"])
        outcomes = _outcomes(event)  # checked before anything is counted
        self.stage_seconds.labels("total").observe(latency)
        if status != "abandoned":  # an abandoned cycle never merged, so it has no stages
            for stage in ("fetch", "pace", "merge", "publish"):
                self.stage_seconds.labels(stage).observe(float(event[f"{stage}_ms"]) / 1000)
        self.cycles.labels(status).inc()
        for reason, count in reasons.items():
            self.targets_paced.labels(reason).inc(count)
            self.last_cycle_targets.labels(reason).set(count)
        self.error_rows.inc(int(event["error_rows"]))
        self.changed_targets.inc(int(event["changed"]))
        payload_bytes = int(event["payload_bytes"])
        if status == "published":
            self.publish_bytes.labels(event["payload_kind"]).inc(payload_bytes)
        if payload_bytes:
            self.last_payload_bytes.set(payload_bytes)
        if channels:
            for gauge in (
                self.channel_budget,
                self.channel_ready,
                self.channel_targets,
                self.channel_cold_start,
            ):
                gauge.clear()  # a channel without targets any more must disappear
            for channel, totals in channels.items():
                self.channel_budget.labels(channel).set(totals["proactive_budget"])
                self.channel_ready.labels(channel).set(totals["ready_capacity"])
                self.channel_targets.labels(channel).set(totals["target_count"])
                if totals.get("cold_start") is not None and totals["target_count"] > 0:
                    self.channel_cold_start.labels(channel).set(
                        totals["cold_start"] / totals["target_count"]
                    )
        self._count_outcomes(outcomes, at=float(event.get("started_at", 0.0)))
        self.last_event_seq.set(int(event["seq"]))
        self.events_read.inc()

    def _count_outcomes(self, outcomes: Mapping[str, _Outcome], *, at: float) -> None:
        """Add one cycle's interactions to the counters and to the abandonment window."""
        for channel, outcome in outcomes.items():
            for counter, with_goal, without_goal in (
                (self.interactions_answered, outcome.goal_answered, outcome.other_answered),
                (self.interactions_abandoned, outcome.goal_abandoned, outcome.other_abandoned),
            ):
                # both series from the first cycle on, so that rate() sees them start at 0
                counter.labels(channel, _GOAL).inc(with_goal)
                counter.labels(channel, _NO_GOAL).inc(without_goal)
        if outcomes and at > 0:
            self._window.append(
                _WindowEntry(
                    at,
                    {
                        channel: (o.goal_answered + o.goal_abandoned, o.goal_abandoned, o.allowed)
                        for channel, o in outcomes.items()
                    },
                )
            )

    # --- the scrape -----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # the HTTP server answers scrapes on several threads
            up = GaugeMetricFamily(
                "pacing_redis_up", "1 if the exporter could read Redis during this scrape."
            )
            try:
                self.read_events()
                state = self._cluster_state()
            except redis.exceptions.RedisError as error:
                logger.warning("Redis unavailable during a scrape: %s", type(error).__name__)
                up.add_metric([], 0)
                yield up
                yield from self._events.collect()
                yield from self._window_metrics()
                return
            up.add_metric([], 1)
            yield up
            yield from self._events.collect()
            yield from self._window_metrics()
            yield from self._state_metrics(state)

    def _window_metrics(self) -> Iterator[Metric]:
        """Per channel, the abandonment of the cycles that started in the last
        :data:`ABANDONMENT_WINDOW_SECONDS`, its goal and the interactions behind it."""
        cutoff = self._clock() - ABANDONMENT_WINDOW_SECONDS
        self._window = [entry for entry in self._window if entry.at > cutoff]
        sums: dict[str, list[float]] = {}
        for entry in self._window:
            for channel, values in entry.channels.items():
                total = sums.setdefault(channel, [0.0, 0.0, 0.0])
                for i, value in enumerate(values):
                    total[i] += value
        interactions = GaugeMetricFamily(
            "pacing_channel_interactions_15m",
            "Interactions answered or abandoned in the last 15 minutes at a channel's targets "
            "with an abandonment goal: how much the abandonment ratio beside it rests on.",
            labels=["channel"],
        )
        ratio = GaugeMetricFamily(
            "pacing_channel_abandonment_ratio_15m",
            "Abandoned in queue / (answered + abandoned) over the last 15 minutes, at a "
            "channel's targets with an abandonment goal (Stat Server counters); absent "
            "without interactions.",
            labels=["channel"],
        )
        goal = GaugeMetricFamily(
            "pacing_channel_abandonment_goal_ratio_15m",
            "The abandonment the channel's goals allow over the last 15 minutes: the targets' "
            "ABANDONMENT_RATE goals weighted by their interactions; absent without interactions.",
            labels=["channel"],
        )
        for channel, (count, abandoned, allowed) in sums.items():
            interactions.add_metric([channel], count)
            if count > 0:
                ratio.add_metric([channel], abandoned / count)
                goal.add_metric([channel], allowed / count)
        yield interactions
        yield ratio
        yield goal

    def _cluster_state(self) -> dict[str, Any]:
        now = self._clock()
        state = cluster_status(self._client, self._keys, now=now)
        oldest = self._client.zrange(self._keys.audit_pending, 0, 0, withscores=True)
        state["audit_oldest_age_seconds"] = max(0.0, now - float(oldest[0][1])) if oldest else 0.0
        return state

    def _state_metrics(self, state: Mapping[str, Any]) -> Iterator[Metric]:
        def gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation)
            if value is not None:
                family.add_metric([], value)
            return family

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, documentation, value=value)

        age = state["last_published_age_seconds"]
        yield gauge(
            "pacing_last_published_age_seconds",
            "Seconds since the engagement platform last acknowledged a publish, computed at "
            "scrape time; +Inf if nothing was ever published. Alert above 3 refresh periods.",
            math.inf if age is None else max(0.0, age),
        )
        yield gauge(
            "pacing_last_published_seq",
            "Seq of the last cycle the engagement platform acknowledged.",
            state["last_published_seq"],
        )
        yield gauge("pacing_last_seq", "The newest cycle number handed out.", state["last_seq"])
        yield gauge(
            "pacing_refresh_period_seconds",
            "The configured refresh period (for alert rules written in periods).",
            self._refresh_period,
        )
        leader = GaugeMetricFamily(
            "pacing_leader",
            "1 for the node holding the leadership lease (see pacing_epoch for its epoch); "
            "absent while nobody holds the lease.",
            labels=["node"],
        )
        if state["leader"] is not None:
            leader.add_metric([state["leader"]], 1)
        yield leader
        yield gauge(
            "pacing_epoch", "The current leadership epoch (absent without a lease).", state["epoch"]
        )
        yield gauge(
            "pacing_lease_expires_in_seconds",
            "Seconds until the leader's lease expires unless renewed.",
            state["lease_expires_in_seconds"],
        )
        yield counter(
            "pacing_overruns",
            "Beat ticks skipped because the previous cycle was still in flight.",
            state["overruns"],
        )
        yield counter(
            "pacing_leadership_changes",
            "Times a node took a free leadership lease (each starts a new epoch).",
            state["leadership_changes"],
        )
        yield counter(
            "pacing_cycles_started", "Cycles started by leaders.", state["cycles_started"]
        )
        yield counter(
            "pacing_cycles_published",
            "Cycles the engagement platform acknowledged.",
            state["cycles_published"],
        )
        yield gauge(
            "pacing_audit_pending",
            "Cycle records waiting in Redis for the history database.",
            state["audit_pending"],
        )
        yield gauge(
            "pacing_audit_oldest_age_seconds",
            "Age of the oldest cycle record waiting for the history database (0 if none).",
            state["audit_oldest_age_seconds"],
        )


def _decode(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in fields.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """One channel's interactions in one cycle (pacing.cycle.rows.interaction_outcomes)."""

    goal_answered: float
    goal_abandoned: float
    other_answered: float
    other_abandoned: float
    allowed: float


def _outcomes(event: Mapping[str, str]) -> dict[str, _Outcome]:
    """The event's per-channel interactions; none in an event of an older release or of a
    cycle that never merged. ValueError or TypeError if they are malformed."""
    if "outcomes" not in event:
        return {}
    decoded: dict[str, _Outcome] = {}
    for channel, values in orjson.loads(event["outcomes"]).items():
        # strict: a list of another length is another release's, not to be guessed at
        named = {name: float(v) for name, v in zip(OUTCOME_FIELDS, values, strict=True)}
        outcome = _Outcome(
            goal_answered=named["goal_answered"],
            goal_abandoned=named["goal_abandoned"],
            other_answered=named["answered"] - named["goal_answered"],
            other_abandoned=named["abandoned"] - named["goal_abandoned"],
            allowed=named["goal_allowed"],
        )
        if not all(math.isfinite(v) and v >= 0 for v in dataclasses.astuple(outcome)):
            raise ValueError("negative or non-finite interaction counts")
        decoded[str(channel)] = outcome
    return decoded
