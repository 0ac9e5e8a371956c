"""``pacing``: the operators' command line.

Exit codes scripts can rely on (also in ``pacing --help`` and docs/operators-monitoring.md):

====  =====================================================================================
0     success
1     the operation failed: a database or Redis is down, a port is taken, a plot is empty
2     bad usage or invalid input, e.g. an unknown option or a bad line in a targets file
      (click's own convention); nothing was changed
3     invalid settings (a PACING_* variable); the message names it and the fix
4     ``pacing status --check`` only: the cluster is not publishing (no publish acknowledged
      within three refresh periods, or no leader)
====  =====================================================================================
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import yaml

from pacing.domain import Algorithm, Objective, TargetConfig, is_valid_target_id
from pacing.errors import ConfigurationError, PacingError
from pacing.settings import Settings, load_settings

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SETTINGS = 3
EXIT_UNHEALTHY = 4
#: A publish older than this many refresh periods means the cluster is not pacing
#: (the same threshold as the PacingNotPublishing alert in docs/operators-monitoring.md).
STALE_AFTER_PERIODS = 3
#: Below this many rows a progress bar only flickers.
PROGRESS_FROM_ROWS = 500

#: Commands that live in other modules, imported only when used (`pacing --help` stays fast):
#: ``name → (module:attribute, short help)``.
LAZY_COMMANDS = {
    "evaluate": (
        "pacing.evaluation.command:evaluate",
        "Score the pacing algorithms in virtual time (no Celery, no HTTP).",
    ),
}

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the operation failed (database or Redis down, port taken, ...)
  2  bad usage or invalid input (nothing was changed)
  3  invalid settings (the message names the PACING_* variable)
  4  `pacing status --check`: the cluster is not publishing
"""


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_SETTINGS)


