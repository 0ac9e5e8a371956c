"""The simulated contact centre, driven in virtual time (no HTTP, no wall clock)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from pacing.domain import is_valid_target_id
from pacing.simulator.targets import TargetSpec, generate_targets
from pacing.simulator.world import World
from pacing.simulator.world_views import STALE_AGE_SECONDS

START = 1_800_000_000.0
PERIOD = 2.0
COUNTER_FIELDS = ("answered_total", "abandoned_total", "reactive_arrivals_total")
FEEDBACK_FIELDS = ("offers_sent_total", "offers_accepted_total", "offers_resolved_total")


class VirtualClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def spec(target_id: str, **overrides: Any) -> TargetSpec:
    """A target with the parameters of algorithm.md's scratch runs, unless overridden."""
    values: dict[str, Any] = {
        "target_id": target_id,
        "channel": "chat",
        "slots": 5,
        "not_ready": 0,
        "accept_probability": 0.25,
        "resolution_delay_seconds": 10.0,
        "handle_mean_seconds": 180.0,
        "handle_cv": 1.0,
        "patience_seconds": 60.0,
    }
    values.update(overrides)
    return TargetSpec(**values)


def make_world(
    specs: Sequence[TargetSpec], *, seed: int = 7, step_seconds: float = 0.5
) -> tuple[World, VirtualClock]:
    """A world on a virtual clock; a coarser step than the server's keeps long runs fast."""
    clock = VirtualClock()
    return World(specs, seed=seed, clock=clock, step_seconds=step_seconds), clock


def run_cycles(
    world: World,
    clock: VirtualClock,
    budgets: dict[str, int],
    *,
    seconds: float,
    reactive_states: dict[str, float] | None = None,
) -> Iterator[None]:
    """Publish ``budgets`` (full snapshot) every period for ``seconds``; yields after each."""
    ids = list(budgets)
    states = reactive_states or {}
    for _ in range(round(seconds / PERIOD)):
        world.apply_publish(
            ids,
            [budgets[i] for i in ids],
            [states.get(i, 1.0) for i in ids],
            full=True,
            refresh_period_seconds=PERIOD,
        )
        clock.tick(PERIOD)
        world.advance()
        yield


def drive(world: World, clock: VirtualClock, budgets: dict[str, int], *, seconds: float) -> None:
    for _ in run_cycles(world, clock, budgets, seconds=seconds):
        pass


def target_metrics(world: World, target_id: str) -> dict[str, Any]:
    targets = world.metrics(per_target=True)["targets"]
    assert isinstance(targets, dict)
    result = targets[target_id]
    assert isinstance(result, dict)
    return result


def test_zero_budgets_bring_no_proactive_visitors() -> None:
    # given
    world, clock = make_world([spec("chat-0001"), spec("chat-0002", slots=50)])
    # when
    drive(world, clock, {"chat-0001": 0, "chat-0002": 0}, seconds=600)
    # then
    metrics = world.metrics()["overall"]
    assert isinstance(metrics, dict)
    assert metrics["offers"]["sent"] == 0
    assert metrics["proactive"]["accepted"] == 0
    assert metrics["answered"] == 0
    assert metrics["occupancy"] == 0.0
    assert world.feedback()["chat-0001"]["offers_sent_total"] == 0


def test_budget_is_spread_evenly_over_the_refresh_period() -> None:
    # given
    world, clock = make_world([spec("chat-0001")])
    # when
    world.apply_publish(["chat-0001"], [10], [1.0], full=True, refresh_period_seconds=2.0)
    clock.tick(1.0)
    half = world.feedback()["chat-0001"]["offers_sent_total"]
    clock.tick(1.0)
    whole = world.feedback()["chat-0001"]["offers_sent_total"]
    clock.tick(4.0)
    later = world.feedback()["chat-0001"]["offers_sent_total"]
    # then: half after half the period, all of it at the end, nothing once the window closed
    assert half == 5
    assert whole == 10
    assert later == 10


