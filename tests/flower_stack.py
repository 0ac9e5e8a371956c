"""A pacing node and Flower as real processes, for the Flower API and browser tests.

One ``celery worker`` and one ``celery beat`` (a node), and ``celery -A tasks flower`` started
the way an operator starts it, in a directory of its own (no ``flowerconfig.py`` there), with its
basic auth taken from PACING_FLOWER_BASIC_AUTH only. Each stack has its own Redis database,
simulator and SQLite history in ``tmp_path``; :class:`~pacing.cli.localstack.LocalStack` stops every
process, process groups included, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from pacing.cli.localstack import LocalStack, import_simulator_targets
from pacing.history.migrate import upgrade_to_head
from pacing.settings import load_settings
from pacing.simulator import SimulatorConfig, start_simulator
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import free_port, leased_redis_db, redis_url, wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE = "node-flower"
FLOWER_USER = "operator"
FLOWER_PASSWORD = "flower-test-password"
SIMULATOR_TOKEN = "sim-token"
#: The four tasks of every cycle, as Flower lists them.
CYCLE_TASKS = ("pacing.refresh", "pacing.pace_shard", "pacing.publish_cycle", "pacing.record_cycle")


@dataclass
class FlowerStack:
    stack: LocalStack
    base_url: str
    auth: tuple[str, str]

    def tasks(self, **params: Any) -> dict[str, dict[str, Any]]:
        """Flower's ``/api/tasks`` with the stack's credentials."""
        response = requests.get(
            f"{self.base_url}/api/tasks",
            params=params,
            auth=self.auth,
            timeout=LOOPBACK_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        return dict(response.json())

    def succeeded_names(self) -> set[str]:
        return {task["name"] for task in self.tasks(state="SUCCESS").values()}

    def wait_for_cycle_tasks(self, *, timeout: float = 120) -> None:
        """Until Flower lists every task of a cycle with state SUCCESS."""

        def all_succeeded() -> bool:
            self.fail_if_a_process_died()
            return set(CYCLE_TASKS) <= self.succeeded_names()

        wait_for(
            all_succeeded,
            timeout=timeout,
            interval=0.5,
            message=f"Flower did not list {', '.join(CYCLE_TASKS)} with state SUCCESS",
        )

    def fail_if_a_process_died(self) -> None:
        dead = self.stack.dead()
        if dead:
            logs = "\n".join(f"--- {p.name}\n{p.log_path.read_text()[-3000:]}" for p in dead)
            raise AssertionError(f"a process of the stack exited:\n{logs}")


@contextlib.contextmanager
def running_flower_stack(tmp_path: Path) -> Iterator[FlowerStack]:
    """Start the simulator, a node (worker + beat) and Flower; stop them all afterwards."""
    with (
        leased_redis_db() as db,
        start_simulator(SimulatorConfig(targets=60, seed=3, port=0)) as simulator,
    ):
        values = {
            "environment": "development",
            "node_name": NODE,
            "broker_url": redis_url(db),
            "key_prefix": f"pacing-flower-{db}",
            "database_url": f"sqlite:///{tmp_path / 'history.db'}",
            "stat_server_primary_url": simulator.stat_server_primary_url,
            "stat_server_backup_url": simulator.stat_server_backup_url,
            "engagement_url": simulator.engagement_url,
            "engagement_token": SIMULATOR_TOKEN,
            "refresh_period_seconds": "1.0",
            "shard_size": "25",  # 60 targets: three shards per cycle
            "flower_basic_auth": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        }
        settings = load_settings(values)
        upgrade_to_head(settings.database_url)
        import_simulator_targets(settings, simulator.base_url)
        # Flower's own variables would take precedence over the service's setting under test
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        env = {
            **inherited,
            **{f"PACING_{name.upper()}": value for name, value in values.items()},
            "PYTHONUNBUFFERED": "1",
        }
        stack = LocalStack(settings=settings, workdir=tmp_path)
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        port = free_port()
        try:
            _spawn_node_and_flower(stack, celery, env, port=port, beat_schedule=tmp_path / "beat")
            running = FlowerStack(
                stack=stack,
                base_url=f"http://127.0.0.1:{port}",
                auth=(FLOWER_USER, FLOWER_PASSWORD),
            )
            wait_for(
                lambda: _answers(f"{running.base_url}/healthcheck"),
                timeout=60,
                interval=0.3,
                message="Flower did not answer on /healthcheck",
            )
            yield running
        finally:
            stack.stop()


def _spawn_node_and_flower(
    stack: LocalStack, celery: list[str], env: dict[str, str], *, port: int, beat_schedule: Path
) -> None:
    # any directory without a flowerconfig.py: the service's config must not depend on it
    with contextlib.chdir(stack.workdir):
        stack.spawn(
            "worker",
            [
                *celery,
                "worker",
                "-n",
                f"{NODE}@%h",
                "--concurrency=2",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
        )
        stack.spawn("beat", [*celery, "beat", "--loglevel=INFO", "-s", str(beat_schedule)], env)
        stack.spawn("flower", [*celery, "flower", "--address=127.0.0.1", f"--port={port}"], env)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False
