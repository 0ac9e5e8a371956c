"""The live benchmark's stack (``benchmarks/live.py`` drives it): the processes of ``pacing up``.

:func:`start_stack` starts them on free loopback ports with the embedded default settings and
none of the caller's ``PACING_*`` environment; :class:`LiveStack` holds them with a Redis client
and stops them all; :func:`wipe_redis` restarts the redis-server with nothing kept;
:func:`target_goals` reads each target's abandonment goal from the stack's history.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from pacing.cli.localstack import LocalStack, Process, redis_answers, start_local_stack, wait_until
from pacing.cluster.keys import Keys
from pacing.domain import Objective
from pacing.history import create_history_engine, list_targets
from pacing.settings import ENV_PREFIX, Settings, load_settings
from tests.reliability.harness import free_port, live_members

WIPE_MARKER = "live-benchmark:wipe-marker"  # written before the wipe; must be gone after it


@dataclass
class LiveStack:
    """The processes of one ``pacing up``, a Redis client on its Redis and the simulator's URL."""

    stack: LocalStack
    settings: Settings
    simulator_url: str
    client: redis.Redis
    keys: Keys
    #: process groups of every process started, a restarted Redis too: checked at the end
    pgids: set[int] = field(default_factory=set)

    def process(self, name: str) -> Process:
        for process in self.stack.processes:
            if process.name == name:
                return process
        raise RuntimeError(f"The stack has no {name} process.")

    def stop(self) -> int:
        """Stop everything; returns how many processes of its groups are still alive."""
        self.client.close()
        self.stack.stop()
        return len(live_members(self.pgids))


def start_stack(workdir: Path, args: argparse.Namespace, echo: Callable[[str], None]) -> LiveStack:
    """``pacing up``'s processes on free loopback ports, on default settings otherwise."""
    simulator = f"http://127.0.0.1:{free_port()}"
    values = {
        "environment": "development",
        "broker_url": f"redis://127.0.0.1:{free_port()}/0",  # nothing there: it starts one
        "database_url": f"sqlite:///{workdir / 'history.db'}",
        "stat_server_primary_url": f"{simulator}/statserver/primary",
        "stat_server_backup_url": f"{simulator}/statserver/backup",
        "engagement_url": f"{simulator}/engagement",
    }
    # The processes inherit this environment: exactly these settings, none of the caller's.
    for name in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
        del os.environ[name]
    os.environ.update({f"{ENV_PREFIX}{name.upper()}": value for name, value in values.items()})
    settings = load_settings()
    stack = start_local_stack(
        settings,
        targets=args.targets,
        nodes=args.nodes,
        flower_port=free_port(),
        metrics_port=free_port(),
        workdir=workdir,
        echo=echo,
        seed=args.seed,
    )
    live = LiveStack(
        stack=stack,
        settings=settings,
        simulator_url=simulator,
        client=redis.Redis.from_url(settings.broker_url, socket_timeout=10),
        keys=Keys(settings.key_prefix),
        pgids={process.popen.pid for process in stack.processes},
    )
    try:
        live.process("redis")  # not some other Redis that took the free port meanwhile
    except RuntimeError:
        live.stop()
        raise
    return live


def target_goals(settings: Settings) -> dict[str, float]:
    """Each enabled target's abandonment goal as a fraction, from the history's configuration."""
    engine = create_history_engine(settings.database_url)
    try:
        configs = list_targets(engine, enabled_only=True)
    finally:
        engine.dispose()
    others = [c.target_id for c in configs if c.objective is not Objective.ABANDONMENT_RATE]
    if others:
        raise RuntimeError(f"{len(others)} targets have no abandonment goal, e.g. {others[0]}.")
    return {config.target_id: config.goal_percent / 100 for config in configs}


def wipe_redis(live: LiveStack) -> dict[str, Any]:
    """Restart the stack's redis-server with nothing kept: every key is gone afterwards."""
    process = live.process("redis")
    keys_before = int(cast(int, live.client.dbsize()))
    live.client.set(WIPE_MARKER, "1")
    argv = [str(arg) for arg in cast(Sequence[Any], process.popen.args)]
    stopped_at = time.time()
    live.stack.stop_process(process)
    # started with --save "" and --appendonly no, Redis writes nothing; anything found is
    # removed (so the restart is empty whatever happened) and reported
    data_dir = live.stack.workdir / "redis"
    leftovers = sorted(path.name for path in data_dir.iterdir())
    for name in leftovers:
        (data_dir / name).unlink()
    restarted = live.stack.spawn("redis", argv, os.environ)
    live.pgids.add(restarted.popen.pid)
    wait_until(
        lambda: redis_answers(live.settings.broker_url), timeout=30, what="Redis after the wipe"
    )
    answered_at = time.time()
    live.client.connection_pool.disconnect()  # the old server's connections are dead
    return {
        "stopped_at": stopped_at,
        "answered_at": answered_at,
        "down_seconds": round(answered_at - stopped_at, 3),
        "keys_before": keys_before,
        "keys_right_after": int(cast(int, live.client.dbsize())),
        "marker_survived": bool(live.client.exists(WIPE_MARKER)),
        "files_left_in_data_dir": leftovers,
        "pid_before": process.popen.pid,
        "pid_after": restarted.popen.pid,
    }
