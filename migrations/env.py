"""Alembic environment of the pacing history database.

Metadata comes from ``pacing.history.models``; the URL comes from the package, never from
``alembic.ini``. In order: the attribute ``pacing.history.migrate`` sets, ``-x url=...`` on the
command line, ``PACING_DATABASE_URL`` (only when alembic is run from a shell), and finally the
embedded default ``sqlite:///var/pacing-history.db``.
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext

from pacing.history import create_history_engine, safe_url
from pacing.history.migrate import URL_ATTRIBUTE
from pacing.history.models import UTCDateTime, metadata

DEFAULT_URL = "sqlite:///var/pacing-history.db"

config = context.config
# Only the `alembic` command line has an ini file; a programmatic run keeps the app's logging.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

logger = logging.getLogger("alembic.env")
target_metadata = metadata


def database_url() -> str:
    """The URL to migrate, from the most explicit source available."""
    url = config.attributes.get(URL_ATTRIBUTE)
    if url:
        return str(url)
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return str(url)
    return os.environ.get("PACING_DATABASE_URL") or DEFAULT_URL


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render ``UTCDateTime`` as the plain type it stores, so revisions never import the app."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) without a connection."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        render_item=render_item,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate the database through the same engine factory the service uses."""
    engine = create_history_engine(database_url())
    logger.info("migrating %s", safe_url(engine.url))
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch mode re-creates a table and drops the old one; with foreign keys on,
                # dropping `cycles` would cascade-delete every decision. The pragma is a no-op
                # inside a transaction, so it goes to the driver before SQLAlchemy's BEGIN.
                connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA foreign_keys=OFF"
                )
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                compare_type=True,
                render_item=render_item,
                # SQLite cannot ALTER most things; batch mode copies the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
