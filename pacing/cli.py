"""``pacing``: the operators' command line.

Exit codes scripts can rely on: 0 success, 1 the operation failed (e.g. a database is down),
2 bad usage or invalid input (click's own convention), 3 invalid settings.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from pacing.domain import Algorithm, Objective, TargetConfig, is_valid_target_id
from pacing.errors import ConfigurationError, PacingError
from pacing.settings import Settings, load_settings

EXIT_FAILED = 1
EXIT_SETTINGS = 3
FORMATS = click.Choice(["table", "json"])


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_SETTINGS)


def _engine(settings: Settings) -> Any:
    from pacing.history import repository  # noqa: PLC0415 - keeps `pacing --help` fast

    return repository.create_history_engine(settings.database_url)


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Agent Pacing Service: pace proactive chat invitations for agent groups.

    Settings come from PACING_* environment variables (see the README). Start a local stack
    with `pacing up`, then look at it with `pacing status`.
    """


# --- up / simulate -------------------------------------------------------------------------


@main.command()
@click.option(
    "--targets",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 200_000),
    help="Synthetic agent groups the simulator holds.",
)
@click.option(
    "--nodes",
    default=2,
    show_default=True,
    type=click.IntRange(1, 8),
    help="Pacing nodes (a worker and a beat each); two show failover.",
)
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option(
    "--workdir",
    default="var",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where logs and the Redis data of the stack go.",
)
def up(targets: int, nodes: int, flower_port: int, workdir: Path) -> None:
    """Start a complete local stack against the built-in simulator; Ctrl-C stops it all.

    \b
    Example:
      pacing up --targets 1000 --nodes 2
    """
    from pacing.keys import Keys  # noqa: PLC0415
    from pacing.localstack import start_local_stack  # noqa: PLC0415
    from pacing.services import redis_client  # noqa: PLC0415
    from pacing.status import cluster_status  # noqa: PLC0415

    settings = _settings()
    try:
        stack = start_local_stack(
            settings,
            targets=targets,
            nodes=nodes,
            flower_port=flower_port,
            workdir=workdir.resolve(),
            echo=click.echo,
        )
    except (PacingError, RuntimeError) as error:
        _fail(str(error))
    click.echo("Pacing is starting; status every 10 s below. Ctrl-C stops everything.")
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    # also for SIGINT: a shell starts background jobs with SIGINT ignored, and Ctrl-C must work
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    client = redis_client(settings.effective_redis_url)
    try:
        while not stopping:
            time.sleep(1)
            dead = stack.dead()
            if dead:
                names = ", ".join(p.name for p in dead)
                click.echo(f"Stopped unexpectedly: {names}; see {dead[0].log_path}", err=True)
                break
            if int(time.time()) % 10 == 0:
                status = cluster_status(client, Keys(settings.key_prefix), now=time.time())
                age = status["last_published_age_seconds"]
                click.echo(
                    f"leader={status['leader'] or '-'} epoch={status['epoch'] or '-'} "
                    f"published_seq={status['last_published_seq'] or '-'} "
                    f"age={'-' if age is None else f'{age:.1f}s'} targets={status['targets']} "
                    f"overruns={status['overruns']}"
                )
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("Stopping the stack…")
        client.close()
        stack.stop()
        click.echo("Stopped.")


@main.command()
@click.option("--targets", default=1000, show_default=True, type=click.IntRange(1, 200_000))
@click.option("--port", default=8700, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--seed", default=7, show_default=True, type=int)
def simulate(targets: int, port: int, host: str, seed: int) -> None:
    """Run the contact-centre simulator alone (Stat Server and engagement APIs).

    \b
    Example:
      pacing simulate --targets 10000 --port 8700
    """
    from pacing.simulator import SimulatorConfig, serve_forever  # noqa: PLC0415

    serve_forever(SimulatorConfig(targets=targets, port=port, host=host, seed=seed))


# --- status ---------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Show the cluster: leader, epoch, last published seq and its age, cycles, overruns.

    \b
    Example:
      pacing status --json
    """
    import redis  # noqa: PLC0415

    from pacing.keys import Keys  # noqa: PLC0415
    from pacing.services import redis_client  # noqa: PLC0415
    from pacing.status import cluster_status  # noqa: PLC0415

    settings = _settings()
    client = redis_client(settings.effective_redis_url)
    try:
        state = cluster_status(client, Keys(settings.key_prefix), now=time.time())
    except redis.exceptions.RedisError as error:
        _fail(f"Redis did not answer ({type(error).__name__}); is the stack running?")
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    for key, value in state.items():
        click.echo(f"{key:28} {value}")


# --- db ---------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """History database migrations."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the history database to the newest revision (safe to repeat)."""
    from pacing.history.migrate import current_revision, upgrade_to_head  # noqa: PLC0415

    settings = _settings()
    try:
        upgrade_to_head(settings.database_url)
    except PacingError as error:
        _fail(str(error))
    click.echo(f"History database at revision {current_revision(settings.database_url)}.")


@db.command("current")
def db_current() -> None:
    """Print the revision the history database is at."""
    from pacing.history.migrate import current_revision  # noqa: PLC0415

    click.echo(current_revision(_settings().database_url) or "empty (run `pacing db upgrade`)")


# --- targets ------------------------------------------------------------------------------------

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


class TargetFileError(ValueError):
    """A line of a targets file is invalid."""


def parse_target_rows(rows: Sequence[tuple[int, dict[str, Any]]]) -> list[TargetConfig]:
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
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _read_yaml_targets(text)
    reader = csv.DictReader(io.StringIO(text))
    rows = [
        (reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k})
        for row in reader
    ]
    return parse_target_rows(rows)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of each mapping."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping  # type: ignore[return-value]


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml_targets(text: str) -> list[TargetConfig]:
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise TargetFileError(f"not valid YAML: {error}") from None
    if isinstance(data, dict) and "targets" in data:
        data = data["targets"]
    if not isinstance(data, list):
        raise TargetFileError("line 1: expected a list of targets (or a mapping with 'targets')")
    rows = []
    for item in data:
        if not isinstance(item, dict):
            raise TargetFileError(f"an entry is not a mapping: {item!r:.60}")
        line = item.pop("__line__", 0)
        rows.append((line, item))
    return parse_target_rows(rows)


