"""``pacing targets``: import, export, list, enable and disable the pacing targets.

The targets live in the history database; the files are CSV (a header row) or YAML (a list of
mappings, or ``{targets: [...]}``) with the columns of :data:`TARGET_COLUMNS`. A file is
validated whole (:func:`parse_target_rows`, naming the first bad line) before anything is
written, and written in one transaction.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import yaml

from pacing.cli._common import EXIT_USAGE, _emit, _engine, _fail, _settings
from pacing.domain import Algorithm, Objective, TargetConfig, is_valid_target_id
from pacing.errors import PacingError

_T = TypeVar("_T")

#: Below this many rows a progress bar only flickers.
PROGRESS_FROM_ROWS = 500

TARGET_COLUMNS = (
    "id",
    "name",
    "kind",
    "channel",
    "algorithm",
    "objective",
    "goal",
    "proactive_ratio",
    "max_budget",
    "enabled",
)
TARGET_FILE_FORMATS = ("csv", "yaml")


class TargetFileError(ValueError):
    """A line of a targets file is invalid."""


def parse_target_rows(rows: Iterable[tuple[int, dict[str, Any]]]) -> list[TargetConfig]:
    """Validate (line number, fields) pairs; raise TargetFileError naming the first bad line."""
    configs: list[TargetConfig] = []
    seen: set[str] = set()
    for line, row in rows:
        try:
            configs.append(_target_from_row(row))
        except (ValueError, KeyError, TypeError) as error:
            raise TargetFileError(f"line {line}: {error}") from None
        if configs[-1].target_id in seen:
            raise TargetFileError(f"line {line}: target {configs[-1].target_id!r} appears twice")
        seen.add(configs[-1].target_id)
    return configs


def _target_from_row(row: dict[str, Any]) -> TargetConfig:
    unknown = set(row) - set(TARGET_COLUMNS)
    if unknown:
        raise ValueError(
            f"unknown column(s) {sorted(unknown)}; allowed: {', '.join(TARGET_COLUMNS)}"
        )
    target_id = row.get("id")
    if not is_valid_target_id(target_id):
        raise ValueError(f"id {target_id!r} must be 1–128 letters, digits or ._:@- characters")

    def pick(name: str, default: Any) -> Any:
        value = row.get(name)
        return default if value is None or value == "" else value

    goal = _whole_number("goal", pick("goal", 3))
    if not 1 <= goal <= 99:
        raise ValueError(f"goal {goal} must be an integer percentage from 1 to 99")
    ratio = float(pick("proactive_ratio", 1.0))
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"proactive_ratio {ratio} must be between 0 and 1")
    max_budget = _whole_number("max_budget", pick("max_budget", 50))
    if max_budget < 0:
        raise ValueError(f"max_budget {max_budget} must not be negative")
    enabled = pick("enabled", True)
    if isinstance(enabled, str):
        if enabled.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"enabled {enabled!r} must be true or false")
        enabled = enabled.strip().lower() in ("true", "1", "yes")
    try:
        algorithm = Algorithm(str(pick("algorithm", "AUTO")).strip().upper())
    except ValueError:
        raise ValueError(
            f"algorithm {row.get('algorithm')!r} must be one of "
            f"{', '.join(a.value for a in Algorithm)}"
        ) from None
    try:
        objective = Objective.parse(str(pick("objective", "ABANDONMENT_RATE")))
    except ValueError:
        raise ValueError(
            f"objective {row.get('objective')!r} must be ABANDONMENT_RATE or BUSY_FACTOR"
        ) from None
    return TargetConfig(
        target_id=str(target_id),
        name=str(pick("name", target_id)),
        kind=str(pick("kind", "agent_group")),
        channel=str(pick("channel", "chat")),
        algorithm=algorithm,
        objective=objective,
        goal_percent=goal,
        proactive_ratio=ratio,
        max_budget=max_budget,
        enabled=bool(enabled),
    )


def _whole_number(name: str, value: Any) -> int:
    """An int from a CSV string or a YAML int; 3.7, true or "3.0" are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{name} {value!r} must be a whole number")
    if isinstance(value, str) and not re.fullmatch(r"\s*-?\d+\s*", value):
        raise ValueError(f"{name} {value!r} must be a whole number")
    return int(value)