def test_invitations_resolve_after_the_delay_and_pending_adds_up() -> None:
    # given
    world, clock = make_world([spec("chat-0001", resolution_delay_seconds=10.0)])
    world.apply_publish(["chat-0001"], [8], [1.0], full=True, refresh_period_seconds=2.0)
    # when
    clock.tick(3.0)
    early = world.feedback()["chat-0001"]
    clock.tick(30.0)
    late = world.feedback()["chat-0001"]
    # then
    assert early["offers_sent_total"] == 8
    assert early["offers_resolved_total"] == 0
    assert early["offers_pending"] == 8
    assert late["offers_resolved_total"] == 8
    assert late["offers_pending"] == 0
    assert 0 <= late["offers_accepted_total"] <= 8


def test_counters_are_monotonic_and_rows_are_consistent() -> None:
    # given
    world, clock = make_world(generate_targets(200, seed=3), seed=3)
    ids = world.target_ids()
    budgets = dict.fromkeys(ids, 2)
    previous_rows: dict[str, dict[str, object]] = {}
    previous_feedback: dict[str, dict[str, int]] = {}
    # when / then
    for _ in run_cycles(world, clock, budgets, seconds=300):
        rows, unknown = world.statistics(ids)
        feedback = world.feedback()
        assert unknown == []
        for target_id, row in rows.items():
            assert row["timestamp"] == clock.now
            ready, busy, logged_in = (
                row["agents_ready"],
                row["agents_busy"],
                row["agents_logged_in"],
            )
            assert isinstance(ready, int)
            assert isinstance(busy, int)
            assert isinstance(logged_in, int)
            assert ready >= 0
            assert busy >= 0
            assert ready + busy <= logged_in
            assert isinstance(row["interactions_waiting"], int)
            assert row["interactions_waiting"] >= 0
            for name in COUNTER_FIELDS:
                value = row[name]
                assert isinstance(value, int)
                if target_id in previous_rows:
                    before = previous_rows[target_id][name]
                    assert isinstance(before, int)
                    assert value >= before
            counters = feedback[target_id]
            assert (
                counters["offers_sent_total"]
                == counters["offers_resolved_total"] + counters["offers_pending"]
            )
            for name in FEEDBACK_FIELDS:
                if target_id in previous_feedback:
                    assert counters[name] >= previous_feedback[target_id][name]
        previous_rows, previous_feedback = rows, feedback


def test_overbooked_small_group_abandons_and_lightly_loaded_large_group_does_not() -> None:
    # given: 2 slots flooded with 10 invitations a second; 100 slots offered ~23 Erlangs
    world, clock = make_world([spec("chat-0001", slots=2), spec("chat-0002", slots=100)])
    # when
    drive(world, clock, {"chat-0001": 20, "chat-0002": 1}, seconds=3600)
    # then
    overbooked = target_metrics(world, "chat-0001")
    unpaced = target_metrics(world, "chat-0002")
    assert overbooked["proactive"]["accepted"] > 1000
    assert overbooked["abandonment_rate"] > 0.5
    assert overbooked["occupancy"] > 0.9
    assert unpaced["proactive"]["accepted"] > 300
    assert unpaced["abandonment_rate"] < 0.01
    assert 0.1 < unpaced["occupancy"] < 0.4


def test_occupancy_and_rates_are_fractions_everywhere() -> None:
    # given
    world, clock = make_world(generate_targets(300, seed=11), seed=11)
    budgets = dict.fromkeys(world.target_ids(), 3)
    # when
    drive(world, clock, budgets, seconds=600)
    metrics = world.metrics(per_target=True)
    # then
    overall = metrics["overall"]
    channels = metrics["channels"]
    targets = metrics["targets"]
    assert isinstance(overall, dict)
    assert isinstance(channels, dict)
    assert isinstance(targets, dict)
    blocks = [overall, *channels.values(), *targets.values()]
    for block in blocks:
        for rate in (
            block["occupancy"],
            block["abandonment_rate"],
            block["proactive"]["occupancy"],
            block["reactive"]["occupancy"],
        ):
            assert 0.0 <= rate <= 1.0
        assert block["abandoned"] <= block["accepted"]
    assert overall["occupancy"] > 0.05
    assert sum(channel["targets"] for channel in channels.values()) == 300
    assert metrics["window_seconds"] == pytest.approx(600.0)


