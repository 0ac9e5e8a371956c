"""The in-process transport answers exactly as the simulator does over a socket.

One simulator, on a clock the test holds still, is asked the same things over loopback HTTP
and through :class:`pacing.simulator.transport.SimulatorTransport`; the answers must be the
same, down to the status codes, the gzip decoding and a reset connection.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import orjson
import pytest
import requests

from pacing.clients.stat_server import StatServerClient
from pacing.simulator import RunningSimulator, SimulatorConfig, start_simulator
from pacing.simulator.transport import SIMULATOR_BASE_URL, SimulatorTransport

pytestmark = pytest.mark.integration

TOKEN = "transport-token"
TIMEOUT = 30.0  # loopback answers in milliseconds; this only bounds a hung test


class StillClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    clock = StillClock()
    with start_simulator(SimulatorConfig(targets=300, seed=5, token=TOKEN), clock=clock) as running:
        yield running


@pytest.fixture
def over_socket() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def in_process(sim: RunningSimulator) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.mount(SIMULATOR_BASE_URL, SimulatorTransport(sim.app))
        yield session


def both(
    sim: RunningSimulator,
    over_socket: requests.Session,
    in_process: requests.Session,
    method: str,
    path: str,
    **kwargs: object,
) -> tuple[requests.Response, requests.Response]:
    socket_answer = over_socket.request(method, sim.base_url + path, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    local_answer = in_process.request(method, SIMULATOR_BASE_URL + path, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    return socket_answer, local_answer


def test_statistics_are_the_same_bytes_decoded_from_gzip(
    sim: RunningSimulator, over_socket: requests.Session, in_process: requests.Session
) -> None:
    # given: all 300 targets, a body large enough to be gzip-encoded
    ids = [*sim.world.target_ids(), "nobody-knows-me"]

    # when
    socket_answer, local_answer = both(
        sim,
        over_socket,
        in_process,
        "POST",
        "/statserver/primary/v1/statistics/query",
        json={"targets": ids},
        headers={"Accept-Encoding": "gzip"},
    )

    # then
    assert local_answer.status_code == socket_answer.status_code == 200
    assert local_answer.headers["Content-Encoding"] == "gzip"
    assert local_answer.json() == socket_answer.json()
    assert local_answer.json()["unknown"] == ["nobody-knows-me"]


def test_errors_and_routes_answer_alike(
    sim: RunningSimulator, over_socket: requests.Session, in_process: requests.Session
) -> None:
    cases: list[tuple[str, str, dict[str, object]]] = [
        ("GET", "/no/such/route", {}),
        ("GET", "/engagement/v1/pacing", {}),  # known path, wrong method
        ("POST", "/statserver/backup/v1/statistics/query", {"json": {"targets": "t"}}),
        ("POST", "/engagement/v1/pacing", {"data": b"{}"}),  # no bearer token
        ("POST", "/engagement/v1/pacing", {"data": gzip.compress(b"{not json")}),
        ("GET", "/sim/targets", {}),
    ]
    for method, path, kwargs in cases:
        socket_answer, local_answer = both(sim, over_socket, in_process, method, path, **kwargs)
        assert local_answer.status_code == socket_answer.status_code, path
        assert local_answer.json() == socket_answer.json(), path


def test_a_publish_through_the_transport_is_fenced_like_any_other(
    sim: RunningSimulator, in_process: requests.Session
) -> None:
    # given
    ids = sim.world.target_ids()[:3]
    body = {
        "seq": 7,
        "epoch": 1,
        "generated_at": sim.app.clock(),
        "refresh_period_ms": 2000,
        "kind": "full",
        "targets": [
            {
                "id": target_id,
                "channel": "chat",
                "proactive_budget": 2,
                "reactive_state": 1.0,
                "ready_capacity": 1,
                "reason": "ok",
            }
            for target_id in ids
        ],
        "channels": {"chat": {"proactive_budget": 6, "ready_capacity": 3}},
    }
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Encoding": "gzip",
        "Idempotency-Key": "7",
    }

    # when: the same seq twice
    first = in_process.post(
        SIMULATOR_BASE_URL + "/engagement/v1/pacing",
        data=gzip.compress(orjson.dumps(body)),
        headers=headers,
        timeout=TIMEOUT,
    )
    again = in_process.post(
        SIMULATOR_BASE_URL + "/engagement/v1/pacing",
        data=gzip.compress(orjson.dumps(body)),
        headers=headers,
        timeout=TIMEOUT,
    )

    # then: applied once, with every target's counters; the repeat is refused by the fence
    assert first.status_code == 200
    assert first.json()["accepted_seq"] == 7
    assert len(first.json()["feedback"]) == len(sim.world.target_ids())
    assert again.status_code == 409
    assert again.json() == {"error": "stale_seq", "last_seq": 7, "last_epoch": 1}
    assert sim.app.fence_json()["accepted_publishes"] == 1


def test_a_server_that_is_down_resets_and_the_client_fails_over(
    sim: RunningSimulator, in_process: requests.Session
) -> None:
    # given: the primary resets every connection
    sim.app.faults.stat_server["primary"] = "down"
    client = StatServerClient(
        primary_url=SIMULATOR_BASE_URL + "/statserver/primary",
        backup_url=SIMULATOR_BASE_URL + "/statserver/backup",
        session=in_process,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        max_age_seconds=6.0,
        failback_seconds=30.0,
        clock=sim.app.clock,
    )

    # when
    with pytest.raises(requests.ConnectionError):
        in_process.post(
            SIMULATOR_BASE_URL + "/statserver/primary/v1/statistics/query",
            json={"targets": ["x"]},
            timeout=TIMEOUT,
        )
    batch = client.fetch(sim.world.target_ids()[:10])

    # then: the backup answered within the same call
    assert bool(batch.valid().all())
    assert client.active_server == "backup"
