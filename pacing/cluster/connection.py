"""How every process reaches Redis: at one URL, or at the master a set of Sentinels names.

The settings choose the mode (README, "Redis Sentinel"):

* **plain** (the default): the broker at ``PACING_BROKER_URL``, the chord results at
  ``PACING_RESULT_BACKEND`` and the lease, seq and state at ``PACING_REDIS_URL`` (both default to
  the broker's URL);
* **Sentinel** (``PACING_REDIS_SENTINELS`` set): all three at the master the Sentinels name for
  ``PACING_REDIS_MASTER_NAME``, in database ``PACING_REDIS_DB``, with the servers' password, the
  Sentinels' own password and TLS from their settings.

:func:`redis_client` is the service's own client (lease, seq, per-target state, the CLI and the
exporter), :func:`celery_redis_config` the broker and result backend keys of the Celery
configuration (the domain never imports Celery: these are plain values), :func:`redis_topology`
what ``pacing status`` shows.

Following a failover is redis-py's work (kombu and Celery hand it their Sentinel connections
too, celery/kombu#813): a connection of a ``master_for`` pool asks the Sentinels for the master's
address each time it connects, and one that meets a demoted master (``READONLY``, or a blocking
command unblocked by the role change) is dropped and reported as a ``ConnectionError``, so the
next connection asks again. A killed master resets its connections at once; one cut off without
a reset (celery/celery#6348: workers that never noticed the lost master) is detected by socket
timeouts and health checks, which Sentinel mode therefore sets on every connection.
"""

from __future__ import annotations

import ssl
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from pacing.settings import Settings, parse_sentinel_addresses

#: Replies from Redis arrive in milliseconds; a command unanswered this long is on a dead or
#: partitioned connection, and a cycle lasts seconds.
SOCKET_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 2.0
#: A connection idle this long is pinged before use (dead-socket detection).
HEALTH_CHECK_SECONDS = 10
#: Sentinel mode, broker: kombu's checks of its BRPOP and pub/sub connections run this often,
#: so a consumer whose master vanished without a TCP reset (a partition, celery/celery#6348)
#: drops the connection and asks the Sentinels again within brpop_timeout (1 s) + 2 × this:
#: 9 s, inside issue 18's 10 s bound (kombu's default, 25 s, gives 51 s).
BROKER_HEALTH_CHECK_SECONDS = 4
#: Unacknowledged messages come back after this long; longer than any task of a cycle.
VISIBILITY_TIMEOUT_SECONDS = 300


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """The Sentinels of ``settings`` as ``(host, port)``; empty in plain mode."""
    if settings.redis_sentinels is None:
        return []
    return parse_sentinel_addresses(settings.redis_sentinels)


# --- the service's client --------------------------------------------------------------------


def redis_client_for_url(url: str) -> redis.Redis:
    """A client of the Redis at ``url``, with timeouts shorter than a cycle and dead-socket
    detection (``rediss://`` verifies the certificate, redis-py's default)."""
    return redis.Redis.from_url(url, **_client_options())


def redis_client(settings: Settings) -> redis.Redis:
    """The client of the lease, seq and per-target state: in plain mode at
    ``settings.effective_redis_url``; in Sentinel mode at the master the Sentinels name now,
    following it through a failover (a command that fails during one raises a
    ``redis.ConnectionError``; the next one reaches the new master once the Sentinels name it).
    Closing it closes its connections to the Sentinels too."""
    if not settings.uses_sentinels:
        return redis_client_for_url(settings.effective_redis_url)
    sentinel = Sentinel(
        sentinel_addresses(settings),
        sentinel_kwargs=_sentinel_kwargs(settings, timeout=CONNECT_TIMEOUT_SECONDS),
    )
    password = settings.redis_password
    client: redis.Redis = sentinel.master_for(
        settings.redis_master_name,
        redis_class=_SentinelMasterRedis,
        db=settings.redis_db,
        password=password.get_secret_value() if password else None,
        **_client_options(),
        **_server_tls(settings),
    )
    return client


