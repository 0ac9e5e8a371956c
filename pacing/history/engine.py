"""The history database engine and its error handling, shared by every other module here.

:func:`create_history_engine` sets up SQLite or PostgreSQL; :func:`translate_errors` wraps each
repository function (:mod:`~pacing.history.writing`, :mod:`~pacing.history.reading`,
:mod:`~pacing.history.targets`, :mod:`~pacing.history.maintenance`) so that connection and
operational failures surface as :class:`pacing.errors.HistoryUnavailable` (a transient error)
with a message that names the database without its password; constraint violations and bad
arguments are bugs and are raised as they are (``ValueError`` for arguments, SQLAlchemy's
``IntegrityError`` for the database).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import quote, quote_plus

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from pacing.errors import HistoryUnavailable

__all__ = [
    "IN_LIST_CHUNK",
    "chunks",
    "create_history_engine",
    "dialect_insert",
    "is_unavailable_error",
    "safe_url",
    "translate_errors",
    "unavailable",
]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

#: Seconds a SQLite writer waits for another writer's lock before giving up (beat, workers and
#: the CLI may share one file).
SQLITE_BUSY_TIMEOUT_SECONDS: Final = 30
#: Short enough that a dead PostgreSQL fails a task well inside its retry budget.
POSTGRES_CONNECT_TIMEOUT_SECONDS: Final = 5
#: Keeps ``IN (...)`` lists well under SQLite's 32,766 bound-parameter limit.
IN_LIST_CHUNK: Final = 1000


def safe_url(url: str | URL) -> str:
    """The URL as it may be shown in logs and messages: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparseable database URL>"


def create_history_engine(url: str) -> Engine:
    """Create the engine for the history database at ``url``.

    SQLite (the embedded default) gets WAL, foreign keys, a busy timeout and real transactions
    (``BEGIN`` on every transaction, which Python's sqlite3 module otherwise leaves out for
    reads); its folder is created. PostgreSQL URLs without a driver use psycopg 3, and the pool
    checks connections before use so a database restart costs one failed ping, not a failed
    task. Call it after the worker forks, never at import time.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _create_sqlite_engine(parsed)
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(
            parsed,
            pool_pre_ping=True,
            # one writer task per worker process plus the occasional read; overflow covers bursts
            pool_size=5,
            max_overflow=5,
            pool_timeout=10,
            # recycle before typical server/firewall idle limits drop the socket
            pool_recycle=1800,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS},
        )
    else:
        raise ValueError(
            f"The history database URL {safe_url(parsed)} uses {backend!r}; use a sqlite:/// "
            "or postgresql:// URL (setting PACING_DATABASE_URL)."
        )
    logger.info(
        "history engine created", extra={"database_url": safe_url(engine.url), "backend": backend}
    )
    return engine


def _create_sqlite_engine(parsed: URL) -> Engine:
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Hand transaction control to SQLAlchemy (the "begin" hook below), as the SQLAlchemy
        # pysqlite documentation recommends; the pragmas must run outside a transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000:d}")
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def is_unavailable_error(exc: BaseException) -> bool:
    """True for failures that mean "the database is not reachable now" (worth a retry)."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def unavailable(url: str | URL, exc: BaseException) -> HistoryUnavailable:
    """A :class:`HistoryUnavailable` for ``exc`` whose message never contains the password."""
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    try:
        password = make_url(url).password
    except sa_exc.ArgumentError:
        password = None
    if password:
        # the driver's message may echo the connection string; never let the secret through
        for secret in {str(password), quote(str(password), safe=""), quote_plus(str(password))}:
            detail = detail.replace(secret, "***")
    return HistoryUnavailable(
        f"The history database at {safe_url(url)} is unavailable "
        f"({type(cause).__name__}: {detail}). Check that the database server is running and "
        "reachable and that PACING_DATABASE_URL is right; writes are retried by their task."
    )


def translate_errors(
    function: Callable[Concatenate[Engine, _P], _R],
) -> Callable[Concatenate[Engine, _P], _R]:
    """Turn connection and operational failures into :class:`HistoryUnavailable`."""

    @functools.wraps(function)
    def wrapper(engine: Engine, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(engine, *args, **kwargs)
        except sa_exc.SQLAlchemyError as exc:
            if is_unavailable_error(exc):
                raise unavailable(engine.url, exc) from exc
            raise

    return wrapper


def dialect_insert(connection: Connection, table: Any) -> Any:
    """``INSERT`` with the dialect's ``ON CONFLICT`` support (both dialects spell it the same)."""
    name = connection.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"The history database does not support the {name!r} dialect.")


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """``items`` in consecutive slices of at most ``size`` (for ``IN (...)`` lists)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
