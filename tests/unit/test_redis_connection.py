"""Redis Sentinel mode: its settings rules, the Celery keys it produces, and the clients built
from them (inspected, never connected: tests/integration/test_sentinel_clients.py runs them
against real servers and Sentinels).

The suite's ``pytest_configure`` puts PACING_* variables into the environment (a broker URL among
them); the ``clean_env`` fixture removes them so a test sees exactly the values it gives.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis
from celery import Celery
from redis.sentinel import (
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from pacing.cluster.connection import (
    celery_redis_config,
    redis_client,
    redis_topology,
    sentinel_addresses,
)
from pacing.settings import load_settings
from tasks.app import celery_config  # imported with the suite's environment, as tasks read it
from tests.unit.test_settings import (  # noqa: F401 - clean_env is a fixture
    assert_one_fixing_sentence,
    clean_env,
    refusal,
)

SECRET = "TOPSECRET-redis/pass@word"  # '/' and '@' must survive the URL
SENTINEL_SECRET = "TOPSECRET-sentinel-0123"
SENTINELS = "10.0.0.1:26379, 10.0.0.2:26379,10.0.0.3:26380"


def sentinel_settings(**values: Any) -> Any:
    return load_settings({"redis_sentinels": SENTINELS, **values})


# --- the settings ------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_plain_redis_stays_the_default() -> None:
    # given no PACING_* variable
    # when
    settings = load_settings()

    # then
    assert not settings.uses_sentinels
    assert sentinel_addresses(settings) == []
    assert settings.redis_master_name == "pacing"
    assert settings.redis_db == 0
    assert settings.redis_password is None
    assert settings.redis_sentinel_password is None
    assert settings.redis_tls is False
    assert settings.redis_tls_ca_file is None


@pytest.mark.usefixtures("clean_env")
def test_a_sentinel_list_chooses_sentinel_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    monkeypatch.setenv("PACING_REDIS_SENTINELS", "s1.internal:26379, [fd00::7]:26379 ,10.0.0.3:1")
    monkeypatch.setenv("PACING_REDIS_MASTER_NAME", "pacing-eu")
    monkeypatch.setenv("PACING_REDIS_DB", "4")

    # when
    settings = load_settings()

    # then
    assert settings.uses_sentinels
    assert sentinel_addresses(settings) == [
        ("s1.internal", 26379),
        ("fd00::7", 26379),
        ("10.0.0.3", 1),
    ]
    assert (settings.redis_master_name, settings.redis_db) == ("pacing-eu", 4)


@pytest.mark.usefixtures("clean_env")
def test_an_empty_sentinel_list_means_plain_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # given `PACING_REDIS_SENTINELS=` (a compose file's ${VAR:-})
    monkeypatch.setenv("PACING_REDIS_SENTINELS", "  ")

    # when
    settings = load_settings()

    # then
    assert not settings.uses_sentinels
    assert settings.redis_sentinels is None


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "sentinels",
    [
        "sentinel-1",  # no port
        "sentinel-1:",  # empty port
        "sentinel-1:0",
        "sentinel-1:65536",
        "sentinel-1:26x79",
        ":26379",  # no host
        "::1:26379",  # an IPv6 address without brackets
        "s1:26379,,s2:26379",  # an empty entry
        "s1:26379,s1:26379",  # twice
        "sentinel://s1:26379",
        "user:pw@s1:26379",
        "s1:26379;s2:26379",
    ],
)
def test_a_malformed_sentinel_list_is_refused(sentinels: str) -> None:
    # given / when
    message = refusal({"redis_sentinels": sentinels})

    # then
    assert_one_fixing_sentence(message, "PACING_REDIS_SENTINELS")
    assert "host:port" in message
    assert "pw@" not in message  # a password typed into the list is never echoed


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", ["broker_url", "result_backend", "redis_url"])
def test_a_redis_url_set_in_sentinel_mode_is_refused(name: str) -> None:
    # given / when
    message = refusal({"redis_sentinels": SENTINELS, name: "redis://10.0.0.9:6379/0"})

    # then the URL would contradict the master the Sentinels name
    assert_one_fixing_sentence(message, f"PACING_{name.upper()}")
    assert "PACING_REDIS_SENTINELS" in message


@pytest.mark.usefixtures("clean_env")
def test_a_broker_url_from_the_environment_is_refused_in_sentinel_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a URL left in the environment, even one equal to the default
    monkeypatch.setenv("PACING_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("PACING_REDIS_SENTINELS", SENTINELS)

    # when
    message = refusal({})

    # then
    assert_one_fixing_sentence(message, "PACING_BROKER_URL")


@pytest.mark.usefixtures("clean_env")
def test_the_urls_keep_working_in_plain_mode_with_the_sentinel_settings_beside_them() -> None:
    # given passwords for a `pacing up --ha` to come, no Sentinels yet
    settings = load_settings(
        {
            "broker_url": "redis://10.0.0.9:6379/2",
            "redis_url": "redis://10.0.0.8:6379/3",
            "redis_password": SECRET,
            "redis_sentinel_password": SENTINEL_SECRET,
        }
    )

    # when
    config = celery_redis_config(settings)

    # then
    assert config["broker_url"] == "redis://10.0.0.9:6379/2"
    assert settings.effective_redis_url == "redis://10.0.0.8:6379/3"


@pytest.mark.usefixtures("clean_env")
def test_a_ca_file_without_tls_is_refused() -> None:
    # given / when
    message = refusal({"redis_sentinels": SENTINELS, "redis_tls_ca_file": "/etc/ssl/redis-ca.pem"})

    # then
    assert_one_fixing_sentence(message, "PACING_REDIS_TLS_CA_FILE")


@pytest.mark.usefixtures("clean_env")
def test_production_treats_a_sentinel_without_password_like_a_plain_url_without_one() -> None:
    # given production settings that are otherwise complete
    production = {
        "environment": "production",
        "engagement_url": "https://engage.example.com/api",
        "engagement_token": "token",
    }

    # when both Redis setups come without a password
    plain = load_settings({**production, "broker_url": "redis://10.0.0.9:6379/0"})
    sentinel = load_settings({**production, "redis_sentinels": SENTINELS})

    # then both are accepted (a Redis reachable only on a private network needs none)
    assert not plain.uses_sentinels
    assert sentinel.uses_sentinels


@pytest.mark.usefixtures("clean_env")
def test_redacted_masks_both_redis_passwords() -> None:
    # given
    settings = sentinel_settings(
        redis_password=SECRET, redis_sentinel_password=SENTINEL_SECRET, redis_db=2
    )

    # when
    shown = settings.redacted()

    # then
    assert SECRET not in repr(shown)
    assert SENTINEL_SECRET not in repr(shown)
    assert shown["redis_password"] == "**********"
    assert shown["redis_sentinel_password"] == "**********"
    assert shown["redis_sentinels"] == SENTINELS
    assert shown["redis_db"] == 2


@pytest.mark.usefixtures("clean_env")
def test_an_invalid_secret_is_never_echoed() -> None:
    # given / when: a password TOML would give as a table
    message = refusal({"redis_sentinels": SENTINELS, "redis_password": {"value": SECRET}})

    # then
    assert message.startswith("PACING_REDIS_PASSWORD is invalid")
    assert SECRET not in message


# --- the Celery keys ---------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_plain_mode_gives_celery_the_urls_as_before() -> None:
    # given
    settings = load_settings({"broker_url": "redis://:pw@10.0.0.9:6379/2"})

    # when
    config = celery_redis_config(settings)

    # then
    assert config == {
        "broker_url": "redis://:pw@10.0.0.9:6379/2",
        "result_backend": "redis://:pw@10.0.0.9:6379/2",
        "broker_transport_options": {"visibility_timeout": 300},
        "result_backend_transport_options": {"visibility_timeout": 300},
    }


@pytest.mark.usefixtures("clean_env")
def test_plain_mode_verifies_rediss_certificates_unless_the_url_chooses() -> None:
    # given
    settings = load_settings(
        {
            "broker_url": "rediss://:pw@redis.example:6380/0",
            "result_backend": "rediss://:pw@redis.example:6380/1?ssl_cert_reqs=optional",
        }
    )

    # when
    config = celery_redis_config(settings)

    # then
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert "redis_backend_use_ssl" not in config


@pytest.mark.usefixtures("clean_env")
def test_sentinel_mode_gives_celery_one_url_per_sentinel_and_the_master_name() -> None:
    # given
    settings = sentinel_settings(
        redis_master_name="pacing-eu",
        redis_db=3,
        redis_password=SECRET,
        redis_sentinel_password=SENTINEL_SECRET,
    )

    # when
    config = celery_redis_config(settings)

    # then every URL carries the servers' password and the database (kombu reads them from
    # whichever URL it connected through), the Sentinels' password goes in sentinel_kwargs
    urls = ";".join(
        f"sentinel://:TOPSECRET-redis%2Fpass%40word@{address}/3"
        for address in ("10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26380")
    )
    sentinels = {
        "password": SENTINEL_SECRET,
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
    }
    assert config == {
        "broker_url": urls,
        "result_backend": urls,
        "broker_transport_options": {
            "master_name": "pacing-eu",
            "sentinel_kwargs": sentinels,
            "visibility_timeout": 300,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
            "socket_keepalive": True,
            "health_check_interval": 4,
        },
        "result_backend_transport_options": {
            "master_name": "pacing-eu",
            "sentinel_kwargs": sentinels,
            "visibility_timeout": 300,
        },
        "redis_socket_timeout": 5.0,
        "redis_socket_connect_timeout": 2.0,
        "redis_socket_keepalive": True,
    }


@pytest.mark.usefixtures("clean_env")
def test_sentinel_mode_with_tls_verifies_every_certificate() -> None:
    # given
    settings = sentinel_settings(redis_tls=True, redis_tls_ca_file="/etc/ssl/redis-ca.pem")

    # when
    config = celery_redis_config(settings)

    # then the servers (broker and backend) and the Sentinels are all verified
    verified = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ssl/redis-ca.pem"}
    assert config["broker_use_ssl"] == verified
    assert config["redis_backend_use_ssl"] == verified
    for options in ("broker_transport_options", "result_backend_transport_options"):
        assert config[options]["sentinel_kwargs"] == {
            "ssl": True,
            **verified,
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
        }
    assert "sentinel://10.0.0.1:26379/0" in config["broker_url"]  # no password: none in URLs


@pytest.mark.usefixtures("clean_env")
def test_the_service_celery_config_uses_the_sentinel_keys() -> None:
    # given
    settings = sentinel_settings(redis_password=SECRET)

    # when
    config = celery_config(settings)

    # then
    assert config["broker_url"].startswith("sentinel://")
    assert config["result_backend"] == config["broker_url"]
    assert config["broker_transport_options"]["master_name"] == "pacing"
    assert config["redis_backend_health_check_interval"] == 10  # the service's own keys stay


@pytest.mark.usefixtures("clean_env")
def test_celery_and_kombu_read_the_sentinel_keys_as_meant() -> None:
    # given a Celery app configured with them (nothing connects)
    settings = sentinel_settings(
        redis_db=5, redis_password=SECRET, redis_sentinel_password=SENTINEL_SECRET, redis_tls=True
    )
    app = Celery("sentinel-config-test", set_as_current=False)
    app.conf.update(celery_redis_config(settings))

    # when
    backend = app.backend
    broker = app.connection_for_write()
    sentinel = backend._get_sentinel_instance(**backend.connparams)

    # then the result backend asks all three Sentinels, with their password, for the master of
    # database 5 with the servers' password, over TLS
    assert type(backend).__name__ == "SentinelBackend"
    assert [(h["host"], h["port"]) for h in backend.connparams["hosts"]] == sentinel_addresses(
        settings
    )
    assert backend.connparams["db"] == 5
    assert backend.connparams["password"] == SECRET
    assert backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    connection_class = backend.connparams["connection_class"]
    assert issubclass(connection_class, SentinelManagedConnection)
    assert issubclass(connection_class, redis.SSLConnection)
    assert [c.connection_pool.connection_kwargs["password"] for c in sentinel.sentinels] == [
        SENTINEL_SECRET
    ] * 3
    # and the broker is kombu's Sentinel transport over the same three, with TLS
    assert broker.transport_cls == "sentinel"
    assert len(broker.alt) == 3
    assert broker.password == SECRET
    assert broker.virtual_host == "5"
    assert broker.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # and what Celery shows hides both passwords
    shown = app.conf.humanize(with_defaults=False, censored=True)
    assert "TOPSECRET" not in shown
    assert "TOPSECRET" not in backend.as_uri()
    assert "TOPSECRET" not in broker.as_uri()
    app.close()


# --- the service's client ----------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_the_plain_client_is_todays_url_client() -> None:
    # given
    settings = load_settings({"redis_url": "redis://:pw@10.0.0.8:6379/3"})

    # when
    client = redis_client(settings)

    # then
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.8", 6379, 3)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 2.0)
    assert kwargs["health_check_interval"] == 10
    client.close()


@pytest.mark.usefixtures("clean_env")
def test_the_sentinel_client_asks_the_sentinels_for_the_master() -> None:
    # given
    settings = sentinel_settings(
        redis_master_name="pacing-eu",
        redis_db=6,
        redis_password=SECRET,
        redis_sentinel_password=SENTINEL_SECRET,
        redis_tls=True,
        redis_tls_ca_file="/etc/ssl/redis-ca.pem",
    )

    # when
    client = redis_client(settings)

    # then
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "pacing-eu"
    assert pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"]) == (6, SECRET)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 2.0)
    assert kwargs["health_check_interval"] == 10
    assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"]) == (
        ssl.CERT_REQUIRED,
        "/etc/ssl/redis-ca.pem",
    )
    sentinels = pool.sentinel_manager.sentinels
    assert [
        (c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
        for c in sentinels
    ] == sentinel_addresses(settings)
    sentinel_kwargs = sentinels[0].connection_pool.connection_kwargs
    assert sentinel_kwargs["password"] == SENTINEL_SECRET
    assert issubclass(sentinels[0].connection_pool.connection_class, redis.SSLConnection)
    client.close()


@pytest.mark.usefixtures("clean_env")
def test_the_plain_topology_names_the_address_without_the_password() -> None:
    # given
    settings = load_settings({"broker_url": f"redis://:{SENTINEL_SECRET}@10.0.0.9:6390/2"})

    # when
    topology = redis_topology(settings)

    # then
    assert topology == {"mode": "single", "address": "10.0.0.9:6390"}