def test_busy_slot_seconds_is_the_cumulative_busy_slot_time() -> None:
    # given two visitors who accept for sure and are served for exactly 100 s each
    world, clock = make_world(
        [
            spec(
                "chat-0001",
                slots=3,
                accept_probability=1.0,
                handle_mean_seconds=100.0,
                handle_cv=0.0,
                patience_seconds=10_000.0,
            )
        ]
    )
    world.apply_publish(["chat-0001"], [2], [1.0], full=True, refresh_period_seconds=PERIOD)

    def busy_slot_seconds() -> float:
        value = target_metrics(world, "chat-0001")["busy_slot_seconds"]
        assert isinstance(value, float)
        return value

    def advance(seconds: float) -> None:
        for _ in range(round(seconds / 10)):
            clock.tick(10)
            world.advance()

    # when
    advance(60)
    early = busy_slot_seconds()
    advance(240)
    total = busy_slot_seconds()
    advance(300)
    later = busy_slot_seconds()
    # then: both served (the counter only grows), 2 x 100 s in all, nothing after the service
    metrics = target_metrics(world, "chat-0001")
    assert metrics["answered"] == 2
    assert 0 < early < total
    assert total == 200.0
    assert later == total
    assert metrics["occupancy"] == pytest.approx(200.0 / (3 * 600.0), abs=1e-6)
    world.reset_metrics()
    assert busy_slot_seconds() == 0.0


def test_acceptance_rate_and_handle_time_follow_the_target_parameters() -> None:
    # given
    world, clock = make_world([spec("chat-0001", slots=200, accept_probability=0.3)])
    # when
    drive(world, clock, {"chat-0001": 10}, seconds=1800)
    # then
    feedback = world.feedback()["chat-0001"]
    acceptance = feedback["offers_accepted_total"] / feedback["offers_resolved_total"]
    assert acceptance == pytest.approx(0.3, abs=0.03)
    row = world.statistics(["chat-0001"])[0]["chat-0001"]
    assert row["aht_seconds"] == pytest.approx(180.0, rel=0.25)


def test_reactive_requests_are_admitted_with_the_published_reactive_state() -> None:
    # given: two identical dual groups, one closed to reactive traffic
    rate = 0.05
    world, clock = make_world(
        [
            spec("chat-0001", slots=20, reactive_rate_per_second=rate),
            spec("chat-0002", slots=20, reactive_rate_per_second=rate),
        ]
    )
    budgets = {"chat-0001": 0, "chat-0002": 0}
    # when
    for _ in run_cycles(
        world,
        clock,
        budgets,
        seconds=1800,
        reactive_states={"chat-0001": 1.0, "chat-0002": 0.0},
    ):
        pass
    # then
    rows = world.statistics(["chat-0001", "chat-0002"])[0]
    admitted = target_metrics(world, "chat-0001")["reactive"]
    closed = target_metrics(world, "chat-0002")["reactive"]
    assert admitted["arrivals"] == pytest.approx(rate * 1800, rel=0.25)
    assert admitted["admitted"] == admitted["arrivals"]
    assert closed["arrivals"] > 0
    assert closed["admitted"] == 0
    assert closed["answered"] == 0
    assert rows["chat-0002"]["reactive_arrivals_total"] == closed["arrivals"]
    assert rows["chat-0001"]["answered_total"] == admitted["answered"]


