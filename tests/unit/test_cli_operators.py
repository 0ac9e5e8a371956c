"""The operators' commands beyond the basics: targets export (and the round trip through
import), large imports, history and channel plots, leaders, cycle latency, the exporter's
refusal without credentials, and lazily registered commands. In-process with CliRunner on a
SQLite history in tmp_path."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text

from pacing.cli import main
from pacing.cli.group import LazyGroup
from pacing.history import (
    ChannelTotal,
    CycleRecord,
    DecisionRow,
    create_history_engine,
    record_cycle,
    record_leadership_change,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def migrated(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    monkeypatch.setenv("PACING_DATABASE_URL", url)
    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    return url


def listed(runner: CliRunner) -> list[dict[str, Any]]:
    result = runner.invoke(main, ["targets", "list", "--format", "json"])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


MIXED_CSV = """\
id,name,kind,channel,algorithm,objective,goal,proactive_ratio,max_budget,enabled
sales-1,Sales,agent_group,chat,SUPER_PROGRESSIVE,ABANDONMENT_RATE,3,1.0,20,true
support-2,"Support, 2nd line",virtual_queue,chat,PREDICTIVE_B_DUAL,BUSY_FACTOR,75,0.6,50,false
callback-3,Callbacks,agent_group,webcallback,AUTO,ABANDONMENT_RATE,5,1.0,0,true
"""


# --- targets export ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["csv", "yaml"])
def test_an_export_imports_back_into_an_empty_database_unchanged(
    runner: CliRunner, migrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    # given three targets, one disabled and one with a comma in its name
    source = tmp_path / "in.csv"
    source.write_text(MIXED_CSV, encoding="utf-8")
    assert runner.invoke(main, ["targets", "import", str(source)]).exit_code == 0
    original = listed(runner)

    # when exported, then imported into a new database
    exported = tmp_path / f"out.{suffix}"
    result = runner.invoke(main, ["targets", "export", str(exported)])
    assert result.exit_code == 0, result.output
    assert "Exported 3 targets" in result.stderr
    monkeypatch.setenv("PACING_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    reimported = runner.invoke(main, ["targets", "import", str(exported)])

    # then
    assert reimported.exit_code == 0, reimported.output
    assert listed(runner) == original


def test_an_export_to_stdout_is_csv_with_every_column(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given
    source = tmp_path / "in.csv"
    source.write_text(MIXED_CSV, encoding="utf-8")
    runner.invoke(main, ["targets", "import", str(source)])

    # when
    result = runner.invoke(main, ["targets", "export", "-", "--enabled-only"])

    # then
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["id"] for r in rows] == ["callback-3", "sales-1"]
    assert rows[1] == {
        "id": "sales-1",
        "name": "Sales",
        "kind": "agent_group",
        "channel": "chat",
        "algorithm": "SUPER_PROGRESSIVE",
        "objective": "ABANDONMENT_RATE",
        "goal": "3",
        "proactive_ratio": "1.0",
        "max_budget": "20",
        "enabled": "true",
    }


def test_an_export_as_yaml_has_a_targets_list(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given
    source = tmp_path / "in.csv"
    source.write_text(MIXED_CSV, encoding="utf-8")
    runner.invoke(main, ["targets", "import", str(source)])

    # when
    result = runner.invoke(main, ["targets", "export", "-", "--format", "yaml"])

    # then
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert [t["id"] for t in data["targets"]] == ["callback-3", "sales-1", "support-2"]
    assert data["targets"][2]["enabled"] is False
    assert data["targets"][2]["proactive_ratio"] == 0.6


def test_an_export_to_an_unwritable_place_fails_and_leaves_nothing(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given / when
    result = runner.invoke(main, ["targets", "export", str(tmp_path / "missing" / "out.csv")])

    # then
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot write")
    assert not (tmp_path / "missing").exists()


# --- large imports -------------------------------------------------------------------------------


def many_targets(count: int, bad_at: int | None = None) -> str:
    lines = ["id,channel,goal,max_budget"]
    for i in range(count):
        goal = "250" if i == bad_at else "3"
        lines.append(f"group-{i:05d},chat,{goal},40")
    return "\n".join(lines) + "\n"


def test_a_large_import_shows_progress_and_imports_everything(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given
    file = tmp_path / "many.csv"
    file.write_text(many_targets(2000), encoding="utf-8")

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 0, result.output
    assert "Validating targets" in result.stderr
    assert "Writing 2000 targets in one transaction" in result.stderr
    assert result.stdout == f"Imported 2000 targets from {file}.\n"
    assert len(listed(runner)) == 2000


def test_a_large_import_with_one_bad_line_imports_nothing_and_names_the_line(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given the 1501st target (line 1502, after the header) has a goal of 250 %
    file = tmp_path / "many.csv"
    file.write_text(many_targets(2000, bad_at=1500), encoding="utf-8")

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 2
    assert "line 1502: goal 250 must be an integer percentage from 1 to 99" in result.stderr
    assert "Nothing was imported." in result.stderr
    assert listed(runner) == []


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        pytest.param("empty.csv", "id,goal\n", "there are no targets in it", id="empty"),
        pytest.param("latin1.csv", "id,name\ng1,Caf\xe9\n", "not UTF-8", id="not-utf8"),
        pytest.param("bad.yaml", "- id: [unclosed\n", "not valid YAML", id="broken-yaml"),
        pytest.param("scalar.yaml", "- g1\n", "entry 1 is not a mapping", id="yaml-scalar"),
    ],
)
def test_unusable_files_are_refused_as_bad_input(
    runner: CliRunner, migrated: str, tmp_path: Path, name: str, content: str, complaint: str
) -> None:
    # given
    file = tmp_path / name
    file.write_bytes(content.encode("latin-1"))

    # when
    result = runner.invoke(main, ["targets", "import", str(file)])

    # then
    assert result.exit_code == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.output


def test_the_format_option_overrides_the_suffix(
    runner: CliRunner, migrated: str, tmp_path: Path
) -> None:
    # given YAML in a file without a YAML suffix
    file = tmp_path / "groups.txt"
    file.write_text("- id: g1\n  goal: 4\n", encoding="utf-8")

    # when
    result = runner.invoke(main, ["targets", "import", str(file), "--format", "yaml"])

    # then
    assert result.exit_code == 0, result.output
    assert [(t["id"], t["goal"]) for t in listed(runner)] == [("g1", 4)]


# --- history for people ---------------------------------------------------------------------


def record(
    seq: int, at: datetime, budget: int, reactive: float, reason: str, *, epoch: int = 1
) -> CycleRecord:
    return CycleRecord(
        seq=seq,
        epoch=epoch,
        node="node-a",
        started_at=at,
        published_at=at + timedelta(milliseconds=250),
        fetch_ms=40.0,
        pace_ms=20.0,
        merge_ms=5.0,
        publish_ms=30.0,
        target_count=1,
        changed_count=1,
        error_count=0,
        payload_kind="full",
        payload_bytes=300,
        publish_status="published",
        error=None,
        decisions=[
            DecisionRow(
                target_id="dual-1",
                proactive_budget=budget,
                reactive_state=reactive,
                reason=reason,
                agents_ready=max(0, 10 - seq),
                agents_busy=seq,
                interactions_waiting=seq % 3,
            )
        ],
        channels=[
            ChannelTotal(
                channel="chat", proactive_budget=budget, ready_capacity=10 - seq, target_count=1
            ),
            ChannelTotal(
                channel="webcallback", proactive_budget=2, ready_capacity=3, target_count=4
            ),
        ],
    )


@pytest.fixture
def history(migrated: str) -> datetime:
    """Eight cycles a minute apart; the target goes through ok, no_agents and back."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    steps = [
        (6, 1.0, "ok"),
        (4, 0.8, "ok"),
        (0, 0.5, "no_agents"),
        (0, 0.5, "no_agents"),
        (3, 0.7, "ok"),
        (5, 1.0, "ok"),
        (5, 1.0, "ok"),
        (2, 0.9, "ok"),
    ]
    engine = create_history_engine(migrated)
    try:
        for seq, (budget, reactive, reason) in enumerate(steps, start=1):
            record_cycle(
                engine, record(seq, start + timedelta(minutes=seq - 1), budget, reactive, reason)
            )
        record_leadership_change(
            engine,
            epoch=1,
            node="node-a",
            acquired_at=start,
            previous_node=None,
            previous_epoch=None,
        )
        record_leadership_change(
            engine,
            epoch=2,
            node="node-b",
            acquired_at=start + timedelta(minutes=5),
            previous_node="node-a",
            previous_epoch=1,
        )
    finally:
        engine.dispose()
    return start


