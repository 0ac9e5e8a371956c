"""Planted canary secrets never appear in any output of a running cluster.

The cluster of tests/reliability/harness.py runs with a password on Redis and on PostgreSQL
(SCRAM, so the password really is used), OAuth2 client credentials against the simulator, a
static engagement token and a Flower password. It paces, goes through the error paths that
produce messages (engagement 5xx, a revoked token, both Stat Servers and the database down),
and then every output is searched for every secret and every OAuth token the simulator issued:
the process logs, every key in Redis (broker messages and task arguments included), every row
of the history database, Flower's task list and the operators' CLI.
"""

from __future__ import annotations

import base64
import secrets as random_secrets
import time
from typing import Any

import orjson
import psycopg
import pytest
import redis
import requests
from click.testing import CliRunner

from pacing.cli import main
from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.reliability.harness import (
    RECOVERY_TIMEOUT_SECONDS,
    Cluster,
    Secrets,
    _wait,
    running_cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def canary(kind: str) -> str:
    return f"Canary{kind}{random_secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def planted() -> Secrets:
    return Secrets(
        redis_password=canary("Redis"),
        postgres_password=canary("Postgres"),
        client_secret=canary("Client"),
        engagement_token=canary("Token"),
        flower_password=canary("Flower"),
    )


@pytest.fixture(scope="module")
def outputs(planted: Secrets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the cluster through its error paths, then collect every output."""
    workdir = tmp_path_factory.mktemp("canary")
    collected: dict[str, Any] = {}
    with running_cluster(workdir, secrets=planted) as cluster:
        flower = cluster.start_flower()
        exercise_error_paths(cluster)
        collected["flower_unauthenticated"] = [
            requests.get(f"{flower}{path}", timeout=LOOPBACK_TIMEOUT_SECONDS).status_code
            for path in ("/", "/api/tasks", "/api/workers")
        ]
        collected["flower"] = requests.get(
            f"{flower}/api/tasks",
            auth=("admin", planted.flower_password),
            timeout=LOOPBACK_TIMEOUT_SECONDS,
        ).text
        collected["redis"] = dump_redis(cluster.redis)
        collected["history"] = dump_postgres(cluster.postgres.dsn)
        collected["cli"] = run_cli(cluster)
        collected["tokens"] = list(cluster.simulator.app._tokens)
        collected["published"] = len(cluster.published())
    collected["logs"] = {
        path.name: path.read_text(errors="replace") for path in (workdir / "logs").glob("*.log")
    }
    return collected


def exercise_error_paths(cluster: Cluster) -> None:
    """Each fault until the cluster has gone through its error path (not for a fixed time)."""
    started = time.time()
    cluster.control({"engagement": {"mode": "error_500"}})
    cluster.wait_for_cycle(
        lambda e: e["started_at"] >= started and e["status"] == "failed",
        what="a publish failed against the engagement platform's 500s",
    )
    revoked = time.time()
    cluster.control({"oauth": {"revoke": True}, "engagement": {"mode": "ok"}})
    # a publish gets through only with a token fetched after the revocation (the 401 path)
    cluster.wait_for_publishes(1, after_time=revoked, timeout=RECOVERY_TIMEOUT_SECONDS)
    down = time.time()
    cluster.control({"stat_server": {"primary": "down", "backup": "down"}})
    cluster.wait_for_cycle(
        lambda e: e["shards_started_at"] >= down and e["shards_unanswered"] > 0,
        what="a shard no Stat Server answered",
    )
    cluster.control({"clear": True})
    logged = {p.name: p.log_path.stat().st_size for p in cluster.stack.processes}
    cluster.postgres.stop()
    try:
        _wait(
            lambda: any(
                b"HistoryUnavailable" in p.log_path.read_bytes()[logged.get(p.name, 0) :]
                for p in cluster.stack.processes
            ),
            timeout=RECOVERY_TIMEOUT_SECONDS,
            what="an audit failing against the stopped database",
        )
    finally:
        cluster.postgres.start()
    cluster.wait_for_publishes(3, after_time=time.time(), timeout=RECOVERY_TIMEOUT_SECONDS)


def dump_redis(client: redis.Redis) -> str:
    """Every value of every key, with the base64 bodies of Celery messages decoded."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[bytes] = [key]
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"hash":
            values.extend(b for pair in client.hgetall(key).items() for b in pair)
        elif kind == b"list":
            values.extend(client.lrange(key, 0, -1))
        elif kind == b"set":
            values.extend(client.smembers(key))
        elif kind == b"zset":
            values.extend(client.zrange(key, 0, -1))
        elif kind == b"stream":
            values.extend(
                b for _, fields in client.xrange(key) for pair in fields.items() for b in pair
            )
        for value in values:
            parts.append(value)
            parts.extend(decoded_bodies(value))
    return b"\n".join(parts).decode("utf-8", errors="replace")


def decoded_bodies(value: bytes) -> list[bytes]:
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return []
    if isinstance(message, list) and message:  # kombu's unacked entries: [message, ...]
        message = message[0]
    if isinstance(message, dict) and isinstance(message.get("body"), str):
        try:
            return [base64.b64decode(message["body"])]
        except ValueError:
            return []
    return []


def dump_postgres(dsn: str) -> str:
    rows: list[str] = []
    with psycopg.connect(dsn) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            query = psycopg.sql.SQL("SELECT * FROM {}").format(psycopg.sql.Identifier(table))
            rows.extend(repr(row) for row in connection.execute(query))
    return "\n".join(rows)


def run_cli(cluster: Cluster) -> str:
    env = {f"PACING_{k.upper()}": v for k, v in cluster.values.items()}
    runner = CliRunner()
    output = []
    for command in (["status", "--json"], ["cycles", "--last", "20"], ["targets", "list"]):
        result = runner.invoke(main, command, env=env)
        output.append(result.output)
    # a database that does not exist: the error message must not echo the URL's password
    wrong = {**env, "PACING_DATABASE_URL": cluster.values["database_url"] + "-wrong"}
    result = runner.invoke(main, ["cycles", "--last", "1"], env=wrong)
    output.append(result.output)
    return "\n".join(output)


def test_the_cluster_really_ran_with_the_planted_credentials(outputs: dict[str, Any]) -> None:
    # the search below is only meaningful if every output was produced with the secrets in use
    assert outputs["published"] > 5
    assert outputs["tokens"], "no OAuth token was issued: OAuth was not used"
    assert "pacing.refresh" in outputs["flower"]
    assert "pacing.publish_cycle" in outputs["redis"] or "publish" in outputs["history"]
    assert outputs["history"]
    assert all(outputs["logs"].values())


def test_flower_answers_nothing_without_credentials(outputs: dict[str, Any]) -> None:
    assert outputs["flower_unauthenticated"] == [401, 401, 401]


@pytest.mark.parametrize("where", ["logs", "redis", "history", "flower", "cli"])
def test_no_secret_appears_anywhere(outputs: dict[str, Any], planted: Secrets, where: str) -> None:
    text = outputs[where]
    if isinstance(text, dict):
        text = "\n".join(f"== {name}\n{body}" for name, body in text.items())
    found = [secret for secret in [*planted.all(), *outputs["tokens"]] if secret and secret in text]

    assert found == [], f"secrets found in {where}"


def test_the_search_finds_a_secret_when_one_is_there(
    outputs: dict[str, Any], planted: Secrets
) -> None:
    # control: the same search over a text that does contain one of the secrets
    text = outputs["history"] + f"\nleaked {planted.postgres_password}\n"

    assert [s for s in planted.all() if s in text] == [planted.postgres_password]
