"""``pacing up`` binds every listening socket of its stack to loopback, and Flower wants a password.

A real ``pacing up`` (its own redis-server on a free port, the simulator, one node, Flower) runs
in a temporary directory; the listening TCP sockets of every process it started are read from
``/proc`` and must all be on 127.0.0.1. Ctrl-C (SIGINT) must then stop every one of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.http_stub import LOOPBACK_TIMEOUT_SECONDS
from tests.support import free_port, unavailable, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _proc_net_tcp() -> None:
    if not Path("/proc/net/tcp").exists():
        unavailable("reads the listening sockets from /proc/net/tcp (Linux only)")


LISTEN = "0A"


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket held by ``pids``."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in inodes:
                address, port = local.split(":")
                found.add((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:  # IPv4, little-endian
        return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    if hex_address == "0" * 32:
        return "::"
    if hex_address == "00000000000000000000000001000000":
        return "::1"
    return hex_address


def session_members(session_leader: int) -> set[int]:
    """``pacing up`` and everything it started (their process groups are their own sessions)."""
    members = {session_leader}
    changed = True
    while changed:
        changed = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                raw = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            ppid = int(raw.rsplit(")", 1)[1].split()[1])
            if ppid in members and int(name) not in members:
                members.add(int(name))
                changed = True
    return members


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    sim = f"http://127.0.0.1:{free_port()}"
    flower_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PACING_")},
        "PACING_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing there: it starts one
        "PACING_DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "PACING_STAT_SERVER_PRIMARY_URL": f"{sim}/statserver/primary",
        "PACING_STAT_SERVER_BACKUP_URL": f"{sim}/statserver/backup",
        "PACING_ENGAGEMENT_URL": f"{sim}/engagement",
        "PACING_KEY_PREFIX": "loopback-test",
    }
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pacing.cli",
            "up",
            "--targets",
            "20",
            "--nodes",
            "1",
            "--flower-port",
            str(flower_port),
            "--workdir",
            str(tmp_path / "stack"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process, flower_port, tmp_path / "up.log"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()


def test_pacing_up_listens_on_loopback_only_and_flower_needs_a_password(
    stack: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    process, flower_port, log = stack

    # given: the stack is up (Flower answers last)
    def flower_up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{flower_port}/", timeout=2).status_code > 0
        except requests.RequestException:
            return False

    wait_for(flower_up, timeout=240, interval=1, message="pacing up did not start Flower")
    members = session_members(process.pid)

    # when
    addresses = listening_addresses(members)

    # then: Redis, the simulator, Flower and the workers listen on loopback only
    ports = {port for _, port in addresses}
    assert flower_port in ports
    assert len(ports) >= 3, addresses  # redis-server, simulator, Flower at least
    assert {address for address, _ in addresses} <= {"127.0.0.1", "::1"}, addresses
    # ... and Flower answers nothing without the password pacing up made for this run
    assert (
        requests.get(
            f"http://127.0.0.1:{flower_port}/api/tasks", timeout=LOOPBACK_TIMEOUT_SECONDS
        ).status_code
        == 401
    )

    # when: Ctrl-C
    process.send_signal(signal.SIGINT)
    process.wait(timeout=90)

    # then: nothing it started is left
    wait_for(
        lambda: not [pid for pid in members if Path(f"/proc/{pid}").exists() and _alive(pid)],
        timeout=30,
        message="pacing up left processes behind",
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