def _engine(settings: Settings) -> Any:
    from pacing.history import repository  # noqa: PLC0415 - keeps `pacing --help` fast

    return repository.create_history_engine(settings.database_url)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class LazyGroup(click.Group):
    """A group that also offers commands from modules imported on first use."""

    def __init__(
        self, *args: Any, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, without importing the lazy commands' modules."""
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(name) for name in names), default=0)
        for name in names:
            if name in self.lazy_commands and name not in self.commands:
                rows.append((name, self.lazy_commands[name][1]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy_commands:
            return command
        module_name, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
        loaded = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(loaded, click.Command):
            raise TypeError(f"{module_name}:{attribute} is not a click command")
        return loaded


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
def main() -> None:
    """Agent Pacing Service: pace proactive chat invitations for agent groups.

    Settings come from PACING_* environment variables (see the README). Start a local stack
    with `pacing up`, then look at it with `pacing status`, `pacing cycles` and `pacing
    exporter`; manage targets with `pacing targets`. `pacing COMMAND --help` explains each
    command with an example.

    \b
    Example:
      pacing db upgrade && pacing targets import groups.csv && pacing up
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
@click.option("--metrics-port", default=9808, show_default=True, type=int)
@click.option(
    "--workdir",
    default="var",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where logs and the Redis data of the stack go.",
)
def up(targets: int, nodes: int, flower_port: int, metrics_port: int, workdir: Path) -> None:
    """Start a complete local stack against the built-in simulator; Ctrl-C stops it all.

    \b
    Example:
      pacing up --targets 1000 --nodes 2
    """
    from pacing.cli.localstack import start_local_stack  # noqa: PLC0415
    from pacing.cluster.keys import Keys  # noqa: PLC0415
    from pacing.cluster.status import cluster_status  # noqa: PLC0415
    from pacing.services import redis_client  # noqa: PLC0415

    settings = _settings()
    try:
        stack = start_local_stack(
            settings,
            targets=targets,
            nodes=nodes,
            flower_port=flower_port,
            metrics_port=metrics_port,
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
@click.option(
    "--check",
    is_flag=True,
    help=f"Exit {EXIT_UNHEALTHY} unless a publish was acknowledged within "
    f"{STALE_AFTER_PERIODS} refresh periods (for health checks and scripts).",
)
def status(as_json: bool, check: bool) -> None:
    """Show the cluster: leader, epoch, last published seq and its age, cycles, overruns.

    Read from Redis, so it works from any host that reaches it.

    \b
    Examples:
      pacing status
      pacing status --json | jq .last_published_age_seconds
      pacing status --check || page-someone
    """
    import redis  # noqa: PLC0415

    from pacing.cluster.keys import Keys  # noqa: PLC0415
    from pacing.cluster.status import cluster_status  # noqa: PLC0415
    from pacing.services import redis_client  # noqa: PLC0415

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
    else:
        for key, value in state.items():
            click.echo(f"{key:28} {'-' if value is None else value}")
    if check:
        age = state["last_published_age_seconds"]
        limit = STALE_AFTER_PERIODS * settings.refresh_period_seconds
        if state["leader"] is None or age is None or age > limit:
            _fail(
                f"the cluster is not publishing: last publish "
                f"{'never' if age is None else f'{age:.1f} s ago'}, leader "
                f"{state['leader'] or 'none'} (limit {limit:g} s); "
                "see docs/operators-monitoring.md.",
                EXIT_UNHEALTHY,
            )


# --- exporter ---------------------------------------------------------------------------------


@main.command()
@click.option("--port", default=9808, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 only behind a firewall (metrics name your nodes).",
)
def exporter(port: int, address: str) -> None:
    """Serve the cluster's metrics for Prometheus at http://ADDRESS:PORT/metrics.

    One exporter per cluster is enough (it reads Redis, not the workers). Outside development
    mode it requires PACING_METRICS_BASIC_AUTH=user:password and Prometheus must send it.
    /healthz answers "ok" without authentication. Runs until Ctrl-C or SIGTERM.

    \b
    Example:
      PACING_METRICS_BASIC_AUTH=prom:secret pacing exporter --port 9808
      curl -u prom:secret http://127.0.0.1:9808/metrics
    """
    from prometheus_client import disable_created_metrics  # noqa: PLC0415

    from pacing.cluster.keys import Keys  # noqa: PLC0415
    from pacing.logs import configure_logging  # noqa: PLC0415
    from pacing.metrics import PacingCollector, serve_metrics  # noqa: PLC0415
    from pacing.services import redis_client  # noqa: PLC0415

    settings = _settings()
    auth = settings.metrics_basic_auth
    if auth is None and not settings.is_development:
        _fail(
            "PACING_METRICS_BASIC_AUTH is required outside development mode so only Prometheus "
            "reads the metrics; set it to user:password.",
            EXIT_SETTINGS,
        )
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")
    # counters' *_created series would double what Prometheus stores and nobody graphs them
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    client = redis_client(settings.effective_redis_url)
    collector = PacingCollector(
        client,
        Keys(settings.key_prefix),
        refresh_period_seconds=settings.refresh_period_seconds,
        clock=time.time,
    )
    try:
        server = serve_metrics(
            collector,
            address=address,
            port=port,
            credentials=None if auth is None else auth.get_secret_value(),
        )
    except OSError as error:
        client.close()
        _fail(f"cannot listen on {address}:{port} ({error.strerror}); choose another --port.")
    stopping = threading.Event()

    def _stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    serving = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    serving.start()
    click.echo(
        f"Serving metrics at http://{address}:{server.server_port}/metrics "
        f"({'basic auth' if auth else 'no auth: development mode'}); Ctrl-C stops.",
        err=True,
    )
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        client.close()


# --- db ---------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """History database migrations (Alembic), for PACING_DATABASE_URL.

    \b
    Example:
      PACING_DATABASE_URL=postgresql://pacing@db/pacing pacing db upgrade
    """


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the history database to the newest revision (safe to repeat).

    Run it before starting workers after every upgrade of the service.

    \b
    Example:
      pacing db upgrade
    """
    from pacing.history.migrate import current_revision, upgrade_to_head  # noqa: PLC0415

    settings = _settings()
    try:
        upgrade_to_head(settings.database_url)
    except PacingError as error:
        _fail(str(error))
    click.echo(f"History database at revision {current_revision(settings.database_url)}.")


@db.command("current")
def db_current() -> None:
    """Print the revision the history database is at ("empty" if never migrated).

    \b
    Example:
      pacing db current
    """
    from pacing.history.migrate import current_revision  # noqa: PLC0415

    settings = _settings()
    try:
        revision = current_revision(settings.database_url)
    except PacingError as error:
        _fail(str(error))
    click.echo(revision or "empty (run `pacing db upgrade`)")


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
    from pacing.history import repository  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        return repository.list_targets(engine, enabled_only=enabled_only)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()


@main.group()
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
    from pacing.history import repository  # noqa: PLC0415

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
        count = repository.upsert_targets(engine, configs)
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
    from pacing.history import repository  # noqa: PLC0415

    bad = [i for i in ids if not is_valid_target_id(i)]
    if bad:
        _fail(f"invalid target id(s): {', '.join(map(repr, bad))}.", EXIT_USAGE)
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


# --- history queries ------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_WHEN_HELP = "Duration ago (30m, 2h, 1d) or ISO time (UTC unless it has a zone)."


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


def _format_option(default: str | None = "table") -> Callable[[_F], _F]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json"]),
        default=default,
        show_default=default is not None,
        help=None if default else "Also print the rows (default with --plot: only the PNG).",
    )


def _last_option(help_text: str) -> Callable[[_F], _F]:
    return click.option(
        "--last",
        "limit",
        default=20,
        show_default=True,
        type=click.IntRange(1, 100_000),
        help=help_text,
    )


def _plot_option() -> Callable[[_F], _F]:
    return click.option(
        "--plot",
        type=click.Path(dir_okay=False, writable=True, path_type=Path),
        default=None,
        help="Write a PNG plot to this file (step plots over time).",
    )


def _window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    now = datetime.now(UTC)
    start, end = parse_when(since, now=now), parse_when(until, now=now)
    if start is not None and end is not None and start >= end:
        raise click.BadParameter(
            f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})"
        )
    return start, end