def read_targets_file(path: Path) -> list[TargetConfig]:
    """Targets from a CSV (header row) or YAML (a list of mappings, or {targets: [...]}) file."""
    return parse_target_rows(target_file_rows(path))


def target_file_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The (line number, fields) pairs of a CSV or YAML targets file, not yet validated."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TargetFileError(f"not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    if _file_format(path) == "yaml":
        return _yaml_rows(text)
    reader = csv.DictReader(io.StringIO(text))
    try:
        return [
            (reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k})
            for row in reader
        ]
    except csv.Error as error:
        raise TargetFileError(f"line {reader.line_num}: not valid CSV ({error})") from None


def _file_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    return "yaml" if path.suffix.lower() in (".yaml", ".yml") else "csv"


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of each mapping."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping  # type: ignore[return-value]


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise TargetFileError(f"not valid YAML: {error}") from None
    if isinstance(data, dict) and "targets" in data:
        data = data["targets"]
    if not isinstance(data, list):
        raise TargetFileError("line 1: expected a list of targets (or a mapping with 'targets')")
    rows = []
    for index, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise TargetFileError(f"entry {index} is not a mapping of columns: {item!r:.60}")
        line = item.pop("__line__", 0)
        rows.append((line, item))
    return rows


def target_rows(configs: Iterable[TargetConfig]) -> list[dict[str, Any]]:
    """Targets as plain rows with the file columns (what `targets import` reads back)."""
    return [
        {
            "id": t.target_id,
            "name": t.name,
            "kind": t.kind,
            "channel": t.channel,
            "algorithm": t.algorithm.value,
            "objective": t.objective.value,
            "goal": t.goal_percent,
            "proactive_ratio": t.proactive_ratio,
            "max_budget": t.max_budget,
            "enabled": t.enabled,
        }
        for t in configs
    ]


def _progress(items: Sequence[_T], label: str) -> contextlib.AbstractContextManager[Iterable[_T]]:
    """A progress bar on stderr over ``items`` when there are many (a no-op context if not)."""
    if len(items) < PROGRESS_FROM_ROWS:
        return contextlib.nullcontext(items)
    return click.progressbar(items, label=label, file=sys.stderr)


def _load_targets(*, enabled_only: bool = False) -> list[TargetConfig]:
    from pacing.history import list_targets  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        return list_targets(engine, enabled_only=enabled_only)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()


@click.group()
def targets() -> None:
    """Manage pacing targets (agent groups, virtual queues) in the history database.

    Changes reach the leader within about 10 seconds; no restart is needed.

    \b
    Example:
      pacing targets export all.yaml && pacing targets import all.yaml
    """


@targets.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TARGET_FILE_FORMATS),
    default=None,
    help="File format; default: from the suffix (.yaml/.yml, else CSV).",
)
def targets_import(file: Path, fmt: str | None) -> None:
    """Import or update targets from a CSV or YAML file; all or nothing.

    Columns: id (required), name, kind, channel, algorithm, objective, goal, proactive_ratio,
    max_budget, enabled. Targets not in the file are left as they are. If any line is invalid
    the error names it (exit 2) and nothing is imported.

    \b
    Examples:
      pacing targets import groups.csv
      pacing targets import groups.yaml
    """
    from pacing.history import upsert_targets  # noqa: PLC0415

    def refuse(message: str) -> NoReturn:
        _fail(f"{file}: {message}. Nothing was imported.", EXIT_USAGE)

    try:
        rows = (
            _yaml_rows(file.read_text(encoding="utf-8"))
            if _file_format(file, fmt) == "yaml"
            else target_file_rows(file)
        )
        with _progress(rows, "Validating targets") as bar:
            configs = parse_target_rows(bar)
    except TargetFileError as error:
        refuse(str(error))
    except UnicodeDecodeError:
        refuse("not UTF-8 text; save it as UTF-8")
    if not configs:
        refuse("there are no targets in it")
    settings = _settings()
    engine = _engine(settings)
    if len(configs) >= PROGRESS_FROM_ROWS:
        click.echo(f"Writing {len(configs)} targets in one transaction…", err=True)
    try:
        count = upsert_targets(engine, configs)
    except ValueError as error:  # a rule of the database the file checks above do not know
        refuse(str(error).rstrip("."))
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    click.echo(f"Imported {count} targets from {file}.")


