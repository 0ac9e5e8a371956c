"""``pacing up`` and ``pacing simulate``: a local stack against the built-in simulator, or the
simulator alone.

``up`` starts the processes of :mod:`pacing.cli.localstack` and prints the cluster's status
every 10 seconds until Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import click

from pacing.cli._common import _fail, _settings
from pacing.errors import PacingError


@click.command()
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


@click.command()
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
