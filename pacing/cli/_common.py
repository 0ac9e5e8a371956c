"""What every ``pacing`` command shares: settings, the history engine, failing with an exit
code, rows printed as a table, CSV or JSON.

The command modules (``up``, ``observe``, ``db``, ``targets``, ``history``) import these;
:mod:`pacing.cli.group` attaches the commands to the ``pacing`` group.

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

import csv
import io
import json
import sys
from typing import Any, NoReturn

import click

from pacing.errors import ConfigurationError
from pacing.settings import Settings, load_settings

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SETTINGS = 3
EXIT_UNHEALTHY = 4


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_SETTINGS)


def _engine(settings: Settings) -> Any:
    from pacing.history import create_history_engine  # noqa: PLC0415 - keeps `pacing --help` fast

    return create_history_engine(settings.database_url)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


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
