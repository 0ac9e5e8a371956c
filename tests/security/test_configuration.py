"""Security of the configuration and of the inputs from outside (docs/security.md).

* an ``http://`` engagement or auth URL, or disabled TLS verification, outside development mode
  stops a real ``celery worker`` at start-up with a message naming the setting;
* ``rediss://`` Redis URLs verify certificates (kombu alone would not) and PostgreSQL URLs keep
  ``sslmode``; passwords in URLs are hidden wherever the settings are shown;
* no SQL is built from strings in the service, and target ids from outside are validated before
  they reach a query, a request or a payload.
"""

from __future__ import annotations

import ast
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery
from click.testing import CliRunner

from pacing.cli import main
from pacing.history import create_history_engine, last_cycles, safe_url, target_history
from pacing.settings import load_settings
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Canary-Pw-7f3a9c"


# --- start-up refusals (a real worker process) --------------------------------------------------


def start_worker(env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACING_")}
    env.update(
        {
            "PACING_ENGAGEMENT_TOKEN": "a-token",
            "PACING_BROKER_URL": "redis://127.0.0.1:1/0",  # never reached: start-up stops first
            **env_overrides,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel=INFO"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (
            {"PACING_ENGAGEMENT_URL": "http://engage.example/api"},
            "PACING_ENGAGEMENT_URL must use https://",
        ),
        (
            {
                "PACING_ENGAGEMENT_URL": "https://engage.example/api",
                "PACING_AUTH_URL": "http://engage.example/oauth/token",
                "PACING_CLIENT_ID": "pacing",
                "PACING_CLIENT_SECRET": SECRET,
            },
            "PACING_AUTH_URL must use https://",
        ),
        (
            {
                "PACING_ENGAGEMENT_URL": "https://engage.example/api",
                "PACING_ENGAGEMENT_VERIFY_TLS": "false",
            },
            "PACING_ENGAGEMENT_VERIFY_TLS may only be false in development mode",
        ),
    ],
)
def test_clear_text_or_unverified_publishing_stops_a_production_worker_at_start_up(
    overrides: dict[str, str], setting: str
) -> None:
    # when
    finished = start_worker({"PACING_ENVIRONMENT": "production", **overrides})

    # then: it exits with a message that names the setting and the fix, and no secret
    assert finished.returncode != 0
    output = finished.stdout + finished.stderr
    assert setting in output
    assert "ready." not in output
    assert SECRET not in output


def test_the_same_https_settings_are_accepted_in_production() -> None:
    # given: https and a token (the broker is unreachable, so the worker stops after start-up)
    settings = load_settings(
        {
            "environment": "production",
            "engagement_url": "https://engage.example/api",
            "engagement_token": "a-token",
        }
    )

    # then: TLS verification is on by default
    assert settings.engagement_verify_tls is True


# --- Flower and the metrics exporter outside development ---------------------------------------

PRODUCTION = {
    "PACING_ENVIRONMENT": "production",
    "PACING_ENGAGEMENT_URL": "https://engage.example/api",
}


def run_briefly(argv: list[str], env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACING_")}
    env.update({"PACING_ENGAGEMENT_TOKEN": "a-token", **env_overrides})
    # a refusal exits at once; a server that starts anyway runs until the timeout kills it
    try:
        return subprocess.run(
            argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"{argv[2:]} started instead of refusing") from expired


def test_flower_refuses_to_start_without_credentials_outside_development() -> None:
    finished = run_briefly(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "flower",
            "--address=127.0.0.1",
            f"--port={free_port()}",
        ],
        PRODUCTION,
    )

    assert finished.returncode != 0
    assert "Flower needs credentials outside development mode" in (
        finished.stdout + finished.stderr
    )


def test_the_metrics_exporter_refuses_to_start_without_credentials_outside_development() -> None:
    finished = run_briefly(
        [sys.executable, "-m", "pacing.cli", "exporter", "--port", str(free_port())], PRODUCTION
    )

    assert finished.returncode != 0
    assert "PACING_METRICS_BASIC_AUTH is required" in finished.stdout + finished.stderr