class _SentinelMasterRedis(redis.Redis):
    """A ``master_for`` client whose ``close()`` also closes the Sentinel clients behind it
    (redis-py leaves them to the caller)."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            manager: Sentinel | None = getattr(self.connection_pool, "sentinel_manager", None)
            if manager is not None:
                manager.close()


def _client_options() -> dict[str, Any]:
    return {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry_on_timeout": True,
    }


def _sentinel_kwargs(settings: Settings, *, timeout: float) -> dict[str, Any]:
    """How to reach the Sentinels themselves: their own password, TLS, short timeouts (a dead
    Sentinel must cost little: the next one is asked)."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    password = settings.redis_sentinel_password
    if password is not None:
        options["password"] = password.get_secret_value()
    if settings.redis_tls:
        options |= {"ssl": True, **_verified_tls_options(settings)}
    return options


def _server_tls(settings: Settings) -> dict[str, Any]:
    if not settings.redis_tls:
        return {}
    return {"ssl": True, **_verified_tls_options(settings)}


def _verified_tls_options(settings: Settings) -> dict[str, Any]:
    # hostname checking stays on (redis-py's default): a certificate must name the address the
    # Sentinels announce for each server, and the address PACING_REDIS_SENTINELS gives for each
    # Sentinel
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    return options


# --- Celery's broker and result backend --------------------------------------------------------


