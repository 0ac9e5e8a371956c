"""The operators' command line, run in-process with click's CliRunner on a SQLite history in
tmp_path (PACING_DATABASE_URL set per test)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from pacing.cli import main
from pacing.cli.history import parse_when
from pacing.history import (
    ChannelTotal,
    CycleRecord,
    DecisionRow,
    create_history_engine,
    record_cycle,
)


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    monkeypatch.setenv("PACING_DATABASE_URL", url)
    return url


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def migrated(runner: CliRunner, database_url: str) -> str:
    """The history database migrated with `pacing db upgrade`."""
    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    return database_url


def listed_targets(runner: CliRunner, *options: str) -> list[dict[str, Any]]:
    result = runner.invoke(main, ["targets", "list", "--format", "json", *options])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_CSV = """\
id,name,channel,algorithm,objective,goal,proactive_ratio,max_budget,enabled
sales-1,Sales,chat,SUPER_PROGRESSIVE,ABANDONMENT_RATE,3,1.0,20,true
support-2,Support,chat,PREDICTIVE_B_DUAL,BUSY_FACTOR,75,0.6,50,false
legacy-3,,webcallback,AUTO,ABANDONEMENT_RATE,5,,,
"""

GOOD_YAML = """\
targets:
  - id: sales-1
    name: Sales
    algorithm: SUPER_PROGRESSIVE
    goal: 3
    max_budget: 20
  - id: support-2
    channel: chat
    algorithm: PREDICTIVE_B_DUAL
    objective: BUSY_FACTOR
    goal: 75
    proactive_ratio: 0.6
    enabled: false