def test_history_plot_writes_a_png_and_prints_no_table(
    runner: CliRunner, history: datetime, tmp_path: Path
) -> None:
    # given
    plot = tmp_path / "h.png"

    # when
    result = runner.invoke(main, ["history", "dual-1", "--since", "1h", "--plot", str(plot)])

    # then
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"Wrote {plot} (6 changes).\n"
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert plot.stat().st_size > 20_000  # three panels of lines, labels and legends


def test_history_plot_with_a_format_also_prints_the_rows(
    runner: CliRunner, history: datetime, tmp_path: Path
) -> None:
    # given / when
    result = runner.invoke(
        main, ["history", "dual-1", "--plot", str(tmp_path / "h.png"), "--format", "json"]
    )

    # then
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["reason"] for r in rows][:3] == ["ok", "ok", "no_agents"]
    assert rows[0]["agents_ready"] == 9


def test_a_plot_of_nothing_fails_with_advice(
    runner: CliRunner, history: datetime, tmp_path: Path
) -> None:
    # given / when
    result = runner.invoke(main, ["history", "nobody", "--plot", str(tmp_path / "h.png")])

    # then
    assert result.exit_code == 1
    assert "There is no history for 'nobody'" in result.stderr
    assert not (tmp_path / "h.png").exists()


