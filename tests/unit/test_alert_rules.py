"""The Prometheus alerting rules in docs/prometheus: valid, and their unit tests pass (promtool,
from Debian's ``prometheus`` package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import unavailable

RULES_DIR = Path(__file__).resolve().parents[2] / "docs" / "prometheus"


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool is missing; `apt-get install prometheus` (.ci/run does)")
    return found


def rules() -> list[dict[str, object]]:
    data = yaml.safe_load((RULES_DIR / "pacing-rules.yaml").read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_every_alert_has_a_severity_and_a_section_in_the_guide() -> None:
    # given
    guide = (RULES_DIR.parent / "operators-monitoring.md").read_text(encoding="utf-8")

    # when / then
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}  # type: ignore[index]
        assert f"### {rule['alert']}" in guide, f"{rule['alert']} is not explained"


def test_promtool_accepts_the_rules(promtool: str) -> None:
    # given / when
    result = subprocess.run(
        [promtool, "check", "rules", "pacing-rules.yaml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        check=False,
    )

    # then
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_fire_when_they_should(promtool: str) -> None:
    # given / when
    result = subprocess.run(
        [promtool, "test", "rules", "pacing-rules.test.yaml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        check=False,
    )

    # then
    assert result.returncode == 0, result.stdout + result.stderr
