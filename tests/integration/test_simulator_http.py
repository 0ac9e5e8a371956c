"""The simulator over real HTTP on loopback: contract, fence, auth and fault injection."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests

from pacing.domain import is_valid_target_id
from pacing.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.http_stub import GIVE_UP_SECONDS, LOOPBACK_TIMEOUT_SECONDS

pytestmark = pytest.mark.integration

TIMEOUT = LOOPBACK_TIMEOUT_SECONDS
TOKEN = "test-token"


class VirtualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def sim(clock: VirtualClock) -> Iterator[RunningSimulator]:
    """A 30-target simulator on a free loopback port, on a virtual clock."""
    config = SimulatorConfig(targets=30, seed=3, token=TOKEN, client_secret="s3cret")
    with start_simulator(config, clock=clock) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def target_ids(sim: RunningSimulator, http: requests.Session) -> list[str]:
    response = http.get(sim.base_url + "/sim/targets", timeout=TIMEOUT)
    return [target["id"] for target in response.json()["targets"]]


def payload(
    seq: int,
    target_ids: list[str],
    *,
    kind: str = "full",
    base_seq: int | None = None,
    budget: int = 1,
    epoch: int = 1,
    leader: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "seq": seq,
        "epoch": epoch,
        **({"leader": leader} if leader is not None else {}),
        "generated_at": time.time(),
        "refresh_period_ms": 2000,
        "kind": kind,
        "targets": [
            {
                "id": target_id,
                "channel": "chat",
                "proactive_budget": budget,
                "reactive_state": 1.0,
                "ready_capacity": 1,
                "reason": "ok",
            }
            for target_id in target_ids
        ],
        "channels": {"chat": {"proactive_budget": budget * len(target_ids), "ready_capacity": 1}},
    }
    if base_seq is not None:
        body["base_seq"] = base_seq
    return body


def publish(
    http: requests.Session,
    sim: RunningSimulator,
    body: object,
    *,
    token: str | None = TOKEN,
    compress: bool = True,
) -> requests.Response:
    data = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    if compress:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if isinstance(body, dict) and "seq" in body:
        headers["Idempotency-Key"] = str(body["seq"])
    return http.post(sim.engagement_url + "/v1/pacing", data=data, headers=headers, timeout=TIMEOUT)


def control(http: requests.Session, sim: RunningSimulator, body: object) -> requests.Response:
    return http.post(sim.base_url + "/sim/control", json=body, timeout=TIMEOUT)


def query(
    http: requests.Session, base: str, target_ids: list[str], *, timeout: float = TIMEOUT
) -> requests.Response:
    return http.post(base + "/v1/statistics/query", json={"targets": target_ids}, timeout=timeout)


def test_fence_rejects_old_seqs_and_wrong_delta_bases(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    # given
    assert publish(http, sim, payload(5, target_ids)).status_code == 200
    # when / then: not newer
    for stale in (5, 4):
        response = publish(http, sim, payload(stale, target_ids))
        assert response.status_code == 409
        assert response.json() == {"error": "stale_seq", "last_seq": 5, "last_epoch": 1}
    # when / then: a delta on a base the receiver does not hold
    response = publish(http, sim, payload(6, target_ids[:2], kind="delta", base_seq=3))
    assert response.status_code == 409
    assert response.json() == {"error": "base_mismatch", "last_seq": 5, "last_epoch": 1}
    # when / then: the full snapshot that follows is taken, and a delta on it
    assert publish(http, sim, payload(6, target_ids)).status_code == 200
    response = publish(http, sim, payload(7, target_ids[:2], kind="delta", base_seq=6))
    assert response.status_code == 200
    assert response.json()["accepted_seq"] == 7

    published = http.get(sim.base_url + "/sim/published", timeout=TIMEOUT).json()
    assert [(p["seq"], p["kind"], p["targets"]) for p in published["published"]] == [
        (5, "full", 30),
        (6, "full", 30),
        (7, "delta", 2),
    ]
    assert published["rejected"]["stale_seq"] == 2
    assert published["rejected"]["base_mismatch"] == 1
    assert published["rejected"]["duplicates"] == 1
    after = http.get(sim.base_url + "/sim/published", params={"after": 5}, timeout=TIMEOUT)
    assert [p["seq"] for p in after.json()["published"]] == [6, 7]
    fence = http.get(sim.base_url + "/sim/metrics", timeout=TIMEOUT).json()["fence"]
    assert fence["accepted_publishes"] == 3
    assert fence["rejected_stale"] == 2
    assert fence["rejected_base_mismatch"] == 1
    assert fence["duplicates_seen"] == 1
    assert fence["last_seq"] == 7


def test_fence_rejects_an_ended_term_and_the_same_epoch_from_another_leader(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    # given node-a published at epoch 7
    assert publish(http, sim, payload(10, target_ids, epoch=7, leader="node-a")).status_code == 200

    # when / then: node-b at the same epoch (Redis lost the epoch it was given) is refused,
    # whatever its seq, and so is any older epoch
    for body in (
        payload(11, target_ids, epoch=7, leader="node-b"),
        payload(12, target_ids, epoch=6, leader="node-a"),
        payload(13, target_ids, epoch=6, leader="node-b"),
    ):
        response = publish(http, sim, body)
        assert response.status_code == 409
        assert response.json() == {"error": "stale_epoch", "last_seq": 10, "last_epoch": 7}
    # when / then: node-a goes on in its term, node-b's newer term is taken, and from then on
    # node-a's term has ended, even with a larger seq
    assert publish(http, sim, payload(14, target_ids, epoch=7, leader="node-a")).status_code == 200
    assert publish(http, sim, payload(15, target_ids, epoch=8, leader="node-b")).status_code == 200
    response = publish(http, sim, payload(16, target_ids, epoch=7, leader="node-a"))
    assert response.status_code == 409
    assert response.json()["error"] == "stale_epoch"
    # and a newer term still needs a newer seq
    response = publish(http, sim, payload(15, target_ids, epoch=9, leader="node-a"))
    assert response.json() == {"error": "stale_seq", "last_seq": 15, "last_epoch": 8}

    published = http.get(sim.base_url + "/sim/published", timeout=TIMEOUT).json()
    assert [(p["seq"], p["epoch"], p["leader"]) for p in published["published"]] == [
        (10, 7, "node-a"),
        (14, 7, "node-a"),
        (15, 8, "node-b"),
    ]
    assert published["rejected"]["stale_epoch"] == 4


def test_a_delta_before_any_full_snapshot_is_a_base_mismatch(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    response = publish(http, sim, payload(1, target_ids, kind="delta", base_seq=0))
    assert response.status_code == 409
    assert response.json() == {"error": "base_mismatch", "last_seq": None, "last_epoch": None}


def test_reject_delta_mode_refuses_every_delta(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    # given
    assert publish(http, sim, payload(1, target_ids)).status_code == 200
    control(http, sim, {"engagement": {"mode": "reject_delta"}}).raise_for_status()
    # when
    delta = publish(http, sim, payload(2, target_ids[:1], kind="delta", base_seq=1))
    full = publish(http, sim, payload(2, target_ids))
    # then
    assert delta.status_code == 409
    assert delta.json()["error"] == "base_mismatch"
    assert full.status_code == 200


def test_publish_feedback_covers_every_target(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str], clock: VirtualClock
) -> None:
    # given
    assert publish(http, sim, payload(1, target_ids, budget=4)).status_code == 200
    clock.now += 2.0
    # when
    response = publish(http, sim, payload(2, target_ids, budget=0))
    # then
    feedback = response.json()["feedback"]
    assert set(feedback) == set(target_ids)
    for counters in feedback.values():
        assert counters["offers_sent_total"] == 4
        assert (
            counters["offers_sent_total"]
            == counters["offers_resolved_total"] + counters["offers_pending"]
        )


def test_publish_needs_a_valid_bearer_token(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    missing = publish(http, sim, payload(1, target_ids), token=None)
    wrong = publish(http, sim, payload(1, target_ids), token="guess")
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert publish(http, sim, payload(1, target_ids)).status_code == 200


def test_oauth_client_credentials_flow(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str], clock: VirtualClock
) -> None:
    # when
    response = http.post(
        sim.auth_url,
        data={"grant_type": "client_credentials"},
        auth=("pacing", "s3cret"),
        timeout=TIMEOUT,
    )
    # then
    assert response.status_code == 200
    token = response.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert (
        publish(http, sim, payload(1, target_ids), token=token["access_token"]).status_code == 200
    )
    # an expired token is refused
    clock.now += 3601
    expired = publish(http, sim, payload(2, target_ids), token=token["access_token"])
    assert expired.status_code == 401


def test_oauth_refuses_bad_credentials_and_grants(
    sim: RunningSimulator, http: requests.Session
) -> None:
    wrong_secret = http.post(
        sim.auth_url,
        data={"grant_type": "client_credentials"},
        auth=("pacing", "nope"),
        timeout=TIMEOUT,
    )
    no_auth = http.post(sim.auth_url, data={"grant_type": "client_credentials"}, timeout=TIMEOUT)
    wrong_grant = http.post(
        sim.auth_url, data={"grant_type": "password"}, auth=("pacing", "s3cret"), timeout=TIMEOUT
    )
    assert wrong_secret.status_code == 401
    assert no_auth.status_code == 401
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"


def test_revoked_oauth_tokens_are_refused(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    token = http.post(
        sim.auth_url,
        data={"grant_type": "client_credentials"},
        auth=("pacing", "s3cret"),
        timeout=TIMEOUT,
    ).json()["access_token"]
    control(http, sim, {"oauth": {"revoke": True}}).raise_for_status()
    assert publish(http, sim, payload(1, target_ids), token=token).status_code == 401
    assert publish(http, sim, payload(1, target_ids)).status_code == 200  # static still valid


def test_gzip_and_identity_bodies_are_both_accepted(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    assert publish(http, sim, payload(1, target_ids), compress=True).status_code == 200
    assert publish(http, sim, payload(2, target_ids), compress=False).status_code == 200


def test_gzip_bomb_is_too_large_and_broken_gzip_is_a_bad_request(
    sim: RunningSimulator, http: requests.Session
) -> None:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Encoding": "gzip",
        "Content-Type": "application/json",
    }
    bomb = gzip.compress(b" " * (sim.app.max_publish_bytes + 1024))
    too_large = http.post(
        sim.engagement_url + "/v1/pacing", data=bomb, headers=headers, timeout=TIMEOUT
    )
    broken = http.post(
        sim.engagement_url + "/v1/pacing", data=b"not gzip", headers=headers, timeout=TIMEOUT
    )
    assert too_large.status_code == 413
    assert broken.status_code == 400


def test_declared_body_above_the_limit_is_refused_without_reading_it(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    # given
    sim.app.max_publish_bytes = 1000
    # when
    response = publish(http, sim, payload(1, target_ids), compress=False)
    # then
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_malformed_json_is_a_400_and_the_server_keeps_serving(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for data in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        response = http.post(
            sim.engagement_url + "/v1/pacing", data=data, headers=headers, timeout=TIMEOUT
        )
        assert response.status_code == 400
        assert "error" in response.json()
    bad_query = http.post(
        sim.stat_server_primary_url + "/v1/statistics/query", data=b"{{", timeout=TIMEOUT
    )
    assert bad_query.status_code == 400
    assert publish(http, sim, payload(1, target_ids)).status_code == 200
    assert query(http, sim.stat_server_primary_url, target_ids[:1]).status_code == 200


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda body: body.update(seq=-1), "seq"),
        (lambda body: body.update(seq=True), "seq"),
        (lambda body: body.update(kind="partial"), "kind"),
        (lambda body: body.update(kind="delta"), "base_seq"),
        (lambda body: body.update(refresh_period_ms=0), "refresh_period_ms"),
        (lambda body: body.pop("channels"), "channels"),
        (lambda body: body["targets"][0].update(proactive_budget=-2), "proactive_budget"),
        (lambda body: body["targets"][0].update(proactive_budget=1.5), "proactive_budget"),
        (lambda body: body["targets"][0].update(reactive_state=1.5), "reactive_state"),
        (lambda body: body["targets"][0].update(reason="because"), "reason"),
        (lambda body: body["targets"][0].update(id="bad id"), "id"),
        (lambda body: body["targets"].append(dict(body["targets"][0])), "twice"),
    ],
)
def test_invalid_payloads_are_400_with_a_clear_error(
    sim: RunningSimulator,
    http: requests.Session,
    target_ids: list[str],
    mutate: Any,
    field: str,
) -> None:
    # given
    body = payload(1, target_ids)
    mutate(body)
    # when
    response = publish(http, sim, body)
    # then
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_payload"
    assert field in response.json()["detail"]


def test_idempotency_key_must_match_seq(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    response = http.post(
        sim.engagement_url + "/v1/pacing",
        data=orjson.dumps(payload(3, target_ids)),
        headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "4"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]


def test_statistics_query_answers_known_and_lists_unknown(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str], clock: VirtualClock
) -> None:
    response = query(http, sim.stat_server_primary_url, [*target_ids[:3], "nobody-01"])
    assert response.status_code == 200
    body = response.json()
    assert body["server"] == "primary"
    assert body["unknown"] == ["nobody-01"]
    assert set(body["statistics"]) == set(target_ids[:3])
    for row in body["statistics"].values():
        assert row["timestamp"] == clock.now
        assert row["agents_ready"] + row["agents_busy"] <= row["agents_logged_in"]
        assert set(row) == {
            "timestamp",
            "agents_logged_in",
            "agents_ready",
            "agents_busy",
            "interactions_waiting",
            "aht_seconds",
            "answered_total",
            "abandoned_total",
            "reactive_arrivals_total",
        }


def test_statistics_query_refuses_more_than_5000_ids(
    sim: RunningSimulator, http: requests.Session
) -> None:
    response = query(http, sim.stat_server_primary_url, [f"t-{i}" for i in range(5001)])
    assert response.status_code == 400
    assert "5000" in response.json()["detail"]


def test_primary_down_while_backup_answers(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    # given
    control(http, sim, {"stat_server": {"primary": "down"}}).raise_for_status()
    # when / then
    with pytest.raises(requests.ConnectionError):
        query(http, sim.stat_server_primary_url, target_ids[:2])
    with pytest.raises(requests.ConnectionError):
        http.get(sim.stat_server_primary_url + "/v1/health", timeout=TIMEOUT)
    backup = query(http, sim.stat_server_backup_url, target_ids[:2])
    assert backup.status_code == 200
    assert backup.json()["server"] == "backup"
    health = http.get(sim.stat_server_backup_url + "/v1/health", timeout=TIMEOUT)
    assert health.json() == {"status": "ok", "role": "backup"}
    # when the primary comes back
    control(http, sim, {"stat_server": {"primary": "up"}}).raise_for_status()
    assert query(http, sim.stat_server_primary_url, target_ids[:2]).status_code == 200


def test_error_500_and_slow_modes(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    # "slow" holds the answer for a minute (stopping the simulator cuts it short): far beyond
    # the client's read timeout however busy the machine is
    control(
        http,
        sim,
        {"stat_server": {"primary": "error_500", "backup": "slow"}, "slow_seconds": 60},
    ).raise_for_status()
    assert query(http, sim.stat_server_primary_url, target_ids[:1]).status_code == 500
    with pytest.raises(requests.ReadTimeout):
        query(http, sim.stat_server_backup_url, target_ids[:1], timeout=GIVE_UP_SECONDS)


def test_engagement_down_and_error_modes(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    control(http, sim, {"engagement": {"mode": "down"}}).raise_for_status()
    with pytest.raises(requests.ConnectionError):
        publish(http, sim, payload(1, target_ids))
    control(http, sim, {"engagement": {"mode": "error_500"}}).raise_for_status()
    assert publish(http, sim, payload(1, target_ids)).status_code == 500
    control(http, sim, {"clear": True}).raise_for_status()
    assert publish(http, sim, payload(1, target_ids)).status_code == 200


def test_corruption_through_control_reaches_the_rows(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str], clock: VirtualClock
) -> None:
    # given
    stale, malformed, missing = target_ids[:3]
    control(
        http, sim, {"corrupt": {stale: "stale", malformed: "malformed", missing: "missing"}}
    ).raise_for_status()
    # when
    body = query(http, sim.stat_server_primary_url, target_ids[:3]).json()
    # then
    assert body["statistics"][stale]["timestamp"] < clock.now - 3000
    assert isinstance(body["statistics"][malformed]["agents_ready"], str)
    assert body["unknown"] == [missing]
    shown = http.get(sim.base_url + "/sim/control", timeout=TIMEOUT).json()
    assert shown["corrupt"] == {stale: "stale", malformed: "malformed", missing: "missing"}
    # when healed
    control(http, sim, {"corrupt": {stale: None}}).raise_for_status()
    body = query(http, sim.stat_server_primary_url, [stale]).json()
    assert body["statistics"][stale]["timestamp"] == clock.now


@pytest.mark.parametrize(
    "body",
    [
        [1],
        {"stat_server": {"primary": "sideways"}},
        {"stat_server": {"tertiary": "down"}},
        {"engagement": {"mode": "maybe"}},
        {"corrupt": {"nobody-1": "stale"}},
        {"latency_ms": -5},
        {"fly": True},
    ],
)
def test_invalid_control_requests_are_400(
    sim: RunningSimulator, http: requests.Session, body: object
) -> None:
    response = control(http, sim, body)
    assert response.status_code == 400
    assert response.json()["detail"]
    state = http.get(sim.base_url + "/sim/control", timeout=TIMEOUT).json()
    assert state["stat_server"] == {"primary": "up", "backup": "up"}


def test_latency_is_added_to_statistics_requests(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    control(http, sim, {"latency_ms": 200}).raise_for_status()
    started = time.monotonic()
    assert query(http, sim.stat_server_primary_url, target_ids[:1]).status_code == 200
    # a lower bound only: the simulator sleeps that long; a busy machine only adds to it
    assert time.monotonic() - started >= 0.2


def test_metrics_shape(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str], clock: VirtualClock
) -> None:
    # given some traffic
    for seq in range(1, 31):
        publish(http, sim, payload(seq, target_ids, budget=3)).raise_for_status()
        clock.now += 2.0
    # when
    overall = http.get(sim.base_url + "/sim/metrics", timeout=TIMEOUT).json()
    detailed = http.get(
        sim.base_url + "/sim/metrics", params={"per_target": 1}, timeout=TIMEOUT
    ).json()
    # then
    assert "targets" not in overall
    assert set(overall) >= {"overall", "channels", "fence", "window_seconds"}
    block = overall["overall"]
    assert block["targets"] == 30
    assert 0.0 <= block["occupancy"] <= 1.0
    assert 0.0 <= block["abandonment_rate"] <= 1.0
    assert block["offers"]["sent"] == 30 * 3 * 30
    assert set(block["proactive"]) >= {"accepted", "abandoned", "abandonment_rate", "occupancy"}
    assert set(block["reactive"]) >= {"arrivals", "abandoned", "abandonment_rate", "occupancy"}
    assert set(overall["channels"]) <= {"chat", "webcallback", "email"}
    assert set(detailed["targets"]) == set(target_ids)
    assert detailed["fence"]["accepted_publishes"] == 30


def test_sim_targets_lists_valid_importable_targets(
    sim: RunningSimulator, http: requests.Session
) -> None:
    targets = http.get(sim.base_url + "/sim/targets", timeout=TIMEOUT).json()["targets"]
    assert len(targets) == 30
    for target in targets:
        assert set(target) == {"id", "name", "channel", "slots", "algorithm"}
        assert is_valid_target_id(target["id"])
        assert target["slots"] >= 1


def test_unknown_paths_and_methods(sim: RunningSimulator, http: requests.Session) -> None:
    assert http.get(sim.base_url + "/nowhere", timeout=TIMEOUT).status_code == 404
    assert http.get(sim.engagement_url + "/v1/pacing", timeout=TIMEOUT).status_code == 405
    assert http.delete(sim.base_url + "/sim/control", timeout=TIMEOUT).status_code == 501


def test_large_responses_are_gzip_encoded_when_accepted(
    sim: RunningSimulator, http: requests.Session, target_ids: list[str]
) -> None:
    response = http.get(sim.base_url + "/sim/metrics", params={"per_target": 1}, timeout=TIMEOUT)
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(response.json()["targets"]) == 30


def test_stop_is_idempotent_and_frees_the_port() -> None:
    running = start_simulator(SimulatorConfig(targets=5))
    with requests.Session() as session:
        assert session.get(running.base_url + "/sim/targets", timeout=TIMEOUT).ok
    running.stop()
    running.stop()
    with pytest.raises(requests.ConnectionError), requests.Session() as session:
        session.get(running.base_url + "/sim/targets", timeout=TIMEOUT)