def celery_redis_config(settings: Settings) -> dict[str, Any]:
    """The broker and result backend keys of the Celery configuration for ``settings``.

    Plain mode: the URLs as configured, with certificate verification for ``rediss://`` URLs
    that do not choose it. Sentinel mode: kombu's and Celery's ``sentinel://`` URLs, one per
    Sentinel (each carries the servers' password and the database, because kombu takes them
    from whichever URL it connected through), with the master name, the Sentinels' own
    password and TLS in the transport options.
    """
    if not settings.uses_sentinels:
        return _verified_tls(settings) | {
            "broker_url": settings.broker_url,
            "result_backend": settings.effective_result_backend,
            "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
            "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        }
    urls = _sentinel_urls(settings)
    # without sentinel_kwargs, the Celery backend's Sentinel clients would have no timeouts
    sentinels = _sentinel_kwargs(settings, timeout=CONNECT_TIMEOUT_SECONDS)
    config: dict[str, Any] = {
        "broker_url": urls,
        "result_backend": urls,
        "broker_transport_options": {
            "master_name": settings.redis_master_name,
            "sentinel_kwargs": sentinels,
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            # kombu's defaults wait forever on a connection whose master vanished without a
            # reset (celery/celery#6348); a publish fails after this instead
            "socket_timeout": SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "socket_keepalive": True,
            "health_check_interval": BROKER_HEALTH_CHECK_SECONDS,
        },
        "result_backend_transport_options": {
            "master_name": settings.redis_master_name,
            "sentinel_kwargs": sentinels,
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        },
        # the result backend's own socket options (Celery's default read timeout is 120 s)
        "redis_socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "redis_socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "redis_socket_keepalive": True,
    }
    if settings.redis_tls:
        config["broker_use_ssl"] = _verified_tls_options(settings)
        config["redis_backend_use_ssl"] = _verified_tls_options(settings)
    return config


def _sentinel_urls(settings: Settings) -> str:
    password = settings.redis_password
    credentials = f":{quote(password.get_secret_value(), safe='')}@" if password else ""
    return ";".join(
        f"sentinel://{credentials}{_host_port(host, port)}/{settings.redis_db}"
        for host, port in sentinel_addresses(settings)
    )


def _verified_tls(settings: Settings) -> dict[str, Any]:
    """Certificate verification for ``rediss://`` URLs that do not choose ``ssl_cert_reqs``.

    kombu connects to a bare ``rediss://`` broker with CERT_NONE (encrypted, but to anyone), and
    Celery's Redis result backend refuses such a URL; both get CERT_REQUIRED instead, the
    default of redis-py (:func:`redis_client_for_url`) too. A URL's own ``ssl_cert_reqs`` wins.
    """
    options: dict[str, Any] = {}
    for name, url in (
        ("broker_use_ssl", settings.broker_url),
        ("redis_backend_use_ssl", settings.effective_result_backend),
    ):
        parts = urlsplit(url)
        if parts.scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(parts.query):
            options[name] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


# --- what `pacing status` shows ------------------------------------------------------------


def redis_topology(settings: Settings, *, timeout: float = 1.0) -> dict[str, Any]:
    """Where Redis is, as the configuration and the Sentinels see it now; never raises.

    Plain mode: ``{"mode": "single", "address": "host:port"}``. Sentinel mode: every Sentinel
    is asked (at once, each within ``timeout``) for the master's address and its replicas::

        {"mode": "sentinel", "master_name": "pacing", "master": "10.0.0.5:6379" | None,
         "replicas": ["10.0.0.6:6379"],
         "sentinels": [{"address": "10.0.0.1:26379", "answers": True,
                        "master": "10.0.0.5:6379"}, ...]}

    ``master`` is the address named by more than half of the Sentinels that name one (None
    if none does, or they are split); ``replicas`` those that a Sentinel naming that master
    does not hold down.
    """
    addresses = sentinel_addresses(settings)
    if not addresses:
        return {"mode": "single", "address": _url_address(settings.effective_redis_url)}
    with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
        views = list(pool.map(lambda a: _ask_sentinel(settings, a, timeout), addresses))
    named = Counter(view.master for view in views if view.master is not None)
    master = None
    if named:
        candidate, votes = named.most_common(1)[0]
        if votes * 2 > sum(named.values()):
            master = candidate
    replicas = sorted({r for view in views if view.master == master for r in view.replicas})
    return {
        "mode": "sentinel",
        "master_name": settings.redis_master_name,
        "master": master,
        "replicas": replicas if master is not None else [],
        "sentinels": [
            {"address": view.address, "answers": view.answers, "master": view.master}
            for view in views
        ],
    }


def topology_line(topology: dict[str, Any]) -> str:
    """:func:`redis_topology` in one line, e.g. ``sentinel master=10.0.0.5:6379
    replicas=10.0.0.6:6379 sentinels=3/3 answering``."""
    if topology["mode"] != "sentinel":
        return f"{topology['mode']} {topology['address']}"
    sentinels = topology["sentinels"]
    answering = sum(1 for s in sentinels if s["answers"])
    return (
        f"sentinel master={topology['master'] or '-'} "
        f"replicas={','.join(topology['replicas']) or '-'} "
        f"sentinels={answering}/{len(sentinels)} answering"
    )


class _SentinelView:
    """What one Sentinel said (or that it did not answer)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answers = False
        self.master: str | None = None
        self.replicas: list[str] = []


def _ask_sentinel(settings: Settings, address: tuple[str, int], timeout: float) -> _SentinelView:
    host, port = address
    view = _SentinelView(_host_port(host, port))
    options = _sentinel_kwargs(settings, timeout=timeout)
    # one try: a Sentinel that does not answer within the timeout is reported as such
    client = redis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **options)
    try:
        name = settings.redis_master_name
        reply: Any = client.sentinel_get_master_addr_by_name(name)  # (host, port) or None
        view.answers = True
        if reply:
            view.master = _host_port(_text(reply[0]), int(reply[1]))
        view.replicas = [
            _host_port(_text(replica["ip"]), int(replica["port"]))
            for replica in client.sentinel_slaves(name)
            if not (replica.get("is_sdown") or replica.get("is_odown"))
        ]
    except (redis.RedisError, OSError, ValueError):
        pass  # not answering, refusing our password, or not monitoring this master
    finally:
        client.close()
    return view


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url_address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return _host_port(parts.hostname or "127.0.0.1", port)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