def test_a_window_that_ends_before_it_starts_is_bad_usage(
    runner: CliRunner, history: datetime
) -> None:
    # given / when
    result = runner.invoke(main, ["history", "dual-1", "--since", "1h", "--until", "2h"])

    # then
    assert result.exit_code == 2
    assert "must be before --until" in result.stderr


def test_channels_lists_every_channel_of_every_cycle(runner: CliRunner, history: datetime) -> None:
    # given / when
    result = runner.invoke(main, ["channels", "--since", "1h", "--format", "csv"])

    # then
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 16
    assert {r["channel"] for r in rows} == {"chat", "webcallback"}
    assert [r["proactive_budget"] for r in rows if r["channel"] == "chat"] == [
        "6",
        "4",
        "0",
        "0",
        "3",
        "5",
        "5",
        "2",
    ]


def test_channels_plot_writes_a_png(runner: CliRunner, history: datetime, tmp_path: Path) -> None:
    # given
    plot = tmp_path / "c.png"

    # when
    result = runner.invoke(main, ["channels", "--since", "1h", "--plot", str(plot)])

    # then
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Wrote {plot} (8 cycles).\n"
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


def test_leaders_lists_the_epochs_newest_first(runner: CliRunner, history: datetime) -> None:
    # given / when
    result = runner.invoke(main, ["leaders", "--format", "json"])

    # then
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["epoch"], r["node"], r["previous_node"]) for r in rows] == [
        (2, "node-b", "node-a"),
        (1, "node-a", None),
    ]
    assert rows[1]["released_at"] == rows[0]["acquired_at"]


def test_cycles_show_the_latency_from_tick_to_publish(runner: CliRunner, history: datetime) -> None:
    # given / when
    table = runner.invoke(main, ["cycles", "--last", "2"])
    as_json = runner.invoke(main, ["cycles", "--last", "2", "--format", "json"])

    # then
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0].split()[:6] == [
        "seq",
        "epoch",
        "node",
        "started_at",
        "latency_ms",
        "recorded_ms",
    ]
    assert [r["latency_ms"] for r in json.loads(as_json.stdout)] == [250.0, 250.0]


