"""The one typed settings object of the service.

Read once at start-up from environment variables prefixed ``PACING_`` and, optionally, a TOML
file named by ``PACING_CONFIG_FILE`` (environment variables win). Nothing else in the project
reads the environment. Invalid or unsafe values stop start-up with a
:class:`~pacing.errors.ConfigurationError` whose message names the setting and the fix.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pacing.errors import ConfigurationError

ENV_PREFIX = "PACING_"
CONFIG_FILE_VARIABLE = "PACING_CONFIG_FILE"


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class Settings(BaseSettings):
    """Every knob of the service; see the README's settings reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # --- identity and mode -------------------------------------------------------------
    node_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    # The defaults are a development stack on loopback (the built-in simulator, SQLite, local
    # Redis); production deployments set PACING_ENVIRONMENT=production, which refuses clear-text
    # engagement URLs, disabled TLS verification and missing credentials.
    environment: Literal["development", "production"] = "development"

    # --- the cycle ------------------------------------------------------------------------
    refresh_period_seconds: float = Field(default=2.0, ge=0.2, le=60.0)
    lease_ttl_seconds: float | None = Field(default=None, gt=0)  # None: 3 × refresh period
    cycle_deadline_seconds: float | None = Field(default=None, gt=0)  # None: 2 × refresh period
    # 2,500: a shard costs a Celery task (and its events), a Stat Server request, a pace() call
    # and three Redis round trips whatever its size. At 10,000 targets on 2 worker processes
    # (benchmarks/cycle.py and per-process CPU from /proc, side by side): shards of 250 paid
    # half the cycle in those fixed costs; 1,000 → 458–481 ms of CPU a cycle, 2,500 → 380–384
    # (−20 %), and the cycle is faster with or without network latency. The price: with the
    # Stat Server 20 ms away, 1 → 2 processes speed a cycle up less (1.43–1.71 in five runs at
    # 2,500, 1.61 at 1,000, 1.97 at 1,250): a deployment that scales out against a distant
    # Stat Server may want smaller shards (README, Performance).
    shard_size: int = Field(default=2500, ge=1, le=5000)
    # Past max_shards × shard_size targets the shards grow instead of multiplying: the leader's
    # refresh sends one task message per shard (about 5 ms each with the task-sent events
    # Flower shows), so 100 shards of 1,000 held a worker process for half a second of a
    # 100,000-target cycle; 40 of 2,500 measured 3.0 s a cycle against 4.9 s (benchmarks/cycle.py).
    # With shards of 2,500 the two limits meet at 100,000 targets.
    max_shards: int = Field(default=40, ge=1)
    full_snapshot_every: int = Field(default=30, ge=1)
    stats_max_age_seconds: float | None = Field(default=None, gt=0)  # None: 3 × refresh period
    global_budget_cap: int | None = Field(default=None, ge=0)

    # --- Stat Server gateway (input) --------------------------------------------------------
    stat_server_primary_url: str = "http://127.0.0.1:8700/statserver/primary"
    stat_server_backup_url: str | None = "http://127.0.0.1:8700/statserver/backup"
    stat_server_failback_seconds: float = Field(default=30.0, ge=0)

    # --- engagement platform (output) -------------------------------------------------------
    engagement_url: str = "http://127.0.0.1:8700/engagement"
    engagement_token: SecretStr | None = None
    auth_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    engagement_verify_tls: bool = True

    # --- HTTP ------------------------------------------------------------------------------
    http_connect_timeout_seconds: float = Field(default=0.5, gt=0)
    http_read_timeout_seconds: float | None = Field(default=None, gt=0)  # None: 0.6 × period

    # --- Redis, Celery, database ------------------------------------------------------------
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None  # None: the broker URL
    redis_url: str | None = None  # lease, seq, per-target state; None: the broker URL
    key_prefix: str = Field(default="pacing", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Sentinel mode (pacing.cluster.connection): set redis_sentinels and the broker, the result
    # backend and the state all use the master the Sentinels name, in database redis_db; the
    # three URLs above must then stay unset. Passwords and TLS apply in Sentinel mode only (a
    # plain URL carries its own: redis://:password@host, rediss://).
    redis_sentinels: str | None = None  # "host:port,host:port,…"; [v6::addr]:port
    redis_master_name: str = Field(default="pacing", pattern=r"^[^\s,;/@]{1,128}$")
    redis_db: int = Field(default=0, ge=0)
    redis_password: SecretStr | None = None  # the servers' requirepass (masterauth)
    redis_sentinel_password: SecretStr | None = None  # the Sentinels' own requirepass
    redis_tls: bool = False  # TLS, certificates verified, to the servers and the Sentinels
    redis_tls_ca_file: str | None = None  # CA bundle for redis_tls; None: the system's CAs
    database_url: str = "sqlite:///var/pacing-history.db"
    history_retention_days: int = Field(default=30, ge=1)
    worker_concurrency: int | None = Field(default=None, ge=1)

    # --- operators --------------------------------------------------------------------------
    flower_basic_auth: SecretStr | None = None  # "user:password"
    metrics_basic_auth: SecretStr | None = None  # "user:password" for `pacing exporter`
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- algorithm priors ----------------------------------------------------------------
    prior_accept_probability: float = Field(default=0.25, gt=0, le=1)
    prior_resolve_delay_seconds: float = Field(default=10.0, gt=0)
    prior_handle_time_seconds: float = Field(default=180.0, gt=0)
    prior_patience_seconds: float = Field(default=60.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_VARIABLE)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    # --- derived values ----------------------------------------------------------------------
    @property
    def lease_ttl(self) -> float:
        return self.lease_ttl_seconds or 3 * self.refresh_period_seconds

    @property
    def cycle_deadline(self) -> float:
        return self.cycle_deadline_seconds or 2 * self.refresh_period_seconds

    @property
    def stats_max_age(self) -> float:
        return self.stats_max_age_seconds or 3 * self.refresh_period_seconds

    @property
    def http_read_timeout(self) -> float:
        return self.http_read_timeout_seconds or 0.6 * self.refresh_period_seconds

    @property
    def effective_result_backend(self) -> str:
        """The result backend URL in plain mode (Sentinel mode: pacing.cluster.connection)."""
        return self.result_backend or self.broker_url

    @property
    def effective_redis_url(self) -> str:
        """The state's Redis URL in plain mode (Sentinel mode: pacing.cluster.connection)."""
        return self.redis_url or self.broker_url

    @property
    def uses_sentinels(self) -> bool:
        """Sentinel mode: every Redis client follows the master the Sentinels name."""
        return self.redis_sentinels is not None

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    @cached_property
    def sqlite_path(self) -> Path | None:
        """The history file when the database is SQLite, else None."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix) :])
        return None

    # --- single-field rules -----------------------------------------------------------------
    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `PACING_REDIS_SENTINELS=` (e.g. `${VAR:-}` in a compose file) means plain mode
        if isinstance(value, str) and not value.strip():
            return None
        return value

    # --- cross-field rules ------------------------------------------------------------------
    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        period = self.refresh_period_seconds
        if self.lease_ttl <= period:
            _refuse(
                "lease_ttl_seconds",
                f"({self.lease_ttl:g}) must be longer than PACING_REFRESH_PERIOD_SECONDS "
                f"({period:g}); set it to about 3 × the refresh period, e.g. {3 * period:g}",
            )
        if self.cycle_deadline < period:
            _refuse(
                "cycle_deadline_seconds",
                f"({self.cycle_deadline:g}) must be at least the refresh period ({period:g}); "
                f"set it to about 2 × the refresh period, e.g. {2 * period:g}",
            )
        if self.cycle_deadline > self.lease_ttl * 2:
            _refuse(
                "cycle_deadline_seconds",
                f"({self.cycle_deadline:g}) must not exceed twice the lease TTL "
                f"({self.lease_ttl:g}); lower it or raise PACING_LEASE_TTL_SECONDS",
            )
        connect = self.http_connect_timeout_seconds
        if connect + self.http_read_timeout >= period * 2:
            if (
                period * 2 - connect < 0.05
            ):  # no read timeout could fit: the connect one is at fault
                _refuse(
                    "http_connect_timeout_seconds",
                    f"({connect:g}) plus the read timeout must stay below two refresh periods "
                    f"({2 * period:g}) so a dead server cannot stall the cycle; lower it, e.g. "
                    f"to {min(0.5, period / 4):g}",
                )
            _refuse(
                "http_read_timeout_seconds",
                f"({self.http_read_timeout:g}) plus the connect timeout ({connect:g}) must stay "
                "below two refresh periods so a slow server cannot stall the cycle; lower it "
                f"below {period * 2 - connect:g}",
            )
        for name in ("stat_server_primary_url", "stat_server_backup_url", "engagement_url"):
            _check_http_url(name, getattr(self, name))
        _check_http_url("auth_url", self.auth_url)
        if not self.is_development:
            for name in ("engagement_url", "auth_url"):
                url = getattr(self, name)
                if url is not None and urlsplit(url).scheme != "https":
                    _refuse(
                        name,
                        "must use https:// outside development mode so credentials and pacing "
                        "are not sent in clear text; use an https URL or set "
                        "PACING_ENVIRONMENT=development on a test machine",
                    )
            if not self.engagement_verify_tls:
                _refuse(
                    "engagement_verify_tls",
                    "may only be false in development mode; install the CA certificate instead",
                )
            if self.engagement_token is None and self.auth_url is None:
                _refuse(
                    "engagement_token",
                    "or PACING_AUTH_URL with PACING_CLIENT_ID and PACING_CLIENT_SECRET is "
                    "required outside development mode; set one of them",
                )
        if self.auth_url is not None and (self.client_id is None or self.client_secret is None):
            _refuse(
                "client_id",
                "and PACING_CLIENT_SECRET are required when PACING_AUTH_URL is set; set both",
            )
        if self.flower_basic_auth is not None and ":" not in (
            self.flower_basic_auth.get_secret_value()
        ):
            _refuse("flower_basic_auth", "must look like user:password; set it in that form")
        if self.metrics_basic_auth is not None and ":" not in (
            self.metrics_basic_auth.get_secret_value()
        ):
            _refuse("metrics_basic_auth", "must look like user:password; set it in that form")
        self._check_redis_sentinels()
        return self

    def _check_redis_sentinels(self) -> None:
        # No password rule for production: a plain redis:// URL without one is accepted there
        # too (a Redis reachable only on a private network); both modes are treated alike.
        if self.redis_tls_ca_file is not None and not self.redis_tls:
            _refuse(
                "redis_tls_ca_file",
                "is set but PACING_REDIS_TLS is not; set PACING_REDIS_TLS=true or unset the CA "
                "file (plain mode takes TLS options from a rediss:// URL)",
            )
        if self.redis_sentinels is None:
            return
        try:
            parse_sentinel_addresses(self.redis_sentinels)
        except ValueError as error:
            _refuse(
                "redis_sentinels",
                f"{error}; list every Sentinel as host:port, separated by commas, e.g. "
                "10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379",
            )
        for name in ("broker_url", "result_backend", "redis_url"):
            if name in self.model_fields_set and getattr(self, name) is not None:
                _refuse(
                    name,
                    "must not be set together with PACING_REDIS_SENTINELS: in Sentinel mode the "
                    "broker, the result backend and the state all use the master the Sentinels "
                    "name (database PACING_REDIS_DB); unset it, or unset "
                    "PACING_REDIS_SENTINELS to use the URL",
                )

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to print: secrets masked, passwords hidden in URLs."""
        result: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                result[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, str) and "://" in value:
                result[name] = redact_url(value)
            else:
                result[name] = value
        return result


def parse_sentinel_addresses(text: str) -> list[tuple[str, int]]:
    """``"h1:26379, h2:26379, [::1]:26379"`` → ``[("h1", 26379), ("h2", 26379), ("::1", 26379)]``.

    Raises ValueError naming the first entry that is not ``host:port`` (port 1–65535, IPv6
    addresses in brackets) or that is listed twice.
    """
    addresses: list[tuple[str, int]] = []
    for raw in text.split(","):
        entry = raw.strip()
        host, colon, port_text = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:  # an IPv6 address must be bracketed, or its port is ambiguous
            host = ""
        valid = (
            bool(colon)
            and bool(host)
            and not any(char.isspace() or char in "/@;[]" for char in host)
            and port_text.isascii()
            and port_text.isdigit()
            and 1 <= int(port_text) <= 65535
        )
        if not valid:
            if "@" in entry:  # never echo what may be a password
                raise ValueError(
                    "has an entry with credentials, which belong in PACING_REDIS_PASSWORD and "
                    "PACING_REDIS_SENTINEL_PASSWORD"
                )
            shown = repr(entry) if entry else "an empty entry"
            raise ValueError(f"has {shown}, which is not host:port with a port from 1 to 65535")
        address = (host, int(port_text))
        if address in addresses:
            raise ValueError(f"lists {entry!r} twice")
        addresses.append(address)
    return addresses


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _refuse(field: str, message: str) -> None:
    raise ConfigurationError(f"{_env_name(field)} {message}.")


def _check_http_url(field: str, url: str | None) -> None:
    if url is None:
        return
    try:
        parts = urlsplit(url)
        shown = f"({redact_url(url)!r}) "
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. "http://[::1": unparsable, so its password cannot be hidden
        shown, valid = "", False
    if not valid:
        _refuse(field, f"{shown}is not an http(s) URL; give a full URL such as https://host/path")


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read the settings once; raise ConfigurationError with a one-sentence message if invalid."""
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as error:
        raise _explain(error) from None


def _explain(error: ValidationError) -> ConfigurationError:
    first = error.errors()[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, ConfigurationError):  # raised by a cross-field rule above
        return cause
    field = ".".join(str(part) for part in first["loc"])
    if not field:  # a model-level error: its input is every setting, secrets included
        return ConfigurationError(f"The settings are invalid: {first['msg']}; fix them.")
    message = f"{_env_name(field)} is invalid: {first['msg']}; fix the value"
    if field in _SECRET_FIELDS:  # never echo what was typed into a secret
        return ConfigurationError(f"{message}.")
    return ConfigurationError(f"{message} (got {first.get('input')!r:.60}).")


_SECRET_FIELDS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