@targets.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TARGET_FILE_FORMATS),
    default=None,
    help="File format; default: from the suffix (.yaml/.yml, else CSV); CSV for '-'.",
)
@click.option("--enabled-only", is_flag=True, help="Only the targets being paced.")
def targets_export(file: Path, fmt: str | None, enabled_only: bool) -> None:
    """Write every target to a CSV or YAML file that `pacing targets import` reads back.

    FILE '-' writes to standard output. The file is replaced only once it is complete.

    \b
    Examples:
      pacing targets export backup.csv
      pacing targets export - --format yaml | less
    """
    rows = target_rows(_load_targets(enabled_only=enabled_only))
    file_format = _file_format(file, fmt)
    out = io.StringIO()
    with _progress(rows, "Exporting targets") as bar:
        if file_format == "yaml":
            yaml.safe_dump(
                {"targets": list(bar)}, out, sort_keys=False, allow_unicode=True, width=100
            )
        else:
            writer = csv.DictWriter(out, fieldnames=list(TARGET_COLUMNS), lineterminator="\n")
            writer.writeheader()
            for row in bar:
                writer.writerow({**row, "enabled": "true" if row["enabled"] else "false"})
    if str(file) == "-":
        click.echo(out.getvalue(), nl=False)
        return
    partial = file.with_name(f".{file.name}.partial")
    try:
        partial.write_text(out.getvalue(), encoding="utf-8")
        partial.replace(file)
    except OSError as error:
        partial.unlink(missing_ok=True)
        _fail(f"cannot write {file} ({error.strerror}); check the folder and its permissions.")
    click.echo(f"Exported {len(rows)} targets to {file}.", err=True)


@targets.command("list")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--enabled-only", is_flag=True, help="Only the targets being paced.")
def targets_list(fmt: str, enabled_only: bool) -> None:
    """List the configured targets.

    \b
    Example:
      pacing targets list --enabled-only --format csv
    """
    _emit(target_rows(_load_targets(enabled_only=enabled_only)), fmt, columns=list(TARGET_COLUMNS))


def _set_enabled(ids: tuple[str, ...], *, enabled: bool) -> None:
    from pacing.history import set_targets_enabled  # noqa: PLC0415

    bad = [i for i in ids if not is_valid_target_id(i)]
    if bad:
        _fail(f"invalid target id(s): {', '.join(map(repr, bad))}.", EXIT_USAGE)
    engine = _engine(_settings())
    try:
        changed = set_targets_enabled(engine, list(ids), enabled=enabled)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    click.echo(f"{'Enabled' if enabled else 'Disabled'} {changed} of {len(ids)} targets.")


@targets.command("enable")
@click.argument("target_ids", nargs=-1, required=True)
def targets_enable(target_ids: tuple[str, ...]) -> None:
    """Start pacing these targets (within about 10 seconds); unknown ids are counted out.

    \b
    Example:
      pacing targets enable sales-1 support-2
    """
    _set_enabled(target_ids, enabled=True)


@targets.command("disable")
@click.argument("target_ids", nargs=-1, required=True)
def targets_disable(target_ids: tuple[str, ...]) -> None:
    """Stop pacing these targets (they leave the next full snapshot).

    \b
    Example:
      pacing targets disable sales-1
    """
    _set_enabled(target_ids, enabled=False)