def test_the_metrics_exporter_answers_only_with_its_credentials(tmp_path: Path) -> None:
    # given: an exporter in production mode with credentials, on loopback
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACING_")}
    env.update(
        {
            **PRODUCTION,
            "PACING_ENGAGEMENT_TOKEN": "a-token",
            "PACING_METRICS_BASIC_AUTH": f"prom:{SECRET}",
            "PACING_BROKER_URL": os.environ["PACING_BROKER_URL"],
            "PACING_KEY_PREFIX": f"exporter-{port}",
        }
    )
    log = (tmp_path / "exporter.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pacing.cli", "exporter", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "exporter.log").read_text()
            try:
                return requests.get(f"{base}/healthz", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(healthy, timeout=60, interval=0.5, message="the exporter did not start")

        # then
        assert requests.get(f"{base}/metrics", timeout=LOOPBACK_TIMEOUT_SECONDS).status_code == 401
        assert (
            requests.get(
                f"{base}/metrics", auth=("prom", "wrong"), timeout=LOOPBACK_TIMEOUT_SECONDS
            ).status_code
            == 401
        )
        answer = requests.get(
            f"{base}/metrics", auth=("prom", SECRET), timeout=LOOPBACK_TIMEOUT_SECONDS
        )
        assert answer.status_code == 200
        assert SECRET not in answer.text
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert SECRET not in (tmp_path / "exporter.log").read_text()


# --- Redis and PostgreSQL URLs: passwords and TLS -----------------------------------------------


def celery_app(broker_url: str) -> Celery:
    from tasks.app import celery_config

    app = Celery("security-test")
    app.conf.update(celery_config(load_settings({"broker_url": broker_url})))
    return app


def test_a_rediss_url_verifies_the_redis_certificate_by_default() -> None:
    # given: a TLS Redis URL with a password and nothing said about certificates
    app = celery_app(f"rediss://:{SECRET}@redis.example:6380/0")

    # then: the broker and the result backend both require a valid certificate
    assert app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert app.backend.connparams["password"] == SECRET


def test_a_rediss_url_may_choose_its_own_certificate_policy() -> None:
    app = celery_app("rediss://:pw@redis.example:6380/0?ssl_cert_reqs=required")

    assert app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_the_service_redis_client_verifies_rediss_certificates() -> None:
    from pacing.services import redis_client

    client = redis_client(f"rediss://:{SECRET}@redis.example:6380/0")
    connection = client.connection_pool.make_connection()

    # redis-py's SSLConnection defaults to "required" unless the URL says otherwise
    assert isinstance(connection, redis.connection.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert client.connection_pool.connection_kwargs["password"] == SECRET
    client.close()


def test_a_postgres_url_keeps_its_password_and_sslmode_but_never_shows_the_password() -> None:
    # given
    url = f"postgresql+psycopg://pacing:{SECRET}@db.example:5432/pacing?sslmode=verify-full"
    settings = load_settings({"database_url": url})

    # when
    engine = create_history_engine(url)

    # then
    assert engine.url.query["sslmode"] == "verify-full"
    assert engine.url.password == SECRET
    assert SECRET not in str(engine.url)
    assert SECRET not in repr(engine)
    assert SECRET not in str(settings.redacted())
    assert SECRET not in safe_url(url)
    engine.dispose()


# --- SQL is never built from strings ------------------------------------------------------------

SQL_CALLS = {"execute", "exec_driver_sql", "text", "executemany", "copy"}


def _non_constant_sql(tree: ast.AST) -> list[int]:
    """Lines where a SQL-taking call gets a string built at run time (f-string, %, +, format).

    An f-string whose values are only module constants (UPPER_CASE names) is allowed: it cannot
    carry input.
    """
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name not in SQL_CALLS:
            continue
        first = node.args[0]
        if isinstance(first, ast.JoinedStr):
            names = [
                n.id
                for value in first.values
                if isinstance(value, ast.FormattedValue)
                for n in ast.walk(value.value)
                if isinstance(n, ast.Name)
            ]
            if all(n.isupper() for n in names):
                continue
            lines.append(node.lineno)
        elif isinstance(first, ast.BinOp) or (
            isinstance(first, ast.Call) and getattr(first.func, "attr", "") == "format"
        ):
            lines.append(node.lineno)
    return lines


def test_no_sql_is_built_from_strings_in_the_service() -> None:
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in sorted([*(ROOT / "pacing").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")])
        if (lines := _non_constant_sql(ast.parse(path.read_text(), str(path))))
    }

    assert offenders == {}


def test_the_sql_check_catches_a_query_built_from_input() -> None:
    # given: what the check must refuse
    sources = [
        "connection.execute(text(f'SELECT * FROM decisions WHERE target_id = {target_id}'))",
        "cursor.execute('SELECT * FROM t WHERE id = %s' % target_id)",
        "cursor.execute('SELECT * FROM t WHERE id = ' + target_id)",
        "cursor.execute('SELECT * FROM t WHERE id = {}'.format(target_id))",
    ]

    # then
    for source in sources:
        assert _non_constant_sql(ast.parse(source)), source


# --- target ids from outside --------------------------------------------------------------------

HOSTILE_IDS = ["x' OR '1'='1", "a; DROP TABLE decisions; --", "../../etc/passwd", "", "a b", "é"]


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    monkeypatch.setenv("PACING_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    return url


@pytest.mark.parametrize("target_id", HOSTILE_IDS)
def test_the_cli_refuses_a_hostile_target_id_before_any_query(history: str, target_id: str) -> None:
    runner = CliRunner()

    for command in (["history", target_id], ["targets", "enable", target_id]):
        result = runner.invoke(main, command)
        assert result.exit_code == 2, (command, result.output)


def test_a_targets_file_with_a_hostile_id_is_refused_as_a_whole(
    history: str, tmp_path: Path
) -> None:
    # given
    path = tmp_path / "targets.csv"
    path.write_text("id,name\nsales-1,Sales\nx' OR '1'='1,Evil\n", encoding="utf-8")
    runner = CliRunner()

    # when
    result = runner.invoke(main, ["targets", "import", str(path)])

    # then: nothing was imported
    assert result.exit_code == 2, result.output
    listed = runner.invoke(main, ["targets", "list", "--format", "json"])
    assert listed.stdout.strip() in ("[]", "")


def test_a_hostile_id_in_a_history_query_is_only_ever_a_value(history: str) -> None:
    # given: the repository called directly, below the CLI's validation
    engine = create_history_engine(history)

    # when: an id that would widen the query if it were pasted into SQL
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    points = target_history(engine, "x' OR '1'='1", since=now - timedelta(days=1), until=now)

    # then: it matches nothing, and the tables are intact
    assert list(points) == []
    assert last_cycles(engine, 10) == []
    engine.dispose()