@main.group()
def targets() -> None:
    """Manage pacing targets (agent groups) in the history database."""


@targets.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def targets_import(file: Path) -> None:
    """Import or update targets from a CSV or YAML file; all or nothing.

    Columns: id (required), name, kind, channel, algorithm, objective, goal, proactive_ratio,
    max_budget, enabled.

    \b
    Example:
      pacing targets import groups.csv
    """
    from pacing.history import repository  # noqa: PLC0415

    try:
        configs = read_targets_file(file)
    except TargetFileError as error:
        click.echo(f"Error: {file}: {error}. Nothing was imported.", err=True)
        sys.exit(2)
    settings = _settings()
    engine = _engine(settings)
    try:
        count = repository.upsert_targets(engine, configs)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    click.echo(f"Imported {count} targets from {file}.")


@targets.command("list")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--enabled-only", is_flag=True)
def targets_list(fmt: str, enabled_only: bool) -> None:
    """List the configured targets."""
    from pacing.history import repository  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        configs = repository.list_targets(engine, enabled_only=enabled_only)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    rows = [
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
    _emit(rows, fmt, columns=list(TARGET_COLUMNS))


def _set_enabled(ids: tuple[str, ...], *, enabled: bool) -> None:
    from pacing.history import repository  # noqa: PLC0415

    bad = [i for i in ids if not is_valid_target_id(i)]
    if bad:
        click.echo(f"Error: invalid target id(s): {', '.join(map(repr, bad))}.", err=True)
        sys.exit(2)
    engine = _engine(_settings())
    try:
        changed = repository.set_targets_enabled(engine, list(ids), enabled=enabled)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    click.echo(f"{'Enabled' if enabled else 'Disabled'} {changed} of {len(ids)} targets.")


@targets.command("enable")
@click.argument("target_ids", nargs=-1, required=True)
def targets_enable(target_ids: tuple[str, ...]) -> None:
    """Start pacing these targets (within about 10 seconds)."""
    _set_enabled(target_ids, enabled=True)


@targets.command("disable")
@click.argument("target_ids", nargs=-1, required=True)
def targets_disable(target_ids: tuple[str, ...]) -> None:
    """Stop pacing these targets (they leave the next full snapshot)."""
    _set_enabled(target_ids, enabled=False)


# --- history queries ------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(value: str | None, *, now: datetime) -> datetime | None:
    """``30m``/``2h``/``1d`` ago, or an ISO 8601 time (UTC if no zone is given)."""
    if value is None:
        return None
    match = _DURATION.match(value.strip())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration like 30m, 2h, 1d "
            "nor an ISO time like 2026-11-26T15:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@main.command()
@click.option("--last", "limit", default=20, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
def cycles(limit: int, fmt: str) -> None:
    """The last N cycles: seq, epoch, leader, times, stage latencies, counts, publish status.

    \b
    Example:
      pacing cycles --last 5 --format json
    """
    from pacing.history import repository  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        rows = [_plain(c) for c in repository.last_cycles(engine, limit)]
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    _emit(
        rows,
        fmt,
        columns=[
            "seq",
            "epoch",
            "node",
            "started_at",
            "fetch_ms",
            "pace_ms",
            "merge_ms",
            "publish_ms",
            "target_count",
            "changed_count",
            "error_count",
            "payload_kind",
            "payload_bytes",
            "publish_status",
        ],
    )


@main.command()
@click.argument("target_id")
@click.option(
    "--since", default="1h", show_default=True, help="Duration (30m, 2h, 1d) or ISO time."
)
@click.option("--until", default=None, help="Duration ago or ISO time; default now.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
def history(target_id: str, since: str, until: str | None, fmt: str) -> None:
    """One target's pacing history as a step function (a row per change).

    \b
    Example:
      pacing history chat-0001 --since 30m --format csv
    """
    from pacing.history import repository  # noqa: PLC0415

    if not is_valid_target_id(target_id):
        raise click.BadParameter(f"{target_id!r} is not a valid target id", param_hint="TARGET_ID")
    now = datetime.now(UTC)
    engine = _engine(_settings())
    try:
        points = repository.target_history(
            engine, target_id, since=parse_when(since, now=now), until=parse_when(until, now=now)
        )
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    rows = [_plain(p) for p in points]
    _emit(rows, fmt, columns=list(rows[0]) if rows else ["seq", "at", "proactive_budget"])


def _plain(item: Any) -> dict[str, Any]:
    from dataclasses import asdict  # noqa: PLC0415

    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(item).items()}


def _emit(rows: list[dict[str, Any]], fmt: str, *, columns: list[str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=list(rows[0]) if rows else columns, extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
        return
    if not rows:
        click.echo("(no rows)")
        return
    shown = [c for c in columns if c in rows[0]]
    cells = [[_cell(row.get(c)) for c in shown] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(shown)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
