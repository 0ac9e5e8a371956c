"""``pacing db``: the history database's migrations (Alembic), run before starting workers."""

from __future__ import annotations

import click

from pacing.cli._common import _fail, _settings
from pacing.errors import PacingError


@click.group()
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
