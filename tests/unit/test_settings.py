"""Settings: defaults, derived values, the cross-field rules, the TOML file and redaction.

The suite's ``pytest_configure`` puts PACING_* variables into the environment; the ``clean_env``
fixture removes them so a test sees exactly the values it gives.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import pydantic
import pytest

from pacing.errors import ConfigurationError
from pacing.settings import CONFIG_FILE_VARIABLE, Settings, load_settings, redact_url

SECRET = "TOPSECRET-value-0123456789"
_FIX_VERBS = ("set", "lower", "use", "install", "give", "fix", "raise", "list")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PACING_* variable in the environment (restored after the test)."""
    for name in list(os.environ):
        if name.startswith("PACING_"):
            monkeypatch.delenv(name)
    return monkeypatch


def refusal(overrides: dict[str, Any]) -> str:
    """The message of the ConfigurationError that ``overrides`` provoke."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(overrides)
    return str(caught.value)


def assert_one_fixing_sentence(message: str, variable: str) -> None:
    """A single sentence, starting with the PACING_ variable, ending with how to fix it."""
    assert message.startswith(variable), message
    assert message.endswith("."), message
    assert "\n" not in message
    assert re.search(r"\.\s+[A-Z]", message) is None, f"more than one sentence: {message}"
    fix = message.rsplit(";", 1)[-1]
    assert any(verb in fix for verb in _FIX_VERBS), f"no fix given: {message}"


# --- defaults and derived values ---------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_defaults_are_a_development_stack_on_loopback() -> None:
    # given no PACING_* variable at all
    # when
    settings = load_settings()

    # then
    assert settings.environment == "development"
    assert settings.is_development
    assert settings.node_name == socket.gethostname()
    assert settings.refresh_period_seconds == 2.0
    assert settings.shard_size == 2500
    assert settings.full_snapshot_every == 30
    assert settings.history_retention_days == 30
    assert settings.engagement_verify_tls is True
    assert settings.engagement_token is None
    assert settings.key_prefix == "pacing"
    assert settings.sqlite_path == Path("var/pacing-history.db")


@pytest.mark.usefixtures("clean_env")
def test_derived_values_follow_the_refresh_period() -> None:
    # given the default refresh period of 2 s and nothing else set
    # when
    settings = load_settings()

    # then
    assert settings.lease_ttl == pytest.approx(6.0)  # 3 × period
    assert settings.cycle_deadline == pytest.approx(4.0)  # 2 × period
    assert settings.stats_max_age == pytest.approx(6.0)  # 3 × period
    assert settings.http_read_timeout == pytest.approx(1.2)  # 0.6 × period
    assert settings.effective_result_backend == settings.broker_url
    assert settings.effective_redis_url == settings.broker_url


@pytest.mark.usefixtures("clean_env")
def test_derived_values_scale_with_a_shorter_period() -> None:
    # given
    overrides = {"refresh_period_seconds": 0.5}

    # when
    settings = load_settings(overrides)

    # then
    assert settings.lease_ttl == pytest.approx(1.5)
    assert settings.cycle_deadline == pytest.approx(1.0)
    assert settings.stats_max_age == pytest.approx(1.5)
    assert settings.http_read_timeout == pytest.approx(0.3)


@pytest.mark.usefixtures("clean_env")
def test_explicit_values_win_over_derived_ones() -> None:
    # given
    overrides = {
        "refresh_period_seconds": 2.0,
        "lease_ttl_seconds": 5.0,
        "cycle_deadline_seconds": 3.0,
        "stats_max_age_seconds": 9.0,
        "http_read_timeout_seconds": 0.8,
        "broker_url": "redis://broker:6379/4",
        "result_backend": "redis://results:6379/5",
        "redis_url": "redis://state:6379/6",
    }

    # when
    settings = load_settings(overrides)

    # then
    assert settings.lease_ttl == 5.0
    assert settings.cycle_deadline == 3.0
    assert settings.stats_max_age == 9.0
    assert settings.http_read_timeout == 0.8
    assert settings.effective_result_backend == "redis://results:6379/5"
    assert settings.effective_redis_url == "redis://state:6379/6"


@pytest.mark.usefixtures("clean_env")
def test_a_non_sqlite_database_has_no_sqlite_path() -> None:
    # given
    overrides = {"database_url": "postgresql+psycopg://pacing@db:5432/pacing"}

    # when
    settings = load_settings(overrides)

    # then
    assert settings.sqlite_path is None


@pytest.mark.usefixtures("clean_env")
def test_settings_are_frozen() -> None:
    # given
    settings = load_settings()

    # when / then
    with pytest.raises(pydantic.ValidationError):
        settings.shard_size = 10  # type: ignore[misc]
    assert settings.shard_size == 2500


# --- the cross-field rules ---------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("overrides", "variable", "fix"),
    [
        pytest.param(
            {"refresh_period_seconds": 2.0, "lease_ttl_seconds": 2.0},
            "PACING_LEASE_TTL_SECONDS",
            "e.g. 6",
            id="lease-ttl-not-longer-than-period",
        ),
        pytest.param(
            {"refresh_period_seconds": 2.0, "cycle_deadline_seconds": 1.5},
            "PACING_CYCLE_DEADLINE_SECONDS",
            "e.g. 4",
            id="deadline-shorter-than-period",
        ),
        pytest.param(
            {"refresh_period_seconds": 2.0, "lease_ttl_seconds": 3.0, "cycle_deadline_seconds": 7},
            "PACING_CYCLE_DEADLINE_SECONDS",
            "raise PACING_LEASE_TTL_SECONDS",
            id="deadline-beyond-twice-the-lease",
        ),
        pytest.param(
            {"refresh_period_seconds": 1.0, "http_read_timeout_seconds": 1.6},
            "PACING_HTTP_READ_TIMEOUT_SECONDS",
            "lower it below",
            id="http-timeouts-longer-than-two-periods",
        ),
        pytest.param(
            {"stat_server_primary_url": "ftp://stats.example/primary"},
            "PACING_STAT_SERVER_PRIMARY_URL",
            "give a full URL",
            id="primary-url-not-http",
        ),
        pytest.param(
            {"stat_server_backup_url": "stats.example/backup"},
            "PACING_STAT_SERVER_BACKUP_URL",
            "give a full URL",
            id="backup-url-without-scheme",
        ),
        pytest.param(
            {"engagement_url": "localhost:8700"},
            "PACING_ENGAGEMENT_URL",
            "give a full URL",
            id="engagement-url-without-host",
        ),
        pytest.param(
            {"auth_url": "ldap://auth.example", "client_id": "c", "client_secret": "s"},
            "PACING_AUTH_URL",
            "give a full URL",
            id="auth-url-not-http",
        ),
        pytest.param(
            {"auth_url": "http://127.0.0.1:8700/oauth/token", "client_id": "pacing"},
            "PACING_CLIENT_ID",
            "set both",
            id="auth-url-without-client-secret",
        ),
        pytest.param(
            {"auth_url": "http://127.0.0.1:8700/oauth/token", "client_secret": "s"},
            "PACING_CLIENT_ID",
            "set both",
            id="auth-url-without-client-id",
        ),
        pytest.param(
            {"flower_basic_auth": "admin"},
            "PACING_FLOWER_BASIC_AUTH",
            "user:password",
            id="flower-auth-without-colon",
        ),
    ],
)
def test_each_cross_field_rule_refuses_naming_the_variable(
    overrides: dict[str, Any], variable: str, fix: str
) -> None:
    # given the inconsistent values in overrides
    # when
    message = refusal(overrides)

    # then
    assert_one_fixing_sentence(message, variable)
    assert fix in message


@pytest.mark.usefixtures("clean_env")
def test_the_lease_rule_quotes_both_values() -> None:
    # given
    overrides = {"refresh_period_seconds": 1.0, "lease_ttl_seconds": 0.8}

    # when
    message = refusal(overrides)

    # then
    assert message == (
        "PACING_LEASE_TTL_SECONDS (0.8) must be longer than PACING_REFRESH_PERIOD_SECONDS (1); "
        "set it to about 3 × the refresh period, e.g. 3."
    )


@pytest.mark.usefixtures("clean_env")
def test_boundary_values_of_the_rules_are_accepted() -> None:
    # given a deadline equal to the period and exactly twice the lease TTL
    overrides = {
        "refresh_period_seconds": 1.0,
        "lease_ttl_seconds": 1.01,
        "cycle_deadline_seconds": 2.02,
        "http_connect_timeout_seconds": 0.5,
        "http_read_timeout_seconds": 1.49,
    }

    # when
    settings = load_settings(overrides)

    # then
    assert settings.lease_ttl == 1.01
    assert settings.cycle_deadline == 2.02


@pytest.mark.usefixtures("clean_env")
def test_following_the_http_timeout_advice_gives_valid_settings() -> None:
    # given a connect timeout longer than the default and a too long read timeout
    base = {"refresh_period_seconds": 1.0, "http_connect_timeout_seconds": 1.0}
    message = refusal({**base, "http_read_timeout_seconds": 1.2})
    suggested = float(re.findall(r"below ([0-9.]+)\.$", message)[0])

    # when the operator sets the read timeout just below the suggested bound
    settings = load_settings({**base, "http_read_timeout_seconds": suggested - 0.1})

    # then it is accepted
    assert settings.http_read_timeout == pytest.approx(suggested - 0.1)


# --- production mode ---------------------------------------------------------------------------

PRODUCTION = {
    "environment": "production",
    "engagement_url": "https://engage.example/api",
    "engagement_token": "token",
}


@pytest.mark.usefixtures("clean_env")
def test_a_safe_production_configuration_loads() -> None:
    # given https, TLS verification and a token
    # when
    settings = load_settings(PRODUCTION)

    # then
    assert not settings.is_development
    assert settings.engagement_verify_tls is True


@pytest.mark.usefixtures("clean_env")
def test_production_accepts_oauth_client_credentials_instead_of_a_token() -> None:
    # given
    overrides = {
        **PRODUCTION,
        "engagement_token": None,
        "auth_url": "https://auth.example/token",
        "client_id": "pacing",
        "client_secret": "s",
    }

    # when
    settings = load_settings(overrides)

    # then
    assert settings.auth_url == "https://auth.example/token"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        pytest.param(
            {"engagement_url": "http://engage.example/api"},
            "PACING_ENGAGEMENT_URL",
            id="clear-text-engagement-url",
        ),
        pytest.param(
            {"auth_url": "http://auth.example/token", "client_id": "c", "client_secret": "s"},
            "PACING_AUTH_URL",
            id="clear-text-auth-url",
        ),
        pytest.param(
            {"engagement_verify_tls": False},
            "PACING_ENGAGEMENT_VERIFY_TLS",
            id="tls-verification-off",
        ),
        pytest.param(
            {"engagement_token": None},
            "PACING_ENGAGEMENT_TOKEN",
            id="no-credentials",
        ),
    ],
)
def test_production_refuses_unsafe_values(overrides: dict[str, Any], variable: str) -> None:
    # given a production configuration made unsafe by overrides
    # when
    message = refusal({**PRODUCTION, **overrides})

    # then
    assert_one_fixing_sentence(message, variable)


@pytest.mark.usefixtures("clean_env")
def test_development_allows_what_production_refuses() -> None:
    # given
    overrides = {
        "environment": "development",
        "engagement_url": "http://127.0.0.1:8700/engagement",
        "engagement_verify_tls": False,
        "engagement_token": None,
    }

    # when
    settings = load_settings(overrides)

    # then
    assert settings.engagement_verify_tls is False
    assert settings.engagement_token is None


# --- single-field errors and secrets -----------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_an_invalid_plain_value_is_named_and_echoed() -> None:
    # given
    overrides = {"shard_size": 0}

    # when
    message = refusal(overrides)

    # then
    assert message.startswith("PACING_SHARD_SIZE is invalid:")
    assert message.endswith("(got 0).")


def test_an_invalid_environment_variable_is_named(clean_env: pytest.MonkeyPatch) -> None:
    # given
    clean_env.setenv("PACING_SHARD_SIZE", "lots")

    # when
    message = refusal({})

    # then
    assert message.startswith("PACING_SHARD_SIZE is invalid:")
    assert "'lots'" in message


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("field", ["engagement_token", "client_secret", "flower_basic_auth"])
def test_an_invalid_secret_is_never_echoed(field: str) -> None:
    # given a secret of the wrong type (as a TOML file could give it)
    overrides = {field: [SECRET]}

    # when
    message = refusal(overrides)

    # then
    assert message.startswith(f"PACING_{field.upper()} is invalid")
    assert SECRET not in message
    assert "TOPSECRET" not in message
    assert "got" not in message


def test_a_refused_flower_password_is_not_echoed(clean_env: pytest.MonkeyPatch) -> None:
    # given a value without the user:password colon, from the environment
    clean_env.setenv("PACING_FLOWER_BASIC_AUTH", SECRET)

    # when
    message = refusal({})

    # then
    assert message.startswith("PACING_FLOWER_BASIC_AUTH")
    assert SECRET not in message


@pytest.mark.usefixtures("clean_env")
def test_a_refused_url_has_its_password_hidden() -> None:
    # given
    overrides = {"stat_server_primary_url": f"ftp://stats:{SECRET}@stats.example/primary"}

    # when
    message = refusal(overrides)

    # then
    assert message.startswith("PACING_STAT_SERVER_PRIMARY_URL ('ftp://stats:***@stats.example")
    assert SECRET not in message


def test_a_malformed_url_is_refused_by_name_without_echoing_secrets(
    clean_env: pytest.MonkeyPatch,
) -> None:
    # given
    clean_env.setenv("PACING_ENGAGEMENT_URL", "http://[::1")
    clean_env.setenv("PACING_ENGAGEMENT_TOKEN", SECRET)

    # when
    message = refusal({})

    # then
    assert message.startswith("PACING_ENGAGEMENT_URL")
    assert "TOPSE" not in message


# --- the TOML file -----------------------------------------------------------------------------


def test_a_toml_file_supplies_values(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # given
    config = tmp_path / "pacing.toml"
    config.write_text('shard_size = 100\nnode_name = "from-file"\nrefresh_period_seconds = 4.0\n')
    clean_env.setenv(CONFIG_FILE_VARIABLE, str(config))

    # when
    settings = load_settings()

    # then
    assert settings.shard_size == 100
    assert settings.node_name == "from-file"
    assert settings.lease_ttl == pytest.approx(12.0)


def test_the_environment_wins_over_the_toml_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given
    config = tmp_path / "pacing.toml"
    config.write_text('shard_size = 100\nnode_name = "from-file"\n')
    clean_env.setenv(CONFIG_FILE_VARIABLE, str(config))
    clean_env.setenv("PACING_NODE_NAME", "from-env")

    # when
    settings = load_settings()

    # then
    assert settings.node_name == "from-env"
    assert settings.shard_size == 100


def test_explicit_overrides_win_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    # given
    clean_env.setenv("PACING_NODE_NAME", "from-env")

    # when
    settings = load_settings({"node_name": "from-override"})

    # then
    assert settings.node_name == "from-override"


def test_an_unknown_key_in_the_toml_file_is_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given
    config = tmp_path / "pacing.toml"
    config.write_text("shard_sise = 100\n")
    clean_env.setenv(CONFIG_FILE_VARIABLE, str(config))

    # when
    message = refusal({})

    # then
    assert message.startswith("PACING_SHARD_SISE is invalid")


def test_a_secret_of_the_wrong_type_in_the_file_is_not_echoed(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given
    config = tmp_path / "pacing.toml"
    config.write_text("engagement_token = 987654321987\n")
    clean_env.setenv(CONFIG_FILE_VARIABLE, str(config))

    # when
    message = refusal({})

    # then
    assert message.startswith("PACING_ENGAGEMENT_TOKEN is invalid")
    assert "987654321987" not in message


# --- redaction ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_redacted_hides_secrets_and_url_passwords() -> None:
    # given
    settings = load_settings(
        {
            "engagement_token": SECRET,
            "auth_url": "http://127.0.0.1:8700/oauth/token",
            "client_id": "pacing",
            "client_secret": SECRET,
            "flower_basic_auth": f"admin:{SECRET}",
            "broker_url": f"redis://:{SECRET}@redis.example:6379/3",
            "database_url": f"postgresql+psycopg://pacing:{SECRET}@db.example:5432/pacing",
        }
    )

    # when
    shown = settings.redacted()

    # then
    assert SECRET not in repr(shown)
    assert shown["engagement_token"] == "**********"
    assert shown["client_secret"] == "**********"
    assert shown["flower_basic_auth"] == "**********"
    assert shown["broker_url"] == "redis://:***@redis.example:6379/3"
    assert shown["database_url"] == "postgresql+psycopg://pacing:***@db.example:5432/pacing"
    assert shown["client_id"] == "pacing"
    assert shown["shard_size"] == 2500
    assert set(shown) == set(Settings.model_fields)


@pytest.mark.usefixtures("clean_env")
def test_redacted_shows_absent_and_empty_secrets_as_such() -> None:
    # given
    settings = load_settings({"engagement_token": ""})

    # when
    shown = settings.redacted()

    # then
    assert shown["engagement_token"] == ""
    assert shown["client_secret"] is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
        ("https://user@host.example/x", "https://user@host.example/x"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        (
            "postgresql://u:pw@db:5432/pacing?sslmode=require",
            "postgresql://u:***@db:5432/pacing?sslmode=require",
        ),
        ("http://u:p@ss@host.example/path", "http://u:***@host.example/path"),
        ("sqlite:///var/pacing-history.db", "sqlite:///var/pacing-history.db"),
    ],
)
def test_redact_url_replaces_only_the_password(url: str, expected: str) -> None:
    # given url
    # when
    shown = redact_url(url)

    # then
    assert shown == expected