"""


# --- targets import ----------------------------------------------------------------------------


def test_a_good_csv_file_is_imported(runner: CliRunner, migrated: str, tmp_path: Path) -> None:
    # given
    file = write(tmp_path, "groups.csv", GOOD_CSV)

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 0, result.output
    assert "Imported 3 targets" in result.stdout
    by_id = {t["id"]: t for t in listed_targets(runner)}
    assert set(by_id) == {"sales-1", "support-2", "legacy-3"}
    assert by_id["sales-1"] == {
        "id": "sales-1",
        "name": "Sales",
        "kind": "agent_group",
        "channel": "chat",
        "algorithm": "SUPER_PROGRESSIVE",
        "objective": "ABANDONMENT_RATE",
        "goal": 3,
        "proactive_ratio": 1.0,
        "max_budget": 20,
        "enabled": True,
    }
    assert by_id["support-2"]["enabled"] is False
    assert by_id["support-2"]["objective"] == "BUSY_FACTOR"
    assert by_id["support-2"]["proactive_ratio"] == 0.6
    # empty cells take the defaults; the legacy objective spelling is accepted
    assert by_id["legacy-3"]["name"] == "legacy-3"
    assert by_id["legacy-3"]["objective"] == "ABANDONMENT_RATE"
    assert by_id["legacy-3"]["max_budget"] == 50


def test_a_good_yaml_file_is_imported(runner: CliRunner, migrated: str, tmp_path: Path) -> None:
    # given
    file = write(tmp_path, "groups.yaml", GOOD_YAML)

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 0, result.output
    by_id = {t["id"]: t for t in listed_targets(runner)}
    assert set(by_id) == {"sales-1", "support-2"}
    assert by_id["sales-1"]["max_budget"] == 20
    assert by_id["support-2"]["algorithm"] == "PREDICTIVE_B_DUAL"
    assert by_id["support-2"]["enabled"] is False


def test_importing_again_updates_the_targets(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given
    runner.invoke(main, ["targets", "import", str(write(tmp_path, "a.csv", GOOD_CSV))])
    changed = write(tmp_path, "b.csv", "id,goal\nsales-1,9\n")

    # when
    result = runner.invoke(main, ["targets", "import", str(changed)])

    # then
    assert result.exit_code == 0, result.output
    by_id = {t["id"]: t for t in listed_targets(runner)}
    assert by_id["sales-1"]["goal"] == 9
    assert len(by_id) == 3


CSV_HEADER = "id,channel,algorithm,goal\n"
CSV_GOOD_LINE = "sales-1,chat,SUPER_PROGRESSIVE,3\n"


@pytest.mark.parametrize(
    ("bad_line", "complaint"),
    [
        pytest.param("support-2,chat,AUTO,150\n", "goal 150", id="bad-goal"),
        pytest.param("support 2!,chat,AUTO,3\n", "id 'support 2!'", id="bad-id"),
        pytest.param("support-2,chat,TURBO,3\n", "algorithm 'TURBO'", id="unknown-algorithm"),
        pytest.param("sales-1,chat,AUTO,3\n", "'sales-1' appears twice", id="duplicate-id"),
    ],
)
def test_a_csv_file_with_one_bad_line_imports_nothing(
    runner: CliRunner, migrated: str, tmp_path: Path, bad_line: str, complaint: str
) -> None:
    # given a file whose third line is bad
    file = write(tmp_path, "groups.csv", CSV_HEADER + CSV_GOOD_LINE + bad_line)

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 2
    assert "line 3:" in result.stderr
    assert complaint in result.stderr
    assert "Nothing was imported." in result.stderr
    assert listed_targets(runner) == []


YAML_GOOD_ENTRY = "- id: sales-1\n  algorithm: SUPER_PROGRESSIVE\n  goal: 3\n"


@pytest.mark.parametrize(
    ("bad_entry", "complaint"),
    [
        pytest.param("- id: support-2\n  goal: 0\n", "goal 0", id="bad-goal"),
        pytest.param("- id: 'support/2'\n  goal: 3\n", "id 'support/2'", id="bad-id"),
        pytest.param(
            "- id: support-2\n  algorithm: PREDICTIVE_C\n",
            "algorithm 'PREDICTIVE_C'",
            id="unknown-algorithm",
        ),
        pytest.param("- id: sales-1\n  goal: 4\n", "'sales-1' appears twice", id="duplicate-id"),
    ],
)
def test_a_yaml_file_with_one_bad_entry_imports_nothing(
    runner: CliRunner, migrated: str, tmp_path: Path, bad_entry: str, complaint: str
) -> None:
    # given a list whose second entry starts on line 4
    file = write(tmp_path, "groups.yaml", YAML_GOOD_ENTRY + bad_entry)

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 2
    assert "line 4:" in result.stderr
    assert complaint in result.stderr
    assert "Nothing was imported." in result.stderr
    assert listed_targets(runner) == []


def test_a_bad_file_leaves_existing_targets_untouched(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given targets already imported
    runner.invoke(main, ["targets", "import", str(write(tmp_path, "a.csv", GOOD_CSV))])
    before = listed_targets(runner)
    bad = write(tmp_path, "b.csv", "id,goal\nsales-1,9\nnew-4,100\n")

    # when
    result = runner.invoke(main, ["targets", "import", str(bad)])

    # then
    assert result.exit_code == 2
    assert listed_targets(runner) == before


def test_a_file_with_an_unknown_column_is_refused(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given
    file = write(tmp_path, "groups.csv", "id,colour\nsales-1,blue\n")

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 2
    assert "line 2:" in result.stderr
    assert "colour" in result.stderr


def test_yaml_that_is_not_a_list_is_refused(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given
    file = write(tmp_path, "groups.yaml", "id: sales-1\n")

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 2
    assert "expected a list of targets" in result.stderr


@pytest.mark.parametrize("goal", ["3.7", "true"])
def test_a_yaml_goal_that_is_not_an_integer_is_refused(
    runner: CliRunner, migrated: str, tmp_path: Path, goal: str
) -> None:
    # given
    file = write(tmp_path, "groups.yaml", f"- id: sales-1\n  goal: {goal}\n")

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 2
    assert listed_targets(runner) == []


# --- targets enable / disable --------------------------------------------------------------------


def test_targets_can_be_disabled_and_enabled(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given three targets, support-2 disabled
    runner.invoke(main, ["targets", "import", str(write(tmp_path, "a.csv", GOOD_CSV))])

    # when
    disabled = runner.invoke(main, ["targets", "disable", "sales-1", "legacy-3"])

    # then
    assert disabled.exit_code == 0, disabled.output
    assert "Disabled 2 of 2 targets." in disabled.stdout
    assert listed_targets(runner, "--enabled-only") == []

    # when
    enabled = runner.invoke(main, ["targets", "enable", "support-2", "no-such-target"])

    # then
    assert enabled.exit_code == 0, enabled.output
    assert "Enabled 1 of 2 targets." in enabled.stdout
    assert [t["id"] for t in listed_targets(runner, "--enabled-only")] == ["support-2"]


def test_enabling_an_invalid_id_is_bad_usage(runner: CliRunner, migrated: str) -> None:
    # given / when
    result = runner.invoke(main, ["targets", "enable", "not valid!"])

    # then
    assert result.exit_code == 2
    assert "invalid target id" in result.stderr


# --- cycles and history --------------------------------------------------------------------------


def cycle(seq: int, at: datetime, decisions: list[tuple[str, int, str]], kind: str) -> CycleRecord:
    return CycleRecord(
        seq=seq,
        epoch=1,
        node="node-a",
        started_at=at,
        published_at=at + timedelta(milliseconds=300),
        fetch_ms=10.0,
        pace_ms=5.0,
        merge_ms=1.0,
        publish_ms=20.0,
        target_count=2,
        changed_count=len(decisions),
        error_count=0,
        payload_kind=kind,
        payload_bytes=100 + seq,
        publish_status="published",
        error=None,
        decisions=[
            DecisionRow(target_id=tid, proactive_budget=budget, reactive_state=1.0, reason=reason)
            for tid, budget, reason in decisions
        ],
        channels=[
            ChannelTotal(channel="chat", proactive_budget=seq, ready_capacity=2, target_count=2)
        ],
    )


@pytest.fixture
def history(migrated: str) -> datetime:
    """Five cycles of t1 and t2; t1's budget goes 2, 2, 5, 5, 0 (full snapshots repeat it)."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(minutes=10)
    records = [
        cycle(1, start, [("t1", 2, "ok"), ("t2", 1, "ok")], "full"),
        cycle(2, start + timedelta(minutes=1), [("t1", 2, "ok"), ("t2", 1, "ok")], "full"),
        cycle(3, start + timedelta(minutes=2), [("t1", 5, "ok")], "delta"),
        cycle(4, start + timedelta(minutes=3), [("t1", 5, "ok"), ("t2", 1, "ok")], "full"),
        cycle(5, start + timedelta(minutes=4), [("t1", 0, "no_agents")], "delta"),
    ]
    engine = create_history_engine(migrated)
    try:
        for record in records:
            assert record_cycle(engine, record)
    finally:
        engine.dispose()
    return start


