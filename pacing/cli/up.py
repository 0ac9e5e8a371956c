"""``pacing up`` and ``pacing simulate``: a local stack against the built-in simulator, or the
simulator alone.

``up`` starts the processes of :mod:`pacing.cli.localstack` and prints the cluster's status
every 10 seconds until Ctrl-C or SIGTERM stops them all. ``up --ha`` first starts a
Sentinel-managed Redis (:class:`pacing.cli.redis_ha.SentinelSet`) for the stack, shows each
member's role, port and pid, and says when the Sentinels name a new master.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import redis

from pacing.cli._common import _fail, _settings
from pacing.errors import ConfigurationError, PacingError
from pacing.settings import Settings

if TYPE_CHECKING:
    from pacing.cli.redis_ha import SentinelSet

HA_BASE_PORT = 6380  # master 6380, replica 6381, Sentinels 26380-26382
HA_SENTINEL_OFFSET = 20000


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
@click.option(
    "--ha",
    is_flag=True,
    help="Redis with Sentinel instead of one Redis: a master, a replica and three Sentinels "
    "of the stack's own, which fail over within seconds.",
)
@click.option(
    "--ha-base-port",
    default=HA_BASE_PORT,
    show_default=True,
    type=click.IntRange(1024, 65535 - HA_SENTINEL_OFFSET - 2),
    help=f"With --ha: the master's port; the replica takes the next one, the Sentinels the "
    f"three {HA_SENTINEL_OFFSET} above.",
)
def up(
    *,
    targets: int,
    nodes: int,
    flower_port: int,
    metrics_port: int,
    workdir: Path,
    ha: bool,
    ha_base_port: int,
) -> None:
    """Start a complete local stack against the built-in simulator; Ctrl-C stops it all.

    \b
    Examples:
      pacing up --targets 1000 --nodes 2
      pacing up --ha      # Redis master, replica and three Sentinels; kill -9 the master
    """
    from pacing.cli.localstack import start_local_stack  # noqa: PLC0415
    from pacing.cluster.connection import redis_client  # noqa: PLC0415
    from pacing.cluster.keys import Keys  # noqa: PLC0415
    from pacing.cluster.status import cluster_status  # noqa: PLC0415

    settings = _settings()
    try:
        redis_ha = start_redis_ha(settings, workdir.resolve(), ha_base_port) if ha else None
        stack = start_local_stack(
            settings,
            targets=targets,
            nodes=nodes,
            flower_port=flower_port,
            metrics_port=metrics_port,
            workdir=workdir.resolve(),
            echo=click.echo,
            redis_ha=redis_ha,
        )
    except (PacingError, RuntimeError) as error:
        _fail(str(error))
    settings = stack.settings  # with --ha: the Sentinels'
    master = redis_ha.master() if redis_ha else None
    click.echo("Pacing is starting; status every 10 s below. Ctrl-C stops everything.")
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    # also for SIGINT: a shell starts background jobs with SIGINT ignored, and Ctrl-C must work
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    client = redis_client(settings)
    try:
        while not stopping:
            time.sleep(1)
            dead = stack.dead()
            if dead:
                names = ", ".join(p.name for p in dead)
                click.echo(f"Stopped unexpectedly: {names}; see {dead[0].log_path}", err=True)
                break
            if redis_ha is not None:
                master = _report_failover(redis_ha, master)
            if int(time.time()) % 10 == 0:
                try:
                    status = cluster_status(client, Keys(settings.key_prefix), now=time.time())
                except redis.RedisError as error:  # e.g. while the Sentinels fail over
                    click.echo(f"status unavailable: {error}")
                    continue
                age = status["last_published_age_seconds"]
                click.echo(
                    f"leader={status['leader'] or '-'} epoch={status['epoch'] or '-'} "
                    f"published_seq={status['last_published_seq'] or '-'} "
                    f"age={'-' if age is None else f'{age:.1f}s'} targets={status['targets']} "
                    f"overruns={status['overruns']}"
                    + (f" redis_master={master[0]}:{master[1]}" if master else "")
                )
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("Stopping the stack…")
        client.close()
        stack.stop()
        click.echo("Stopped.")


def start_redis_ha(settings: Settings, workdir: Path, base_port: int) -> SentinelSet:
    """The Redis of ``pacing up --ha``: a master on ``base_port``, its replica on the next port,
    three Sentinels 20000 above, with the configured Redis and Sentinel passwords; banner shown."""
    from pacing.cli.localstack import port_is_free  # noqa: PLC0415
    from pacing.cli.redis_ha import SentinelSet  # noqa: PLC0415

    if settings.redis_tls:
        raise ConfigurationError(
            "`pacing up --ha` starts its Redis servers and Sentinels without TLS; unset "
            "PACING_REDIS_TLS."
        )
    sentinel_ports = [base_port + HA_SENTINEL_OFFSET + index for index in range(3)]
    ports = [base_port, base_port + 1, *sentinel_ports]
    taken = [str(port) for port in ports if not port_is_free("127.0.0.1", port)]
    if taken:
        raise ConfigurationError(
            f"Port {', '.join(taken)} for `pacing up --ha` is taken; stop what uses it, or pass "
            f"--ha-base-port N: the master listens on N, the replica on N+1, the Sentinels on "
            f"N+{HA_SENTINEL_OFFSET} to N+{HA_SENTINEL_OFFSET + 2}."
        )
    password, sentinel_password = settings.redis_password, settings.redis_sentinel_password
    servers = SentinelSet.start(
        workdir / "redis-ha",
        master_port=base_port,
        replica_port=base_port + 1,
        sentinel_ports=sentinel_ports,
        master_name=settings.redis_master_name,
        password=password.get_secret_value() if password else None,
        sentinel_password=sentinel_password.get_secret_value() if sentinel_password else None,
    )
    for line in ha_banner(servers):
        click.echo(line)
    return servers


def ha_banner(servers: SentinelSet) -> list[str]:
    """Each Redis role, port and pid (master first), and how another shell finds the master."""
    order = {"master": 0, "replica": 1, "sentinel": 2}
    members = sorted(servers.members(), key=lambda m: (order.get(m.role, 3), m.port))
    lines = []
    for index, member in enumerate(members):
        title, address = "Redis HA" if index == 0 else "", f"127.0.0.1:{member.port}"
        line = f"{title:<13}{member.role:<8} {address:<15} pid {member.pid}"
        if member.role == "sentinel":
            down_after = servers.timings.down_after_milliseconds
            line += f' (monitors "{servers.master_name}", quorum 2, down-after {down_after} ms)'
        lines.append(line)
    lines.append(
        f"{'':<13}another shell finds the master with: export "
        f"PACING_REDIS_SENTINELS={servers.sentinels_setting()} "
        f"PACING_REDIS_MASTER_NAME={servers.master_name}"
    )
    return lines


def _report_failover(
    servers: SentinelSet, master: tuple[str, int] | None
) -> tuple[str, int] | None:
    """Say when a majority of the Sentinels name a new master; the master they name now."""
    now = servers.master()
    if now is not None and now != master:
        pid = next((m.pid for m in servers.members() if m.port == now[1]), None)
        was = f"{master[0]}:{master[1]}" if master else "-"
        click.echo(f"Redis master is now {now[0]}:{now[1]} (pid {pid}; was {was})")
    return now or master


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
