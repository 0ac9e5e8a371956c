"""The clients one process needs, built from the settings (no Celery here).

A worker builds one :class:`Services` per process after it forks (HTTP sessions, Redis
connection pools and database engines must not be shared across a fork); the CLI builds one for
its own commands. Everything is created lazily, so a process that never touches the database
never connects to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

import orjson
import redis
import requests
from requests.adapters import HTTPAdapter
from sqlalchemy.engine import Engine

from pacing.algorithms import OPERATING_POINTS
from pacing.clients.engagement import BearerToken, EngagementClient, OAuth2ClientCredentials
from pacing.clients.stat_server import StatServerClient
from pacing.cluster.connection import redis_client as settings_redis_client
from pacing.cluster.connection import redis_client_for_url
from pacing.cluster.keys import Keys
from pacing.cluster.leadership import Leadership
from pacing.cluster.state import SharedOperatingPoints, StateStore
from pacing.cycle.split import shard_digest, split_into_shards
from pacing.domain import Algorithm, Objective, TargetConfig
from pacing.errors import HistoryUnavailable, ShardTargetsMissing
from pacing.history import create_history_engine, list_targets, targets_version
from pacing.settings import Settings

logger = logging.getLogger(__name__)

_TARGET_FIELDS = tuple(f.name for f in fields(TargetConfig))

#: shards whose rows a process keeps: a cycle has at most max_shards of them (40 by default),
#: the rest are cuts of target lists that have changed since
SHARD_TARGETS_KEPT = 1000
TARGETS_CACHE_SECONDS = 10.0  # a target enabled with the CLI starts being paced within this time


def redis_client(url: str) -> redis.Redis:
    """A client of the Redis at ``url`` with timeouts shorter than a cycle and dead-socket
    detection; the service's own client comes from the settings
    (:func:`pacing.cluster.connection.redis_client`, which also knows Sentinel mode)."""
    return redis_client_for_url(url)


def http_session(pool_size: int = 16) -> requests.Session:
    """A session that keeps connections alive between cycles (no TLS handshake per shard)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Services:
    """Lazily built clients for one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        sessions: Callable[[int], requests.Session] = http_session,
    ) -> None:
        """``sessions(pool_size)`` makes the HTTP sessions of the two clients (the virtual-time
        evaluation mounts the in-process simulator on them)."""
        self.settings = settings
        self.clock = clock
        self._sessions = sessions
        self.keys = Keys(settings.key_prefix)
        self._targets_lock = threading.Lock()
        self._targets: list[TargetConfig] = []
        self._targets_read_at = -float("inf")
        self._targets_version: tuple[int, int, datetime | None] | None = None
        self._shards: _Cut | None = None
        self._shard_targets: dict[str, list[list[Any]]] = {}

    @cached_property
    def redis(self) -> redis.Redis:
        return settings_redis_client(self.settings)

    @cached_property
    def leadership(self) -> Leadership:
        return Leadership(self.redis, self.keys)

    @cached_property
    def state(self) -> StateStore:
        return StateStore(self.redis, self.keys)

    @cached_property
    def operating_points(self) -> SharedOperatingPoints:
        return SharedOperatingPoints(self.redis, self.keys, OPERATING_POINTS)

    @cached_property
    def stat_server(self) -> StatServerClient:
        s = self.settings
        return StatServerClient(
            primary_url=s.stat_server_primary_url,
            backup_url=s.stat_server_backup_url,
            session=self._sessions(16),
            connect_timeout=s.http_connect_timeout_seconds,
            read_timeout=s.http_read_timeout,
            max_age_seconds=s.stats_max_age,
            failback_seconds=s.stat_server_failback_seconds,
            clock=self.clock,
        )

    @cached_property
    def engagement(self) -> EngagementClient:
        s = self.settings
        session = self._sessions(2)
        auth: BearerToken | OAuth2ClientCredentials
        if s.auth_url is not None and s.client_id is not None and s.client_secret is not None:
            auth = OAuth2ClientCredentials(
                auth_url=s.auth_url,
                client_id=s.client_id,
                client_secret=s.client_secret.get_secret_value(),
                session=session,
                connect_timeout=s.http_connect_timeout_seconds,
                read_timeout=s.http_read_timeout,
                verify_tls=s.engagement_verify_tls,
                clock=self.clock,
            )
        else:
            token = s.engagement_token.get_secret_value() if s.engagement_token else ""
            auth = BearerToken(token)
        return EngagementClient(
            engagement_url=s.engagement_url,
            auth=auth,
            session=session,
            connect_timeout=s.http_connect_timeout_seconds,
            read_timeout=s.http_read_timeout,
            verify_tls=s.engagement_verify_tls,
        )

    @cached_property
    def history(self) -> Engine:
        return create_history_engine(self.settings.database_url)

    def enabled_targets(self) -> list[TargetConfig]:
        """The enabled targets, checked against the database at most every few seconds.

        The check reads one aggregate row (:func:`pacing.history.targets_version`); the list is
        read again only when it changed. If the database is down, the copy kept in Redis by
        the last good read is used, so a database outage never stops pacing.
        """
        now = self.clock()
        with self._targets_lock:
            if now - self._targets_read_at < TARGETS_CACHE_SECONDS:
                return self._targets
            try:
                version = targets_version(self.history)
                if version != self._targets_version:
                    targets = list_targets(self.history, enabled_only=True)
                    self.redis.set(self.keys.targets, _encode_targets(targets))
                    self._targets, self._targets_version = targets, version
            except HistoryUnavailable:
                logger.warning("history database unavailable; pacing the targets kept in Redis")
                raw = self.redis.get(self.keys.targets)
                if raw:
                    self._targets = _decode_targets(raw)
                self._targets_version = None  # read the list again once the database is back
            self._targets_read_at = now
            return self._targets

    def enabled_shards(
        self, shard_size: int, max_shards: int | None = None
    ) -> list[list[list[Any]]]:
        """The enabled targets cut into shards; cut again only when the targets changed."""
        return self._cut(shard_size, max_shards).shards

    def shard_digests(self, shard_size: int, max_shards: int | None = None) -> list[str]:
        """A name for each shard of :meth:`enabled_shards`, from its rows' content."""
        return self._cut(shard_size, max_shards).digests

    def _cut(self, shard_size: int, max_shards: int | None) -> _Cut:
        targets = self.enabled_targets()
        cached = self._shards
        if (
            cached is None
            or cached.targets is not targets  # a new list is read only when the targets changed
            or (cached.shard_size, cached.max_shards) != (shard_size, max_shards)
        ):
            shards = split_into_shards(targets, shard_size, max_shards=max_shards)
            digests = [shard_digest(rows) for rows in shards]
            cached = _Cut(targets, shard_size, max_shards, shards, digests)
            self._shards = cached
        return cached

    def shard_targets(self, digest: str) -> list[list[Any]]:
        """The rows of the shard named ``digest``, parked in Redis by the leader's refresh.

        Kept in this process once read (the same shards come back every cycle until the
        targets change), so a shard task usually reads nothing. Raises
        :class:`ShardTargetsMissing` if Redis no longer holds them.
        """
        rows = self._shard_targets.get(digest)
        if rows is None:
            raw = self.redis.get(self.keys.shard_targets(digest))
            if raw is None:
                raise ShardTargetsMissing(
                    f"The targets of shard {digest} are not in Redis (expired or flushed); "
                    "the next refresh parks them again."
                )
            rows = orjson.loads(raw)
            with self._targets_lock:  # a threads pool shares this cache between tasks
                if len(self._shard_targets) >= SHARD_TARGETS_KEPT:
                    self._shard_targets.pop(next(iter(self._shard_targets)))
                self._shard_targets[digest] = rows
        return rows

    def close(self) -> None:
        """Release connections (for tests and the CLI)."""
        for name in ("redis", "history"):
            resource = self.__dict__.pop(name, None)
            if isinstance(resource, redis.Redis):
                resource.close()
            elif isinstance(resource, Engine):
                resource.dispose()


class _Cut(NamedTuple):
    """The shards cut from one target list, with the names they are parked under."""

    targets: list[TargetConfig]
    shard_size: int
    max_shards: int | None
    shards: list[list[list[Any]]]
    digests: list[str]


def _encode_targets(targets: list[TargetConfig]) -> bytes:
    # one list per target, fields in declaration order: asdict() deep-copies every value and
    # took 540 ms for 10,000 targets; this takes 10 ms
    return orjson.dumps([[getattr(t, name) for name in _TARGET_FIELDS] for t in targets])


def _decode_targets(raw: bytes | str) -> list[TargetConfig]:
    targets = []
    for values in orjson.loads(raw):
        item = dict(zip(_TARGET_FIELDS, values, strict=True))
        item["algorithm"] = Algorithm(item["algorithm"])
        item["objective"] = Objective(item["objective"])
        targets.append(TargetConfig(**item))
    return targets