def test_cycles_lists_the_last_n_newest_first(runner: CliRunner, history: datetime) -> None:
    # given five recorded cycles
    # when
    result = runner.invoke(main, ["cycles", "--last", "3", "--format", "json"])

    # then
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["seq"] for row in rows] == [5, 4, 3]
    assert [row["payload_kind"] for row in rows] == ["delta", "full", "delta"]
    assert rows[0]["publish_status"] == "published"
    assert rows[0]["payload_bytes"] == 105
    assert rows[0]["changed_count"] == 1
    assert rows[0]["started_at"] == (history + timedelta(minutes=4)).isoformat()


def test_cycles_last_5_returns_every_cycle(runner: CliRunner, history: datetime) -> None:
    # given / when
    result = runner.invoke(main, ["cycles", "--last", "5", "--format", "json"])

    # then
    assert result.exit_code == 0, result.output
    assert [row["seq"] for row in json.loads(result.stdout)] == [5, 4, 3, 2, 1]


def test_history_is_a_step_function_in_json(runner: CliRunner, history: datetime) -> None:
    # given t1 decided 2, 2, 5, 5, 0
    # when
    result = runner.invoke(main, ["history", "t1", "--since", "1d", "--format", "json"])

    # then consecutive equal decisions are collapsed
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["seq"], r["proactive_budget"], r["reason"]) for r in rows] == [
        (1, 2, "ok"),
        (3, 5, "ok"),
        (5, 0, "no_agents"),
    ]
    assert rows[1]["at"] == (history + timedelta(minutes=2)).isoformat()


def test_history_of_an_unchanged_target_is_one_step(runner: CliRunner, history: datetime) -> None:
    # given t2 decided 1 in every full snapshot
    # when
    result = runner.invoke(main, ["history", "t2", "--since", "1d", "--format", "json"])

    # then
    assert result.exit_code == 0, result.output
    assert [(r["seq"], r["proactive_budget"]) for r in json.loads(result.stdout)] == [(1, 1)]


def test_history_in_csv(runner: CliRunner, history: datetime) -> None:
    # given / when
    result = runner.invoke(main, ["history", "t1", "--since", "1d", "--format", "csv"])

    # then
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["seq"], r["proactive_budget"], r["reason"]) for r in rows] == [
        ("1", "2", "ok"),
        ("3", "5", "ok"),
        ("5", "0", "no_agents"),
    ]


def test_history_since_a_time_starts_with_the_decision_then_in_force(
    runner: CliRunner, history: datetime
) -> None:
    # given a window that starts after cycle 3 (t1's budget 5 was in force then)
    since = (history + timedelta(minutes=2, seconds=30)).isoformat()

    # when
    result = runner.invoke(main, ["history", "t1", "--since", since, "--format", "json"])

    # then
    assert result.exit_code == 0, result.output
    assert [(r["seq"], r["proactive_budget"]) for r in json.loads(result.stdout)] == [
        (3, 5),
        (5, 0),
    ]


