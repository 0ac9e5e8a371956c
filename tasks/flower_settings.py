"""Flower's options, derived from the service's settings.

How ``celery -A tasks flower`` gets them, from any working directory:

1. The ``celery`` command imports its plugins, Flower among them, before it loads the app; when
   ``tasks`` is then imported, :func:`use_service_flower_config` makes ``tasks/flowerconfig.py``
   the default of Flower's ``--conf`` (unless the working directory has a ``flowerconfig.py``
   of its own, which Flower reads as usual).
2. Flower reads its ``FLOWER_*`` variables and the command line, then executes the config file,
   then reads the command line again. Every global of the config file named like a Flower
   option sets that option; the file takes them from :func:`flower_options`.

The rules:

* basic auth is ``PACING_FLOWER_BASIC_AUTH`` unless ``--basic-auth`` or ``FLOWER_BASIC_AUTH`` was
  given, which win (``pacing up`` passes a generated password that way);
* outside development mode Flower refuses to start without credentials (basic auth or Flower's
  OAuth ``--auth``);
* the tasks page shows each task's short argument summary (the ``argsrepr`` that
  :mod:`tasks.cycle` sets: seq, epoch, shard, target count; never payloads) next to its name,
  state and runtime.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from pacing.errors import ConfigurationError
from pacing.settings import Settings

logger = logging.getLogger(__name__)

#: The config file ``celery -A tasks flower`` executes (see the module docstring).
CONFIG_FILE: Final = Path(__file__).with_name("flowerconfig.py")
#: Flower's own default of ``tasks_columns``; any other value was chosen by the operator.
FLOWER_DEFAULT_TASKS_COLUMNS = "name,uuid,state,received,runtime,worker"
#: The tasks page: what ran, how it ended, on which cycle and shard, how long it took, where.
TASKS_COLUMNS = "name,state,args,kwargs,runtime,received,worker,retries,uuid"
#: Tasks Flower keeps in memory. A cycle is 3 + shard-count tasks, so this is minutes to an hour
#: of cycles; far more only makes the tasks page slow (Flower's default is 100,000).
MAX_TASKS = 20_000
#: `docker compose up --scale worker=N` gives every new worker a new name; forget offline
#: workers after this many seconds instead of listing them forever.
PURGE_OFFLINE_WORKERS_SECONDS = 600


class GivenOptions(Protocol):
    """The Flower options as read so far (``tornado.options.options`` when Flower runs)."""

    basic_auth: Sequence[str] | None
    auth: str
    tasks_columns: str


def flower_options(settings: Settings, given: GivenOptions) -> dict[str, Any]:
    """The Flower options to set, as ``{option name: value}``.

    Raises :class:`~pacing.errors.ConfigurationError` outside development mode when neither the
    settings nor the options ``given`` hold credentials.
    """
    options: dict[str, Any] = {
        "max_tasks": MAX_TASKS,
        "purge_offline_workers": PURGE_OFFLINE_WORKERS_SECONDS,
    }
    if given.tasks_columns == FLOWER_DEFAULT_TASKS_COLUMNS:
        options["tasks_columns"] = TASKS_COLUMNS
    if given.basic_auth or given.auth:
        return options
    if settings.flower_basic_auth is not None:
        # Flower's own format: several user:password pairs separated by commas
        credentials = settings.flower_basic_auth.get_secret_value().split(",")
        options["basic_auth"] = [pair.strip() for pair in credentials if pair.strip()]
        return options
    if not settings.is_development:
        raise ConfigurationError(
            "Flower needs credentials outside development mode; set "
            "PACING_FLOWER_BASIC_AUTH=user:password (or pass --basic-auth to Flower)."
        )
    logger.warning(
        "Flower runs without authentication (development mode); set PACING_FLOWER_BASIC_AUTH "
        "to protect it, and note that its HTTP API answers 401 without credentials"
    )
    return options


def options_or_exit(given: GivenOptions) -> dict[str, Any]:
    """:func:`flower_options` for the app's settings; exit with the refusal as one line."""
    from tasks.services import settings  # noqa: PLC0415 - read once `celery -A tasks` loaded

    try:
        return flower_options(settings, given)
    except ConfigurationError as error:
        raise SystemExit(f"Error: {error}") from None


def use_service_flower_config() -> None:
    """Make :data:`CONFIG_FILE` the default config file of a Flower started by ``celery``.

    Does nothing unless Flower's options are loaded (the ``celery`` command line loads them for
    every subcommand; for the others they are never read), when ``--conf`` already points
    elsewhere, or when the working directory holds a ``flowerconfig.py`` of the operator's.
    ``--conf`` and ``FLOWER_CONF`` are read after this and still win.
    """
    flower_defaults = sys.modules.get("flower.options")
    if flower_defaults is None:
        return
    options = flower_defaults.options
    default_file = flower_defaults.DEFAULT_CONFIG_FILE
    if options.conf == default_file and not Path(default_file).is_file():
        options.conf = str(CONFIG_FILE)
