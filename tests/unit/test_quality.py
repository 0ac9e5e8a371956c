"""Pacing quality between two metric readings, on hand-made readings and on a real world."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pacing.quality import (
    CLASS_NAMES,
    format_criteria,
    format_run_report,
    format_windows,
    issue_criteria,
    run_report,
    run_report_json,
    size_class,
    uniform_goals,
    window,
    windows,
)
from pacing.simulator.targets import generate_targets
from pacing.simulator.world import World

GOAL = 0.03


def block(
    slots: int,
    *,
    sent: int = 0,
    accepted: int = 0,
    abandoned: int = 0,
    busy: float = 0.0,
) -> dict[str, Any]:
    """One target's cumulative metrics as World.metrics(per_target=True) shows them."""
    return {
        "slots": slots,
        "accepted": accepted,
        "abandoned": abandoned,
        "busy_slot_seconds": busy,
        "offers": {"sent": sent},
    }


def reading(at: float, targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A reading ``at`` seconds into the measurement window."""
    return {"generated_at": 1_800_000_000.0 + at, "window_seconds": at, "targets": targets}


def empty(slots: dict[str, int]) -> dict[str, Any]:
    return reading(0.0, {target_id: block(n) for target_id, n in slots.items()})


SLOTS = {"a": 1, "b": 4, "c": 6, "d": 10, "e": 150, "z": 0}


def test_figures_per_class_are_exact_sums_and_ratios() -> None:
    # given a minute with known counts
    before = empty(SLOTS)
    after = reading(
        60.0,
        {
            "a": block(1, sent=10, accepted=2, abandoned=1, busy=30.0),
            "b": block(4, sent=20, accepted=5, abandoned=0, busy=120.0),
            "c": block(6, sent=30, accepted=5, abandoned=1, busy=240.0),
            "d": block(10, sent=40, accepted=20, abandoned=1, busy=540.0),
            "e": block(150, sent=500, accepted=200, abandoned=6, busy=8_100.0),
            "z": block(0),
        },
    )
    # when
    figures = window(before, after, uniform_goals(after, GOAL)).classes
    # then
    small = figures["3–9"]
    assert (small.targets, small.slots, small.invitations) == (2, 10, 50)
    assert (small.accepted, small.abandoned) == (10, 1)
    assert small.abandonment == pytest.approx(0.1)
    assert small.occupancy == pytest.approx(360.0 / (10 * 60.0))
    assert small.goal == pytest.approx(GOAL)
    assert small.difference == pytest.approx(0.07)
    large = figures["10+"]
    assert (large.targets, large.slots, large.accepted, large.abandoned) == (2, 160, 220, 7)
    assert large.occupancy == pytest.approx(8_640.0 / (160 * 60.0))
    assert figures["10–30"].targets == 1
    assert figures["101+"].targets == 1
    assert figures["31–100"].targets == 0
    everyone = figures["all"]
    assert (everyone.targets, everyone.slots, everyone.invitations) == (6, 171, 600)
    assert (everyone.accepted, everyone.abandoned) == (232, 9)
    assert everyone.busy_slot_seconds == pytest.approx(9_030.0)
    assert everyone.seconds == 60.0


def test_size_classes_by_staffed_slots() -> None:
    cases = {0: "0", 1: "1–2", 2: "1–2", 3: "3–9", 9: "3–9", 10: "10–30", 30: "10–30"}
    cases |= {31: "31–100", 100: "31–100", 101: "101+", 5_000: "101+"}
    for slots, expected in cases.items():
        assert size_class(slots) == expected
    with pytest.raises(ValueError, match="staffed slots"):
        size_class(-1)


def test_nothing_accepted_leaves_abandonment_unknown_and_the_goal_a_plain_mean() -> None:
    # given invitations, none accepted, two goals
    before = empty({"a": 5, "b": 5})
    after = reading(60.0, {"a": block(5, sent=9), "b": block(5, sent=1)})
    # when
    figures = window(before, after, {"a": 0.03, "b": 0.05}).classes["3–9"]
    # then: None, not 0 (0 % would claim a success nobody measured)
    assert figures.abandonment is None
    assert figures.difference is None
    assert figures.goal == pytest.approx(0.04)
    assert figures.occupancy == 0.0
    assert figures.as_json()["abandonment"] is None


def test_zero_slots_have_no_occupancy_and_an_empty_class_no_goal() -> None:
    # given a target nobody is staffed in, whose invited visitors all abandon
    before = empty({"z": 0})
    after = reading(60.0, {"z": block(0, sent=4, accepted=2, abandoned=2)})
    # when
    figures = window(before, after, uniform_goals(after, GOAL)).classes
    # then
    assert figures["0"].occupancy is None
    assert figures["0"].abandonment == 1.0
    assert figures["all"].occupancy is None  # no staffed slot anywhere
    assert figures["10+"].targets == 0
    assert figures["10+"].goal is None
    assert figures["10+"].abandonment is None


def test_a_window_without_time_has_no_occupancy() -> None:
    same = reading(60.0, {"a": block(5, busy=10.0)})
    assert window(same, same, {"a": GOAL}).classes["all"].occupancy is None


def test_the_goal_of_a_class_is_weighted_by_accepted_interactions() -> None:
    # given 100 accepted at a 3 % goal and 300 at 5 %: 3 + 15 abandoned are allowed
    before = empty({"a": 20, "b": 20})
    after = reading(
        60.0,
        {"a": block(20, accepted=100, abandoned=3), "b": block(20, accepted=300, abandoned=15)},
    )
    # when
    figures = window(before, after, {"a": 0.03, "b": 0.05}).classes["10+"]
    # then: at the goal exactly
    assert figures.goal == pytest.approx(18 / 400)
    assert figures.difference == pytest.approx(0.0)


def minute_readings(count: int) -> list[dict[str, Any]]:
    """``count`` + 1 readings a minute apart; minute k brings k accepted visitors to "a"."""
    readings = [empty({"a": 12})]
    accepted = 0
    for minute in range(1, count + 1):
        accepted += minute
        readings.append(
            reading(
                60.0 * minute,
                {"a": block(12, sent=4 * accepted, accepted=accepted, busy=600.0 * minute)},
            )
        )
    return readings


def test_windows_cover_whole_spans_and_add_up() -> None:
    # given eleven minutes of readings
    readings = minute_readings(11)
    goals = {"a": GOAL}
    # when
    minutes = windows(readings, goals)
    fives = windows(readings, goals, span=5)
    shifted = windows(readings, goals, span=5, start=1)
    # then
    assert [w.label for w in minutes] == [str(k) for k in range(1, 12)]
    assert [w.label for w in fives] == ["1–5", "6–10"]  # minute 11 is not a whole window
    assert [w.label for w in shifted] == ["2–6", "7–11"]
    assert [w.classes["all"].accepted for w in minutes[:5]] == [1, 2, 3, 4, 5]
    assert fives[0].classes["all"].accepted == sum(range(1, 6))
    assert fives[1].classes["all"].invitations == 4 * sum(range(6, 11))
    assert fives[1].seconds == 300.0
    assert fives[1].classes["all"].occupancy == pytest.approx(3_000.0 / (12 * 300.0))
    assert fives[1].start == readings[5]["generated_at"]
    assert fives[1].end == readings[10]["generated_at"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"accepted": 0}, "went down"),
        ({"busy_slot_seconds": None}, "older than busy_slot_seconds"),
        ({"slots": 4}, "slots differ"),
    ],
)
def test_readings_that_do_not_belong_together_are_refused(
    change: dict[str, Any], message: str
) -> None:
    before = reading(0.0, {"a": block(3, accepted=5, busy=1.0)})
    after = reading(60.0, {"a": {**block(3, accepted=6, busy=2.0), **change}})
    with pytest.raises(ValueError, match=message):
        window(before, after, {"a": GOAL})


def test_other_targets_a_missing_goal_or_no_targets_are_refused() -> None:
    before = empty({"a": 3})
    with pytest.raises(ValueError, match="different targets"):
        window(before, empty({"b": 3}), {"a": GOAL, "b": GOAL})
    with pytest.raises(ValueError, match="No goal"):
        window(before, before, {})
    with pytest.raises(ValueError, match="per_target"):
        window({"window_seconds": 0.0, "generated_at": 0.0}, before, {"a": GOAL})
    with pytest.raises(ValueError, match="reset"):
        window(reading(60.0, {"a": block(3)}), before, {"a": GOAL})


def five_minutes(first: int, large: tuple[int, int, float], everyone: tuple[int, int]) -> Any:
    """A 5-minute window: ``large`` = (accepted, abandoned, occupancy) of one 10-slot target,
    ``everyone`` = (accepted, abandoned) of a 2-slot target beside it."""
    accepted, abandoned, occupancy = large
    before = reading(0.0, {"big": block(10), "small": block(2)})
    after = reading(
        300.0,
        {
            "big": block(10, accepted=accepted, abandoned=abandoned, busy=occupancy * 3_000.0),
            "small": block(2, accepted=everyone[0], abandoned=everyone[1]),
        },
    )
    return window(before, after, uniform_goals(after, GOAL), first=first, last=first + 4)


def test_the_bounds_of_issue_16_at_their_edges() -> None:
    # given: at goal + 1 point exactly, then within ± 0.5 point at 90 % occupancy exactly
    windows_ = [
        five_minutes(1, (100, 4, 0.5), (0, 0)),
        five_minutes(6, (1_000, 40, 0.5), (0, 0)),
        five_minutes(11, (1_000, 35, 0.9), (0, 0)),
        five_minutes(16, (1_000, 25, 0.95), (0, 0)),
    ]
    # when
    ceiling, settled = issue_criteria(windows_, settled_from=11)
    # then
    assert ceiling.passed
    assert len(ceiling.checks) == 8  # all and 10+ in each window
    assert settled.passed
    assert {check.window for check in settled.checks} == {"11–15", "16–20"}


def test_the_bounds_of_issue_16_fail_just_beyond_their_edges() -> None:
    # given 4.1 % in the first window, and later 90 % occupancy missed by a little
    windows_ = [
        five_minutes(1, (1_000, 41, 0.5), (0, 0)),
        five_minutes(11, (1_000, 30, 0.899), (0, 0)),
        five_minutes(16, (1_000, 36, 0.95), (0, 0)),
    ]
    # when
    ceiling, settled = issue_criteria(windows_, settled_from=11)
    # then
    assert not ceiling.passed
    assert [c.window for c in ceiling.checks if not c.passed] == ["1–5", "1–5"]
    assert not settled.passed
    failed = [(c.window, c.measure) for c in settled.checks if not c.passed]
    assert failed == [("11–15", "occupancy"), ("16–20", "abandonment")]


def test_the_whole_population_is_held_to_the_ceiling_too() -> None:
    # given a 10+ group at its goal beside a small group that abandons everyone
    windows_ = [five_minutes(1, (1_000, 30, 0.95), (100, 100))]
    # when
    ceiling, _ = issue_criteria(windows_, settled_from=11)
    # then
    assert [(c.size_class, c.passed) for c in ceiling.checks] == [("all", False), ("10+", True)]


def test_unmeasured_figures_and_short_runs_do_not_pass() -> None:
    # given nothing accepted at all, and a run with no window from minute 11 on
    windows_ = [five_minutes(1, (0, 0, 0.95), (0, 0))]
    # when
    ceiling, settled = issue_criteria(windows_, settled_from=11)
    # then
    assert not ceiling.passed
    assert not settled.passed
    assert settled.checks == ()
    assert "too short" in format_criteria([settled], title="bounds")


def test_text_tables_show_each_populated_class_under_its_window() -> None:
    # given
    readings = minute_readings(2)
    # when
    text = format_windows(windows(readings, {"a": GOAL}), title="per minute")
    # then
    lines = text.splitlines()
    assert lines[0] == "per minute"
    assert lines[1].split()[:3] == ["minute", "class", "targets"]
    rows = [line.split() for line in lines[3:]]
    # the 12-slot target is in 10–30, 10+ and all; other classes have no targets; the
    # minute is named on its first row only
    assert [row[:2] for row in rows[::3]] == [["1", "10–30"], ["2", "10–30"]]
    assert [row[0] for row in rows if row[0] not in ("1", "2")] == ["10+", "all"] * 2
    first = rows[0]
    assert first[1:8] == ["10–30", "1", "12", "4", "1", "0", "0.00"]
    assert first[-2:] == ["83.3", "%"]  # 600 of 720 slot-seconds
    assert "+-" not in text


def test_criteria_text_names_each_failed_check() -> None:
    windows_ = [five_minutes(11, (1_000, 60, 0.5), (0, 0))]
    text = format_criteria(issue_criteria(windows_, settled_from=11), title="bounds")
    assert "FAIL  every window: abandonment ≤ goal + 1 point" in text
    assert "window 11–15, 10+: abandonment 6.00 % outside ≤ 4.00 %" in text
    assert "window 11–15, 10+: occupancy 50.00 % outside ≥ 90.00 %" in text


def test_json_forms_are_plain_json() -> None:
    readings = minute_readings(5)
    fives = windows(readings, {"a": GOAL}, span=5)
    criteria = issue_criteria(fives, settled_from=1)
    encoded = json.loads(
        json.dumps({"windows": [w.as_json() for w in fives], "c": [c.as_json() for c in criteria]})
    )
    classes = encoded["windows"][0]["classes"]
    assert list(classes) == list(CLASS_NAMES)
    assert classes["all"]["accepted"] == 15
    assert classes["all"]["abandonment"] == 0.0
    assert classes["all"]["difference"] == pytest.approx(-GOAL)
    assert classes["1–2"]["goal"] is None
    assert encoded["windows"][0]["label"] == "1–5"
    assert encoded["c"][0]["checks"][0]["class"] == "all"


def test_readings_of_a_real_world_add_up_to_its_own_totals() -> None:
    # given a world stepped in virtual time, paced at 2 invitations per target and period
    now = [1_800_000_000.0]
    world = World(generate_targets(60, seed=3), seed=3, clock=lambda: now[0], step_seconds=0.5)
    ids = world.target_ids()
    readings = [world.metrics(per_target=True)]
    for _ in range(3):
        for _ in range(30):
            world.apply_publish(
                ids, [2] * len(ids), [1.0] * len(ids), full=True, refresh_period_seconds=2.0
            )
            now[0] += 2.0
            world.advance()
        readings.append(world.metrics(per_target=True))
    # when
    whole = window(readings[0], readings[-1], uniform_goals(readings[-1], GOAL)).classes["all"]
    # then: the world's own figures over the same window (it was never reset)
    overall = readings[-1]["overall"]
    assert whole.seconds == readings[-1]["window_seconds"] == 180.0
    assert whole.invitations == overall["offers"]["sent"] > 0
    assert (whole.accepted, whole.abandoned) == (overall["accepted"], overall["abandoned"])
    assert whole.slots == overall["slots"]
    assert whole.occupancy == pytest.approx(overall["occupancy"], abs=1e-6)
    assert whole.abandonment == pytest.approx(overall["abandonment_rate"], abs=1e-6)
    minutes = windows(readings, uniform_goals(readings[-1], GOAL))
    assert sum(w.classes["all"].accepted for w in minutes) == whole.accepted
    per_class = sum(minutes[0].classes[name].invitations for name in CLASS_NAMES[:6])
    assert per_class == minutes[0].classes["all"].invitations


def test_a_run_with_a_wipe_holds_each_cold_start_to_its_own_bounds() -> None:
    # given 20 minutes of readings of a 12-slot group at 3 % abandonment and 90 % busy, its
    # state wiped after minute 10
    readings = [empty({"a": 12})]
    for minute in range(1, 21):
        readings.append(
            reading(
                60.0 * minute,
                {
                    "a": block(
                        12,
                        sent=400 * minute,
                        accepted=100 * minute,
                        abandoned=3 * minute,
                        busy=0.9 * 12 * 60.0 * minute,
                    )
                },
            )
        )

    # when
    report = run_report(readings, uniform_goals(readings[0], GOAL), wipe_at=10)

    # then: the start is judged on minutes 1-10 (the settled band only past minute 10: none);
    # the ten minutes after the wipe have the ceiling, the band would start ten minutes later
    assert [w.label for w in report["five_minutes"]] == ["1–5", "6–10", "11–15", "16–20"]
    assert [c.name for c in report["criteria"]] == ["ceiling"]
    assert [check.window for check in report["criteria"][0].checks] == ["1–5"] * 2 + ["6–10"] * 2
    after = report["after_wipe"]
    assert [w.label for w in after["five_minutes"]] == ["11–15", "16–20"]
    assert [c.name for c in after["criteria"]] == ["ceiling"]
    assert all(c.passed for c in [*report["criteria"], *after["criteria"]])
    assert json.loads(json.dumps(run_report_json(report)))["after_wipe"]["whole"]["label"] == (
        "11–20"
    )
    assert "after the wipe" in format_run_report(report, heading=["a run"])


def test_a_run_without_a_wipe_is_held_to_the_settled_band_after_minute_ten() -> None:
    # given
    readings = minute_readings(15)

    # when
    report = run_report(readings, uniform_goals(readings[0], GOAL))

    # then
    assert [c.name for c in report["criteria"]] == ["ceiling", "settled"]
    assert [check.window for check in report["criteria"][1].checks] == ["11–15", "11–15"]
    assert report["settled"].label == "11–15"