def test_delta_keeps_unchanged_budgets_and_full_snapshot_resets_absent_targets() -> None:
    # given
    world, clock = make_world([spec("chat-0001"), spec("chat-0002")])
    world.apply_publish(
        ["chat-0001", "chat-0002"], [4, 4], [1.0, 1.0], full=True, refresh_period_seconds=2.0
    )
    clock.tick(2.0)
    # when: a delta naming only chat-0002
    world.apply_publish(["chat-0002"], [2], [1.0], full=False, refresh_period_seconds=2.0)
    clock.tick(2.0)
    after_delta = world.feedback()
    # then: chat-0001 sent its unchanged budget again
    assert after_delta["chat-0001"]["offers_sent_total"] == 8
    assert after_delta["chat-0002"]["offers_sent_total"] == 6
    # when: a full snapshot without chat-0001
    world.apply_publish(["chat-0002"], [1], [1.0], full=True, refresh_period_seconds=2.0)
    clock.tick(2.0)
    after_full = world.feedback()
    # then
    assert after_full["chat-0001"]["offers_sent_total"] == 8
    assert after_full["chat-0002"]["offers_sent_total"] == 7


def test_unknown_ids_in_a_publish_are_ignored() -> None:
    world, _ = make_world([spec("chat-0001")])
    known = world.apply_publish(
        ["chat-0001", "ghost-1"], [1, 5], [1.0, 1.0], full=True, refresh_period_seconds=2.0
    )
    assert known == 1


def test_corruption_is_visible_in_rows_and_can_be_healed() -> None:
    # given
    world, clock = make_world([spec("chat-0001"), spec("chat-0002"), spec("chat-0003")])
    world.set_corruption("chat-0001", "stale")
    world.set_corruption("chat-0002", "malformed")
    world.set_corruption("chat-0003", "missing")
    # when
    rows, unknown = world.statistics(["chat-0001", "chat-0002", "chat-0003", "nobody"])
    # then
    assert rows["chat-0001"]["timestamp"] == clock.now - STALE_AGE_SECONDS
    malformed = rows["chat-0002"]
    assert any(isinstance(value, str) for value in malformed.values())
    assert any(isinstance(value, int) and value < 0 for value in malformed.values())
    assert "chat-0003" not in rows
    assert unknown == ["chat-0003", "nobody"]
    assert world.corruption == {
        "chat-0001": "stale",
        "chat-0002": "malformed",
        "chat-0003": "missing",
    }
    # when
    world.clear_corruption()
    rows, unknown = world.statistics(["chat-0001", "chat-0002", "chat-0003"])
    # then
    assert unknown == []
    assert rows["chat-0001"]["timestamp"] == clock.now
    assert all(isinstance(value, int | float) for value in rows["chat-0002"].values())


def test_corruption_rejects_unknown_targets_and_modes() -> None:
    world, _ = make_world([spec("chat-0001")])
    with pytest.raises(KeyError):
        world.set_corruption("nobody", "stale")
    with pytest.raises(ValueError, match="Corruption mode"):
        world.set_corruption("chat-0001", "on-fire")


def test_same_seed_and_clock_reproduce_the_same_world() -> None:
    def run(seed: int) -> dict[str, object]:
        world, clock = make_world(generate_targets(50, seed=seed), seed=seed)
        drive(world, clock, dict.fromkeys(world.target_ids(), 3), seconds=200)
        return world.metrics(per_target=True)

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_a_long_pause_is_skipped_not_replayed() -> None:
    # given
    clock = VirtualClock()
    world = World(generate_targets(20), clock=clock, max_catch_up_seconds=30.0)
    # when
    clock.tick(3600.0)
    steps = world.advance()
    # then
    assert steps == 300
    assert world.simulated_seconds == pytest.approx(30.0)
    assert world.skipped_seconds == pytest.approx(3570.0)
    assert world.now == pytest.approx(clock.now)


def test_reset_metrics_starts_a_new_window_but_keeps_the_counters() -> None:
    # given
    world, clock = make_world([spec("chat-0001", slots=2)])
    drive(world, clock, {"chat-0001": 10}, seconds=600)
    answered_before = world.statistics(["chat-0001"])[0]["chat-0001"]["answered_total"]
    # when
    world.reset_metrics()
    overall = world.metrics()["overall"]
    # then
    assert isinstance(overall, dict)
    assert overall["answered"] == 0
    assert overall["offers"]["sent"] == 0
    assert world.statistics(["chat-0001"])[0]["chat-0001"]["answered_total"] == answered_before


