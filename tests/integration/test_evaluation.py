"""The virtual-time evaluation: the simulator's world paced by the service's own cycle, the report
and the command, on short scenarios (each batch runs a private redis-server)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacing.domain import Algorithm, Objective
from pacing.evaluation import (
    Pacer,
    RowResult,
    Scenario,
    ScenarioReport,
    cross_checks,
    erlang_reference,
    format_table,
    group_rows,
    quick_grid,
    run_rows,
    simulate_batch,
    verdict_of,
)
from pacing.evaluation.command import evaluate

pytestmark = pytest.mark.integration


def small(name: str, slots: int, **changes: object) -> Scenario:
    """A short scenario: one simulated hour (ten minutes of warm-up), Δ = 5 s, two seeds.

    Each tick costs a whole service cycle, so tests pace briefly; the grids of
    ``pacing evaluate`` are what the conclusions rest on.
    """
    values: dict[str, object] = {
        "hours": 1.0,
        "warmup_hours": 1.0 / 6.0,
        "seeds": 2,
        "refresh_period": 5.0,
    }
    values.update(changes)
    return Scenario(name=name, slots=slots, **values)  # type: ignore[arg-type]


BATCH = [
    small("auto-10", 10),
    small("progressive-1", 1, pacer=Pacer.PROGRESSIVE, seeds=3),
    small("auto-1", 1, seeds=3),
    small(
        "dual-10",
        10,
        algorithm=Algorithm.SUPER_PROGRESSIVE_DUAL,
        reactive_share=0.6,
        proactive_ratio=0.7,
    ),
]


@pytest.fixture(scope="module")
def reports() -> dict[str, ScenarioReport]:
    """One batch of short scenarios, simulated once for the tests below."""
    results = run_rows(BATCH, workers=1)
    return {report.scenario.name: report for report in group_rows(BATCH, results)}


def test_unpaced_poisson_traffic_reproduces_erlang_a() -> None:
    # given: the self-check at 10 slots, 120 replicas for 2.5 hours, about 30,000 arrivals
    scenario = small(
        "selfcheck-10", 10, pacer=Pacer.POISSON, hours=2.5, warmup_hours=0.5, seeds=120
    )

    # when
    [report] = group_rows([scenario], run_rows([scenario], workers=1))

    # then
    expected, occupancy = erlang_reference(scenario)
    assert expected == pytest.approx(0.03, abs=1e-4)
    assert report.abandonment.mean == pytest.approx(expected, abs=0.01)
    assert report.occupancy.mean == pytest.approx(occupancy, abs=0.03)


def test_a_batch_gives_the_same_figures_every_time_it_runs() -> None:
    # given
    short = {"hours": 0.25, "warmup_hours": 0.05}
    rows = [(small("auto-2", 2, **short), 0), (small("auto-30", 30, **short), 1)]

    # when
    first = simulate_batch(rows)
    again = simulate_batch(rows)

    # then
    assert first == again
    assert [result.scenario for result in first] == ["auto-2", "auto-30"]


def test_the_first_fifteen_minutes_are_measured_on_their_own(
    reports: dict[str, ScenarioReport],
) -> None:
    # given / when
    report = reports["auto-10"]

    # then: a cold start from an empty state, reported apart from the measured hours
    assert math.isfinite(report.cold_abandonment)
    assert 0.0 < report.cold_occupancy < 1.0
    assert report.as_dict()["cold_start"]["minutes"] == 15  # type: ignore[index]


def test_paced_rows_send_about_one_over_p_invitations_per_visitor(
    reports: dict[str, ScenarioReport],
) -> None:
    # given / when
    report = reports["auto-10"]

    # then
    assert report.invitations_per_accepted == pytest.approx(4.0, rel=0.25)
    assert report.occupancy.mean > 0.5
    assert report.budget_errors == 0


def test_the_progressive_baseline_overbooks_a_single_slot(
    reports: dict[str, ScenarioReport],
) -> None:
    # given / when
    baseline, paced = reports["progressive-1"], reports["auto-1"]

    # then
    assert baseline.abandonment.mean > 0.10
    assert paced.abandonment.mean < baseline.abandonment.mean
    assert not baseline.passed


def test_dual_rows_admit_reactive_visitors_and_report_them_apart(
    reports: dict[str, ScenarioReport],
) -> None:
    # given: reactive load at 60 % of λ*, far above the 30 % share proactive_ratio leaves it
    report = reports["dual-10"]

    # then
    assert report.accepted > 0
    assert math.isfinite(report.reactive_abandonment.mean)
    assert 0.0 < report.reactive_state < 0.9


def test_the_report_judges_scenarios_by_the_criteria_of_the_specification() -> None:
    # given: synthetic measurements, 2 % and 4.5 % abandonment at 30 slots, 3 % goal
    scenario = Scenario(name="auto-abandon3-30", slots=30, seeds=2)

    def measured(abandoned: int, seed: int) -> RowResult:
        result = RowResult(scenario=scenario.name, seed=seed)
        result.accepted = [1000, 0]
        result.abandoned = [abandoned, 0]
        result.busy_seconds, result.staffed_seconds = 96.0, 100.0
        return result

    # when
    good = group_rows([scenario], [measured(30, 0), measured(31, 1)])
    bad = group_rows([scenario], [measured(45, 0), measured(45, 1)])

    # then
    assert good[0].passed
    assert not bad[0].passed
    assert "not within goal ± 0.5 points" in bad[0].failures[0]
    checks = cross_checks(good)
    assert [check.passed for check in checks] == [True]  # 96 % against Erlang-A's 81.5 %
    assert verdict_of(good, checks)
    assert "auto-abandon3-30" in format_table(good, checks)


def test_the_quick_grid_covers_the_acceptance_criteria() -> None:
    # given / when
    grid = quick_grid()

    # then
    names = {scenario.name for scenario in grid}
    for slots in (1, 2, 5, 10, 30, 100):
        for goal in ("abandon3", "abandon5", "busy80"):
            assert f"auto-{goal}-{slots}" in names
        assert f"progressive-abandon3-{slots}" in names
        assert f"selfcheck-{slots}" in names
    assert all(scenario.seeds >= 4 for scenario in grid)
    assert all(scenario.warmup_hours >= 0.5 for scenario in grid if scenario.hours >= 2)


def test_the_command_prints_json_and_draws_the_figure(tmp_path: Path) -> None:
    # given
    figure = tmp_path / "eval.png"
    runner = CliRunner()

    # when
    outcome = runner.invoke(
        evaluate,
        [
            "--tiny",
            "--only",
            "abandon3-2",
            "--format",
            "json",
            "--workers",
            "1",
            "--plot",
            str(figure),
            "--no-progress",
        ],
    )

    # then
    assert outcome.exit_code in (0, 1), outcome.output
    document = json.loads(outcome.stdout)
    assert {s["scenario"] for s in document["scenarios"]} == {
        "auto-abandon3-2",
        "progressive-abandon3-2",
    }
    row = document["scenarios"][0]
    assert {"abandonment", "occupancy", "erlang_a_occupancy", "passed"} <= row.keys()
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_an_unknown_scenario_filter_is_a_usage_error() -> None:
    # given / when
    outcome = CliRunner().invoke(evaluate, ["--tiny", "--only", "nothing-like-this"])

    # then
    assert outcome.exit_code == 2
    assert "No scenario" in outcome.output


def test_erlang_reference_of_a_busy_goal_is_the_goal() -> None:
    # given
    scenario = Scenario(name="busy", slots=30, objective=Objective.BUSY_FACTOR, goal_percent=80)

    # when
    _, occupancy = erlang_reference(scenario)

    # then
    assert occupancy == pytest.approx(0.8, abs=1e-3)


def test_the_live_world_in_virtual_time_is_reported_like_the_live_benchmark() -> None:
    # given / when: 100 targets of the world `pacing up` serves, 6 minutes, wiped after 3
    outcome = CliRunner().invoke(
        evaluate,
        ["--live", "--targets", "100", "--minutes", "6", "--wipe-at", "3", "--format", "json"],
    )

    # then
    assert outcome.exit_code in (0, 1), outcome.output
    document = json.loads(outcome.stdout)
    assert document["config"] == {
        "targets": 100,
        "seed": 7,
        "minutes": 6,
        "wipe_at": 3,
        "refresh_period_seconds": 2.0,
        "virtual_time": True,
    }
    minutes = document["minutes"]
    assert [m["label"] for m in minutes] == ["1", "2", "3", "4", "5", "6"]
    everyone = [m["classes"]["all"] for m in minutes]
    assert all(m["targets"] == 100 for m in everyone)
    assert sum(m["accepted"] for m in everyone) > 0
    assert document["after_wipe"]["whole"]["label"] == "4–6"