def test_cycles_show_when_the_audit_was_recorded(runner: CliRunner, migrated: str) -> None:
    # given a cycle recorded 1.2 s after its tick, and one from before recorded_at existed
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    engine = create_history_engine(migrated)
    try:
        record_cycle(
            engine,
            record(1, start, 3, 1.0, "ok"),
            clock=(start + timedelta(milliseconds=1200)).timestamp,
        )
        record_cycle(engine, record(2, start + timedelta(minutes=1), 4, 1.0, "ok"))
        with engine.begin() as connection:
            connection.execute(text("UPDATE cycles SET recorded_at = NULL WHERE seq = 2"))
    finally:
        engine.dispose()

    # when
    table = runner.invoke(main, ["cycles", "--last", "2"])
    as_json = runner.invoke(main, ["cycles", "--last", "2", "--format", "json"])
    as_csv = runner.invoke(main, ["cycles", "--last", "2", "--format", "csv"])

    # then the table shows tick → audit commit, empty where unknown
    assert table.exit_code == 0, table.output
    header, newest, oldest = (line.split() for line in table.stdout.splitlines())
    column = header.index("recorded_ms")
    assert (newest[0], newest[column]) == ("2", "-")
    assert (oldest[0], oldest[column]) == ("1", "1200.0")
    # ... JSON and CSV carry the time itself as well
    rows = json.loads(as_json.stdout)
    assert [(r["recorded_ms"], r["recorded_at"]) for r in rows] == [
        (None, None),
        (1200.0, (start + timedelta(milliseconds=1200)).isoformat()),
    ]
    csv_rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["recorded_ms"], r["recorded_at"]) for r in csv_rows] == [
        ("", ""),
        ("1200.0", (start + timedelta(milliseconds=1200)).isoformat()),
    ]


# --- exporter, exit codes, lazy commands -------------------------------------------------------


def test_the_exporter_refuses_to_start_without_credentials_in_production(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given production settings that are otherwise valid
    monkeypatch.setenv("PACING_ENVIRONMENT", "production")
    monkeypatch.setenv("PACING_ENGAGEMENT_URL", "https://engagement.example/api")
    monkeypatch.delenv("PACING_METRICS_BASIC_AUTH", raising=False)

    # when
    result = runner.invoke(main, ["exporter", "--port", "0"])

    # then
    assert result.exit_code == 3
    assert result.stderr.startswith(
        "Error: PACING_METRICS_BASIC_AUTH is required outside development"
    )


def test_malformed_metrics_credentials_are_invalid_settings(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    monkeypatch.setenv("PACING_METRICS_BASIC_AUTH", "no-colon-here")

    # when
    result = runner.invoke(main, ["exporter"])

    # then
    assert result.exit_code == 3
    assert "PACING_METRICS_BASIC_AUTH must look like user:password" in result.stderr
    assert "no-colon-here" not in result.output


def test_the_top_level_help_documents_the_exit_codes(runner: CliRunner) -> None:
    # given / when
    result = runner.invoke(main, ["--help"])

    # then
    assert result.exit_code == 0
    for line in (
        "0  success",
        "1  the operation failed",
        "2  bad usage",
        "3  invalid settings",
        "4  `pacing status --check`",
    ):
        assert line in result.stdout


@click.command()
def _hello() -> None:
    """Say hello."""
    click.echo("hello")


def test_a_lazy_command_is_listed_and_imported_only_when_run(runner: CliRunner) -> None:
    # given a group with a lazy command whose module is not imported yet
    group = LazyGroup(name="demo", lazy_commands={"hello": (f"{__name__}:_hello", "Say hello.")})

    # when
    listing = runner.invoke(group, ["--help"])
    hello = runner.invoke(group, ["hello"])

    # then: listed with its short help, and it runs
    assert "hello" in listing.stdout
    assert "Say hello." in listing.stdout
    assert hello.stdout == "hello\n"


def test_pacing_evaluate_is_offered_and_loaded_on_use(runner: CliRunner) -> None:
    # given / when
    listing = runner.invoke(main, ["--help"])
    evaluate = runner.invoke(main, ["evaluate", "--help"])

    # then
    assert "evaluate" in listing.stdout
    assert evaluate.exit_code == 0
    assert "--quick" in evaluate.stdout


def _paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    paths = []
    for name, command in group.commands.items():
        paths.append([*prefix, name])
        if isinstance(command, click.Group):
            paths.extend(_paths(command, (*prefix, name)))
    return paths


@pytest.mark.parametrize("path", [[], *_paths(main)], ids=lambda p: " ".join(p) or "pacing")
def test_every_help_shows_an_example_of_its_command(runner: CliRunner, path: list[str]) -> None:
    # given / when
    result = runner.invoke(main, [*path, "--help"])

    # then
    assert result.exit_code == 0, result.output
    examples = result.stdout.split("Example", 1)[1]
    assert f"pacing {' '.join(path)}".rstrip() in examples