CYCLE_COLUMNS = [
    "seq",
    "epoch",
    "node",
    "started_at",
    "latency_ms",
    "recorded_ms",
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
]


@main.command()
@_last_option("How many cycles, newest first.")
@_format_option()
def cycles(limit: int, fmt: str) -> None:
    """The last N cycles: seq, epoch, leader, latency and per-stage times, counts, status.

    latency_ms runs from the beat tick to the acknowledged publish (empty if the cycle did not
    publish); recorded_ms from the beat tick to the commit of the cycle's audit rows in this
    database (its end-to-end latency; empty for cycles recorded before `recorded_at` existed);
    the stages are fetch (Stat Server), pace (the algorithm), merge (shards and payload) and
    publish (the POST). CSV and JSON also carry published_at and recorded_at.

    \b
    Example:
      pacing cycles --last 5 --format json
    """
    from pacing.history import repository  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        summaries = repository.last_cycles(engine, limit)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    rows = []
    for summary in summaries:
        row = _plain(summary)
        row["latency_ms"] = _ms_since(summary.started_at, summary.published_at)
        row["recorded_ms"] = _ms_since(summary.started_at, summary.recorded_at)
        rows.append({c: row.get(c) for c in [*CYCLE_COLUMNS, *row]})
    _emit(rows, fmt, columns=CYCLE_COLUMNS)


