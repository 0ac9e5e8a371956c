"""``benchmarks/live.py`` end to end on a tiny case: the real stack of ``pacing up`` for six
5-second "minutes" on 50 targets, with a Redis wipe after the third.

What is checked is the benchmark's machinery, not the pacing's quality: the report's windows
are the differences of the simulator's own readings (recomputed here with ``pacing.quality``
and against the simulator's overall totals), readings are never taken before their time, the
wipe really emptied Redis, and nothing is left running. No figure depends on the machine's
speed: a late reading only makes its window longer, and the report says by how much.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pacing import quality

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "live.py"
MINUTES = 6
MINUTE_SECONDS = 5.0
WIPE_AT = 3
TARGETS = 50


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """The report and the printed text of one benchmark run."""
    tmp_path = tmp_path_factory.mktemp("live")
    report_path = tmp_path / "live.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACING_")}
    command = [sys.executable, str(SCRIPT), "--targets", str(TARGETS), "--nodes", "1"]
    command += ["--minutes", str(MINUTES), "--minute-seconds", str(MINUTE_SECONDS)]
    command += ["--wipe-at", str(WIPE_AT), "--json", str(report_path)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    try:
        output, _ = process.communicate()
    finally:
        if process.poll() is None:  # the test was interrupted: the benchmark stops its stack
            process.send_signal(signal.SIGTERM)
            process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    report: dict[str, Any] = json.loads(report_path.read_bytes())
    return report, text


def test_each_window_is_the_difference_of_the_simulators_readings(
    run: tuple[dict[str, Any], str],
) -> None:
    report, _ = run
    readings = report["readings"]
    assert len(readings) == MINUTES + 1
    assert report["goals"] == [0.03]  # every target pacing up imports has the default goal
    goals = quality.uniform_goals(readings[0], 0.03)
    assert len(goals) == TARGETS

    assert [w["label"] for w in report["minutes"]] == [str(k) for k in range(1, MINUTES + 1)]
    for minute, reported in enumerate(report["minutes"], 1):
        before, after = readings[minute - 1], readings[minute]
        expected = quality.window(before, after, goals, first=minute).as_json()
        assert reported == expected
        # the whole population's counts are the simulator's own totals, differenced
        everyone = reported["classes"]["all"]
        total_before, total_after = before["overall"], after["overall"]
        assert everyone["targets"] == total_after["targets"] == TARGETS
        assert everyone["slots"] == total_after["slots"]
        assert everyone["invitations"] == (
            total_after["offers"]["sent"] - total_before["offers"]["sent"]
        )
        assert everyone["accepted"] == total_after["accepted"] - total_before["accepted"]
        assert everyone["abandoned"] == total_after["abandoned"] - total_before["abandoned"]
        seconds = after["window_seconds"] - before["window_seconds"]
        busy = total_after["busy_slot_seconds"] - total_before["busy_slot_seconds"]
        assert everyone["seconds"] == pytest.approx(seconds)
        occupancy = busy / (everyone["slots"] * seconds)
        assert everyone["occupancy"] == pytest.approx(occupancy, abs=1e-6)  # JSON: 6 places
        # the size classes split the population
        classes = [reported["classes"][name] for name in quality.CLASS_NAMES[:6]]
        for key in ("targets", "slots", "invitations", "accepted", "abandoned"):
            assert sum(c[key] for c in classes) == everyone[key]


def test_the_longer_windows_and_the_bounds_are_reported(
    run: tuple[dict[str, Any], str],
) -> None:
    report, text = run
    readings = report["readings"]
    goals = quality.uniform_goals(readings[0], 0.03)
    assert [w["label"] for w in report["five_minutes"]] == ["1–5"]
    five = report["five_minutes"][0]["classes"]["all"]
    assert five["accepted"] == sum(m["classes"]["all"]["accepted"] for m in report["minutes"][:5])
    assert report["settled"] is None  # six minutes never reach the eleventh
    # the start's bounds hold over the windows before the wipe: three minutes, none whole
    assert report["criteria"] == []
    after = report["after_wipe"]
    assert after["five_minutes"] == []  # three minutes after the wipe: no whole window
    assert (
        after["whole"] == quality.window(readings[3], readings[6], goals, first=4, last=6).as_json()
    )
    for heading in ("Per minute", "Per 5 minutes", "Issue 16's bounds", "after the wipe"):
        assert heading in text


def test_readings_are_on_schedule_or_late_never_early(run: tuple[dict[str, Any], str]) -> None:
    report, _ = run
    times = [reading["generated_at"] for reading in report["readings"]]
    offsets = report["reading_offsets_seconds"]
    for minute in range(1, MINUTES + 1):
        scheduled = times[0] + minute * MINUTE_SECONDS
        assert offsets[minute] == pytest.approx(times[minute] - scheduled, abs=1e-3)
        assert offsets[minute] >= -1e-3


def test_the_wipe_emptied_redis_and_nothing_is_left_running(
    run: tuple[dict[str, Any], str],
) -> None:
    report, text = run
    wipe = report["wipe"]
    assert wipe["minute"] == WIPE_AT
    assert wipe["keys_before"] > 0
    assert wipe["marker_survived"] is False  # a key written just before the wipe is gone
    assert wipe["files_left_in_data_dir"] == []  # nothing persisted to be loaded again
    assert wipe["pid_after"] != wipe["pid_before"]
    assert report["processes_left"] == 0
    assert Path(report["logs"], "simulator.log").exists()
    assert f"Logs: {report['logs']}" in text
