"""Fixtures of the whole suite.

Every test run leases its own Redis database (see tests/support.py) and uses its own key prefix,
SQLite file and, for PostgreSQL tests, its own throwaway database, so runs never collide. The
settings of the in-process stack are put into the environment before ``tasks`` is imported,
because the service reads its settings once, at start-up, like in production.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK_NODE_SETTINGS, free_port, leased_redis_db, redis_url

_run = contextlib.ExitStack()
RUN_ID = uuid.uuid4().hex[:8]
SIMULATOR_PORT = 0
RUN_DIR = Path()


def pytest_configure(config: pytest.Config) -> None:
    global SIMULATOR_PORT, RUN_DIR  # noqa: PLW0603 - values fixed for the whole run
    RUN_DIR = Path(_run.enter_context(tempfile.TemporaryDirectory(prefix=f"pacing-{RUN_ID}-")))
    db = _run.enter_context(leased_redis_db())
    SIMULATOR_PORT = free_port()
    sim = f"http://127.0.0.1:{SIMULATOR_PORT}"
    os.environ.update(
        {
            "PACING_ENVIRONMENT": "development",
            "PACING_NODE_NAME": "test-node",
            "PACING_BROKER_URL": redis_url(db),
            "PACING_KEY_PREFIX": f"pacing-test-{RUN_ID}",
            "PACING_DATABASE_URL": f"sqlite:///{RUN_DIR / 'history.db'}",
            "PACING_STAT_SERVER_PRIMARY_URL": f"{sim}/statserver/primary",
            "PACING_STAT_SERVER_BACKUP_URL": f"{sim}/statserver/backup",
            "PACING_ENGAGEMENT_URL": f"{sim}/engagement",
            "PACING_ENGAGEMENT_TOKEN": "sim-token",
            # Cycles run on demand (no beat). A long period gives long deadlines and a read
            # timeout of 0.6 × period (15 s), far above any scheduling delay; the connect timeout
            # stays at its default, as the kernel completes a loopback handshake by itself. (Only
            # the period: the environment also reaches the settings other stacks load.)
            "PACING_REFRESH_PERIOD_SECONDS": str(LOOPBACK_NODE_SETTINGS["refresh_period_seconds"]),
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    _run.close()


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    """The built-in simulator on loopback, 40 targets, for the in-process stack."""
    from pacing.simulator import SimulatorConfig, start_simulator

    running = start_simulator(SimulatorConfig(targets=40, seed=11, port=SIMULATOR_PORT))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def stack_settings() -> Any:
    from pacing.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def history_ready(stack_settings: Any, simulator: Any) -> str:
    """The run's SQLite history, migrated, holding the simulator's targets."""
    from pacing.cli.localstack import import_simulator_targets
    from pacing.history.migrate import upgrade_to_head

    upgrade_to_head(stack_settings.database_url)
    import_simulator_targets(stack_settings, simulator.base_url)
    return str(stack_settings.database_url)


# --- a real Celery worker (threads pool) in this process, on the run's Redis database -----------


@pytest.fixture(scope="session")
def celery_session_app() -> Any:
    from tasks import app

    return app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    return {"concurrency": 4, "perform_ping_check": False}