def _ms_since(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else round((end - start).total_seconds() * 1000, 1)


@main.command()
@click.argument("target_id")
@click.option("--since", default="1h", show_default=True, help=_WHEN_HELP)
@click.option("--until", default=None, help=f"{_WHEN_HELP} Default: now.")
@_format_option(default=None)
@_plot_option()
def history(
    target_id: str, since: str, until: str | None, fmt: str | None, plot: Path | None
) -> None:
    """One target's pacing history as a step function (a row per change), or a PNG plot.

    Each row is the decision in force from `at` until the next row: proactive budget, reactive
    state, reason, and the Stat Server inputs that led to it (agents ready and busy,
    interactions waiting). The first row is the decision already in force at --since.

    \b
    Examples:
      pacing history chat-0001 --since 30m --format csv
      pacing history chat-0001 --since 2026-11-26T08:00 --until 2026-11-26T12:00 --plot h.png
    """
    from pacing.history import repository  # noqa: PLC0415

    if not is_valid_target_id(target_id):
        raise click.BadParameter(f"{target_id!r} is not a valid target id", param_hint="TARGET_ID")
    start, end = _window(since, until)
    engine = _engine(_settings())
    try:
        points = repository.target_history(engine, target_id, since=start, until=end)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    rows = [_plain(p) for p in points]
    if plot is None or fmt is not None:
        _emit(rows, fmt or "table", columns=list(rows[0]) if rows else ["seq", "at"])
    if plot is not None:
        from pacing.plots import plot_target_history  # noqa: PLC0415 - matplotlib is slow

        try:
            plot_target_history(points, plot, target_id=target_id, until=end or datetime.now(UTC))
        except ValueError as error:
            _fail(f"{error} Widen --since/--until or check the id with `pacing targets list`.")
        except OSError as error:
            _fail(f"cannot write {plot} ({error.strerror}).")
        click.echo(f"Wrote {plot} ({len(points)} changes).", err=True)


@main.command()
@click.option("--since", default="1h", show_default=True, help=_WHEN_HELP)
@click.option("--until", default=None, help=f"{_WHEN_HELP} Default: now.")
@_format_option(default=None)
@_plot_option()
def channels(since: str, until: str | None, fmt: str | None, plot: Path | None) -> None:
    """Channel totals per cycle (summed proactive budget and ready capacity), or a PNG plot.

    \b
    Examples:
      pacing channels --since 15m
      pacing channels --since 1d --plot channels.png
    """
    from pacing.history import repository  # noqa: PLC0415

    start, end = _window(since, until)
    engine = _engine(_settings())
    try:
        points = repository.channel_totals(engine, since=start, until=end)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    rows = [_plain(p) for p in points]
    if plot is None or fmt is not None:
        _emit(
            rows,
            fmt or "table",
            columns=["seq", "at", "channel", "proactive_budget", "ready_capacity", "target_count"],
        )
    if plot is not None:
        from pacing.plots import plot_channel_totals  # noqa: PLC0415 - matplotlib is slow

        try:
            plot_channel_totals(points, plot, until=end or datetime.now(UTC))
        except ValueError as error:
            _fail(f"{error} Widen --since/--until.")
        except OSError as error:
            _fail(f"cannot write {plot} ({error.strerror}).")
        click.echo(f"Wrote {plot} ({len({p.seq for p in points})} cycles).", err=True)


@main.command()
@_last_option("How many leadership epochs, newest first.")
@_format_option()
def leaders(limit: int, fmt: str) -> None:
    """Leadership changes: which node led each epoch, from when to when, replacing whom.

    An epoch starts when a node takes a free lease (start-up, or the leader stopped renewing
    it); frequent changes mean nodes lose Redis or stall longer than the lease TTL.

    \b
    Example:
      pacing leaders --last 5
    """
    from pacing.history import repository  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        changes = repository.leadership_changes(engine, limit)
    except PacingError as error:
        _fail(str(error))
    finally:
        engine.dispose()
    _emit(
        [_plain(c) for c in changes],
        fmt,
        columns=["epoch", "node", "acquired_at", "released_at", "previous_node", "previous_epoch"],
    )


def _plain(item: Any) -> dict[str, Any]:
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


if __name__ == "__main__":  # `python -m pacing.cli`, e.g. where the script is not on PATH
    main()