def test_generated_targets_are_a_realistic_valid_mix() -> None:
    # when
    specs = generate_targets(2000, seed=7)
    # then
    ids = [s.target_id for s in specs]
    assert len(set(ids)) == 2000
    assert all(is_valid_target_id(i) for i in ids)
    assert ids[0].endswith("-0001")
    small = sum(1 for s in specs if s.slots <= 10) / 2000
    chat = sum(1 for s in specs if s.channel == "chat") / 2000
    dual = sum(1 for s in specs if s.dual) / 2000
    assert 0.65 < small < 0.75
    assert 0.65 < chat < 0.75
    assert 0.03 < dual < 0.15
    assert {s.channel for s in specs} == {"chat", "webcallback", "email"}
    assert all(1 <= s.slots <= 10 or 30 <= s.slots <= 200 for s in specs)
    assert 0.2 < sum(s.accept_probability for s in specs) / 2000 < 0.3
    assert {s.algorithm for s in specs} >= {"SUPER_PROGRESSIVE", "PREDICTIVE_B"}
    assert generate_targets(50, seed=7) == generate_targets(50, seed=7)


def test_target_spec_refuses_impossible_parameters() -> None:
    base = spec("chat-0001")
    with pytest.raises(ValueError, match="TARGET_ID_PATTERN"):
        replace(base, target_id="no spaces please")
    with pytest.raises(ValueError, match="not_ready"):
        replace(base, not_ready=6)
    with pytest.raises(ValueError, match="accept_probability"):
        replace(base, accept_probability=1.5)
    with pytest.raises(ValueError, match="positive"):
        replace(base, patience_seconds=math.nan)
    with pytest.raises(ValueError, match="unique"):
        World([base, base])


def test_ten_thousand_targets_keep_up_with_a_two_second_refresh() -> None:
    # given: a loaded world (every staffed target invited to every cycle)
    world, clock = make_world(generate_targets(10_000, seed=7), step_seconds=0.1)
    budgets = {s.target_id: min(5, s.staffed) for s in world.specs}
    drive(world, clock, budgets, seconds=60)
    # when: one more refresh period of simulated time
    world.apply_publish(
        list(budgets),
        list(budgets.values()),
        [1.0] * len(budgets),
        full=True,
        refresh_period_seconds=PERIOD,
    )
    clock.tick(PERIOD)
    started = time.thread_time()
    steps = world.advance()
    work = time.thread_time() - started
    # then: ~30 ms of this thread's CPU (measured). CPU time, not elapsed time: other processes
    # on a busy machine delay the thread but do not add to its work
    assert steps == 20
    assert work < PERIOD / 4


def test_feedback_after_a_delta_lists_only_the_counters_that_moved() -> None:
    # given: two groups, invitations only for the first
    world, clock = make_world([spec("chat-0001", slots=20), spec("chat-0002", slots=20)])
    everything = world.feedback()
    drive(world, clock, {"chat-0001": 10, "chat-0002": 0}, seconds=60)

    # when
    moved = world.feedback(changed_only=True)
    nothing_new = world.feedback(changed_only=True)

    # then: a full report names every target; a changed-only one what moved since the last
    assert set(everything) == {"chat-0001", "chat-0002"}
    assert set(moved) == {"chat-0001"}
    assert moved["chat-0001"]["offers_sent_total"] > 0
    assert nothing_new == {}
    assert set(world.feedback()) == {"chat-0001", "chat-0002"}


# --- changes of a target during a run (the evaluation's step changes and feed faults) ---------