def test_history_of_an_unknown_target_is_empty(runner: CliRunner, history: datetime) -> None:
    # given / when
    result = runner.invoke(main, ["history", "nobody", "--format", "json"])

    # then
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(["history", "t1", "--since", "yesterday"], id="nonsense-since"),
        pytest.param(["history", "t1", "--until", "5 parsecs"], id="nonsense-until"),
        pytest.param(["history", "bad id!"], id="invalid-target-id"),
    ],
)
def test_history_refuses_bad_arguments(
    runner: CliRunner, history: datetime, arguments: list[str]
) -> None:
    # given / when
    result = runner.invoke(main, arguments)

    # then
    assert result.exit_code == 2
    assert "Error" in result.stderr


# --- parse_when --------------------------------------------------------------------------------

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("45s", NOW - timedelta(seconds=45)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1.5h", NOW - timedelta(minutes=90)),
        (" 10 m ", NOW - timedelta(minutes=10)),
        ("2026-11-26T12:00", datetime(2026, 11, 26, 12, 0, tzinfo=UTC)),
        (
            "2026-11-26T12:00+02:00",
            datetime(2026, 11, 26, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2026-11-26", datetime(2026, 11, 26, tzinfo=UTC)),
    ],
)
def test_parse_when_accepts_durations_and_iso_times(value: str, expected: datetime) -> None:
    # given value
    # when
    moment = parse_when(value, now=NOW)

    # then
    assert moment == expected
    assert moment is not None
    assert moment.tzinfo is not None


def test_parse_when_of_nothing_is_nothing() -> None:
    # given / when / then
    assert parse_when(None, now=NOW) is None


@pytest.mark.parametrize("value", ["yesterday", "30x", "-5m", "m30", "", "2026-13-01"])
def test_parse_when_rejects_nonsense(value: str) -> None:
    # given value
    # when / then
    with pytest.raises(click.BadParameter, match="neither a duration"):
        parse_when(value, now=NOW)


# --- settings errors and help ------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [["targets", "list"], ["cycles"], ["db", "current"], ["db", "upgrade"], ["status"]],
)
def test_invalid_settings_exit_3_with_the_one_sentence_message(
    runner: CliRunner, database_url: str, monkeypatch: pytest.MonkeyPatch, arguments: list[str]
) -> None:
    # given a lease TTL shorter than the refresh period
    monkeypatch.setenv("PACING_REFRESH_PERIOD_SECONDS", "1.0")
    monkeypatch.setenv("PACING_LEASE_TTL_SECONDS", "0.5")

    # when
    result = runner.invoke(main, arguments)

    # then
    assert result.exit_code == 3
    message = result.stderr.strip()
    assert message.startswith("Error: PACING_LEASE_TTL_SECONDS (0.5) must be longer than")
    assert message.endswith(".")
    assert "\n" not in message
    assert "Traceback" not in result.output


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[list[str]]:
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield list(path)
        if isinstance(command, click.Group):
            yield from _command_paths(command, path)


COMMAND_PATHS = [[], *_command_paths(main)]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "pacing")
def test_every_command_has_help(runner: CliRunner, path: list[str]) -> None:
    # given / when
    result = runner.invoke(main, [*path, "--help"])

    # then
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage:")
    assert re.search(r"\S", result.stdout.split("\n", 1)[1])  # there is a description


def test_the_expected_commands_exist() -> None:
    # given / when
    paths = {" ".join(p) for p in COMMAND_PATHS}

    # then
    assert {
        "up",
        "simulate",
        "status",
        "db upgrade",
        "db current",
        "targets import",
        "targets list",
        "targets enable",
        "targets disable",
        "cycles",
        "history",
    } <= paths


def test_cycles_on_an_unmigrated_database_fails_with_a_message(
    runner: CliRunner, database_url: str
) -> None:
    # given a database file that was never migrated
    # when
    result = runner.invoke(main, ["cycles", "--format", "json"])

    # then
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: The history database at sqlite:///")
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "arguments", [["targets", "list"], ["targets", "enable", "t1"], ["targets", "disable", "t1"]]
)
def test_target_commands_on_an_unmigrated_database_fail_with_a_message(
    runner: CliRunner, database_url: str, arguments: list[str]
) -> None:
    # given a database file that was never migrated
    # when
    result = runner.invoke(main, arguments)

    # then
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: The history database at sqlite:///")
    assert isinstance(result.exception, SystemExit)
