"""``pacing status`` and ``pacing exporter``: look at a running cluster through Redis.

``status`` prints the cluster's state once (or checks it for scripts, exit 4); ``exporter``
serves it to Prometheus until stopped.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import click

from pacing.cli._common import EXIT_SETTINGS, EXIT_UNHEALTHY, _fail, _settings

#: A publish older than this many refresh periods means the cluster is not pacing
#: (the same threshold as the PacingNotPublishing alert in docs/operators-monitoring.md).
STALE_AFTER_PERIODS = 3


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--check",
    is_flag=True,
    help=f"Exit {EXIT_UNHEALTHY} unless a publish was acknowledged within "
    f"{STALE_AFTER_PERIODS} refresh periods (for health checks and scripts).",
)
def status(as_json: bool, check: bool) -> None:
    """Show the cluster: leader, epoch, last published seq and its age, cycles, overruns, and
    where Redis is (with Sentinels: the master they name, its replicas, who answers).

    Read from Redis, so it works from any host that reaches it.

    \b
    Examples:
      pacing status
      pacing status --json | jq .last_published_age_seconds
      pacing status --check || page-someone
    """
    import redis  # noqa: PLC0415

    from pacing.cluster.connection import (  # noqa: PLC0415
        redis_client,
        redis_topology,
        topology_line,
    )
    from pacing.cluster.keys import Keys  # noqa: PLC0415
    from pacing.cluster.status import cluster_status  # noqa: PLC0415

    settings = _settings()
    client = redis_client(settings)
    try:
        state = cluster_status(client, Keys(settings.key_prefix), now=time.time())
    except redis.exceptions.RedisError as error:
        where = ""
        if settings.uses_sentinels:  # during a failover: what the Sentinels say
            where = f" (redis: {topology_line(redis_topology(settings))})"
        _fail(f"Redis did not answer ({type(error).__name__}){where}; is the stack running?")
    finally:
        client.close()
    state["redis"] = redis_topology(settings)
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        for key, value in state.items():
            shown = topology_line(value) if key == "redis" else value
            click.echo(f"{key:28} {'-' if shown is None else shown}")
    if check:
        age = state["last_published_age_seconds"]
        limit = STALE_AFTER_PERIODS * settings.refresh_period_seconds
        if state["leader"] is None or age is None or age > limit:
            _fail(
                f"the cluster is not publishing: last publish "
                f"{'never' if age is None else f'{age:.1f} s ago'}, leader "
                f"{state['leader'] or 'none'} (limit {limit:g} s); "
                "see docs/operators-monitoring.md.",
                EXIT_UNHEALTHY,
            )


@click.command()
@click.option("--port", default=9808, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 only behind a firewall (metrics name your nodes).",
)
def exporter(port: int, address: str) -> None:
    """Serve the cluster's metrics for Prometheus at http://ADDRESS:PORT/metrics.

    One exporter per cluster is enough (it reads Redis, not the workers). Outside development
    mode it requires PACING_METRICS_BASIC_AUTH=user:password and Prometheus must send it.
    /healthz answers "ok" without authentication. Runs until Ctrl-C or SIGTERM.

    \b
    Example:
      PACING_METRICS_BASIC_AUTH=prom:secret pacing exporter --port 9808
      curl -u prom:secret http://127.0.0.1:9808/metrics
    """
    from prometheus_client import disable_created_metrics  # noqa: PLC0415

    from pacing.cluster.connection import redis_client  # noqa: PLC0415
    from pacing.cluster.keys import Keys  # noqa: PLC0415
    from pacing.logs import configure_logging  # noqa: PLC0415
    from pacing.metrics import PacingCollector, serve_metrics  # noqa: PLC0415

    settings = _settings()
    auth = settings.metrics_basic_auth
    if auth is None and not settings.is_development:
        _fail(
            "PACING_METRICS_BASIC_AUTH is required outside development mode so only Prometheus "
            "reads the metrics; set it to user:password.",
            EXIT_SETTINGS,
        )
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")
    # counters' *_created series would double what Prometheus stores and nobody graphs them
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    client = redis_client(settings)
    collector = PacingCollector(
        client,
        Keys(settings.key_prefix),
        refresh_period_seconds=settings.refresh_period_seconds,
        clock=time.time,
    )
    try:
        server = serve_metrics(
            collector,
            address=address,
            port=port,
            credentials=None if auth is None else auth.get_secret_value(),
        )
    except OSError as error:
        client.close()
        _fail(f"cannot listen on {address}:{port} ({error.strerror}); choose another --port.")
    stopping = threading.Event()

    def _stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    serving = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    serving.start()
    click.echo(
        f"Serving metrics at http://{address}:{server.server_port}/metrics "
        f"({'basic auth' if auth else 'no auth: development mode'}); Ctrl-C stops.",
        err=True,
    )
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        client.close()