def test_a_logout_leaves_busy_agents_to_finish_and_never_reports_negative_readiness() -> None:
    # given: a 10-slot group kept busy, then half its agents log out
    world, clock = make_world([spec("chat-0001", slots=10, accept_probability=0.5)])
    drive(world, clock, {"chat-0001": 8}, seconds=600)
    busy_before = world.statistics(["chat-0001"])[0]["chat-0001"]["agents_busy"]

    # when
    world.update_targets(["chat-0001"], staffed=5)
    rows = []
    for _ in run_cycles(world, clock, {"chat-0001": 8}, seconds=1800):
        rows.append(world.statistics(["chat-0001"])[0]["chat-0001"])

    # then: the busy slots drain to the new staffing and stay within it
    assert busy_before > 5
    assert all(row["agents_ready"] >= 0 for row in rows)
    assert max(row["agents_busy"] for row in rows[-300:]) <= 5
    assert rows[-1]["agents_busy"] + rows[-1]["agents_ready"] == 5
    counters = world.counters()
    assert counters["staffed_seconds"][0] == pytest.approx(600 * 10 + 1800 * 5, rel=0.01)


def test_staff_coming_back_are_put_to_work() -> None:
    # given: a group down to 2 of its 10 slots, then all back
    world, clock = make_world([spec("chat-0001", slots=10, accept_probability=0.5)])
    world.update_targets(["chat-0001"], staffed=2)
    drive(world, clock, {"chat-0001": 8}, seconds=600)

    # when
    world.update_targets(["chat-0001"], staffed=10)
    drive(world, clock, {"chat-0001": 8}, seconds=1200)

    # then
    row = world.statistics(["chat-0001"])[0]["chat-0001"]
    assert row["agents_busy"] > 5
    assert row["agents_busy"] + row["agents_ready"] == 10


def test_handle_time_and_acceptance_can_change_mid_run() -> None:
    # given
    world, clock = make_world([spec("chat-0001", slots=200, accept_probability=0.3)])
    drive(world, clock, {"chat-0001": 10}, seconds=600)
    before = world.feedback()["chat-0001"]

    # when
    world.update_targets(["chat-0001"], handle_mean_seconds=60.0, accept_probability=0.6)
    drive(world, clock, {"chat-0001": 10}, seconds=2400)

    # then
    after = world.feedback()["chat-0001"]
    accepted = after["offers_accepted_total"] - before["offers_accepted_total"]
    resolved = after["offers_resolved_total"] - before["offers_resolved_total"]
    assert accepted / resolved == pytest.approx(0.6, abs=0.04)
    row = world.statistics(["chat-0001"])[0]["chat-0001"]
    assert row["aht_seconds"] == pytest.approx(60.0, rel=0.2)


def test_exponential_handle_times_have_their_mean_and_spread() -> None:
    # given: reactive traffic only, far below capacity, exponential handle times of 100 s
    world, clock = make_world(
        [
            spec(
                "chat-0001",
                slots=500,
                handle_mean_seconds=100.0,
                reactive_rate_per_second=2.0,
                exponential_handle=True,
            )
        ]
    )

    # when
    drive(world, clock, {"chat-0001": 0}, seconds=3600)

    # then: the busy slot-seconds per answered visitor is the mean handle time
    counters = world.counters()
    answered = counters["reactive_admitted"][0]
    assert counters["busy_seconds"][0] / answered == pytest.approx(100.0, rel=0.05)


def test_a_feedback_that_under_reports_acceptances() -> None:
    # given
    world, clock = make_world([spec("chat-0001", slots=200, accept_probability=0.4)])
    world.update_targets(["chat-0001"], feedback_accept_scale=0.8)

    # when
    drive(world, clock, {"chat-0001": 10}, seconds=1800)

    # then: the platform says 0.32, the visitors accept at 0.4
    feedback = world.feedback()["chat-0001"]
    assert feedback["offers_accepted_total"] / feedback["offers_resolved_total"] == pytest.approx(
        0.32, abs=0.03
    )
    assert world.counters()["offers_accepted"][0] / feedback["offers_resolved_total"] == (
        pytest.approx(0.4, abs=0.03)
    )
