"""The history queries: ``pacing cycles``, ``history``, ``channels`` and ``leaders``.

They read the audit rows the cycles wrote to the history database (through
:mod:`pacing.history.reading`) and print them as a table, CSV or JSON, or plot them as a
PNG; ``--since``/``--until`` take a duration ago or an ISO time (:func:`parse_when`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from pacing.cli._common import _emit, _engine, _fail, _settings
from pacing.domain import is_valid_target_id
from pacing.errors import PacingError

_F = TypeVar("_F", bound=Callable[..., Any])

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


@click.command()
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
    from pacing.history import last_cycles  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        summaries = last_cycles(engine, limit)
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


@click.command()
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
    from pacing.history import target_history  # noqa: PLC0415

    if not is_valid_target_id(target_id):
        raise click.BadParameter(f"{target_id!r} is not a valid target id", param_hint="TARGET_ID")
    start, end = _window(since, until)
    engine = _engine(_settings())
    try:
        points = target_history(engine, target_id, since=start, until=end)
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


@click.command()
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
    from pacing.history import channel_totals  # noqa: PLC0415

    start, end = _window(since, until)
    engine = _engine(_settings())
    try:
        points = channel_totals(engine, since=start, until=end)
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


@click.command()
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
    from pacing.history import leadership_changes  # noqa: PLC0415

    engine = _engine(_settings())
    try:
        changes = leadership_changes(engine, limit)
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
