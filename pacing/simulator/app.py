"""The simulator's request-independent state: world, faults, ``seq`` fence and OAuth tokens.

:class:`SimulatorApp` is what every request reads and changes, whatever carries it (a socket in
:mod:`pacing.simulator.server`, an in-process call through :mod:`pacing.simulator.transport`):
the tokens it issued, the fence that applies a validated publish
(:mod:`pacing.simulator.receiver`) to the world, and the faults ``/sim/control`` switches — a
Stat Server or the engagement platform down, slow or answering 500, deltas rejected, added
latency, corrupted rows — so tests and demos can exercise the pacing service's failure paths.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from pacing.simulator.errors import _bad_request, _HttpError
from pacing.simulator.receiver import MAX_PUBLISH_BYTES, _number, _Publish
from pacing.simulator.world import World
from pacing.simulator.world_views import CORRUPTION_MODES

logger = logging.getLogger(__name__)

STAT_SERVER_MODES: frozenset[str] = frozenset({"up", "down", "slow", "error_500"})
ENGAGEMENT_MODES: frozenset[str] = frozenset({"ok", "down", "slow", "error_500", "reject_delta"})
#: Accepted publishes kept for ``/sim/published`` (a day at one per second).
PUBLISHED_HISTORY = 100_000
#: Lifetime of the OAuth tokens the simulator issues, unless changed through /sim/control.
TOKEN_LIFETIME_SECONDS = 3600


@dataclass(slots=True)
class Faults:
    """The fault knobs ``/sim/control`` turns; read by every request."""

    stat_server: dict[str, str] = field(default_factory=lambda: {"primary": "up", "backup": "up"})
    engagement: str = "ok"
    latency_ms: float = 0.0  # added to every statistics request
    slow_seconds: float = 10.0  # how long a "slow" server sleeps: beyond any client timeout

    def as_json(self, corruption: Mapping[str, str]) -> dict[str, object]:
        """The current faults as ``GET /sim/control`` shows them."""
        return {
            "stat_server": dict(self.stat_server),
            "engagement": {"mode": self.engagement},
            "latency_ms": self.latency_ms,
            "slow_seconds": self.slow_seconds,
            "corrupt": dict(corruption),
        }


@dataclass(frozen=True, slots=True)
class _Published:
    seq: int
    epoch: int
    leader: str
    kind: str
    targets: int
    received_at: float


class SimulatorApp:
    """The request-independent state of the simulator: world, faults, fence, tokens."""

    def __init__(
        self,
        world: World,
        *,
        clock: Callable[[], float] = time.time,
        static_token: str | None = "sim-token",  # noqa: S107 - development double
        client_id: str = "pacing",
        client_secret: str = "sim-secret",  # noqa: S107 - development double
    ) -> None:
        self.world = world
        self.clock = clock
        self.static_token = static_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.max_publish_bytes = MAX_PUBLISH_BYTES
        self.token_lifetime_seconds = TOKEN_LIFETIME_SECONDS
        self.faults = Faults()
        self.stopping = threading.Event()  # wakes "slow" handlers when the server stops
        self._lock = threading.Lock()  # fence, published list, tokens, faults
        self._tokens: dict[str, float] = {}  # access token -> expiry (clock seconds)
        self.last_seq: int | None = None
        # the term of the last accepted publish: (epoch, leader)
        self.last_term: tuple[int, str] | None = None
        self._published: deque[_Published] = deque(maxlen=PUBLISHED_HISTORY)
        self._published_seqs: set[int] = set()
        self.fence_counters: dict[str, int] = {
            "accepted_publishes": 0,
            "rejected_stale": 0,
            "rejected_stale_epoch": 0,
            "rejected_base_mismatch": 0,
            "duplicates_seen": 0,
            "rejected_invalid": 0,
            "rejected_unauthorized": 0,
        }

    # ----------------------------------------------------------------- tokens

    def issue_token(self) -> tuple[str, int]:
        """A new OAuth access token and its lifetime in seconds."""
        token = secrets.token_urlsafe(24)
        lifetime = self.token_lifetime_seconds
        now = self.clock()
        with self._lock:
            # Expired tokens are dropped here so the table cannot grow without bound.
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + lifetime
        return token, lifetime

    def token_valid(self, token: str) -> bool:
        """True for the static token or an OAuth token that has not expired."""
        if self.static_token is not None and hmac.compare_digest(
            token.encode(), self.static_token.encode()
        ):
            return True
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > self.clock()

    def revoke_tokens(self) -> None:
        """Forget every issued OAuth token (the static token stays valid)."""
        with self._lock:
            self._tokens.clear()

    # ------------------------------------------------------------------ fence

    def publish(self, payload: _Publish) -> dict[str, object]:
        """Apply a validated publish behind the fence (docs/contracts.md §2): its term must be
        the newest seen — a larger epoch, or the same epoch from the same leader — and its seq
        larger than any accepted. A 409 is an :class:`_HttpError`."""
        with self._lock:
            last = self.last_seq
            term = self.last_term
            held = {"last_seq": last, "last_epoch": term[0] if term else None}
            if term is not None and (
                payload.epoch < term[0] or (payload.epoch == term[0] and payload.leader != term[1])
            ):
                self.fence_counters["rejected_stale_epoch"] += 1
                raise _HttpError(HTTPStatus.CONFLICT, "stale_epoch", extra=held)
            if last is not None and payload.seq <= last:
                self.fence_counters["rejected_stale"] += 1
                if payload.seq in self._published_seqs:
                    self.fence_counters["duplicates_seen"] += 1
                raise _HttpError(HTTPStatus.CONFLICT, "stale_seq", extra=held)
            if payload.kind == "delta" and (
                self.faults.engagement == "reject_delta" or payload.base_seq != last
            ):
                self.fence_counters["rejected_base_mismatch"] += 1
                raise _HttpError(HTTPStatus.CONFLICT, "base_mismatch", extra=held)
            now = self.clock()
            # Applied under the fence lock: two concurrent publishes must not interleave
            # their budgets with the order of their seqs.
            self.world.apply_publish(
                payload.target_ids,
                payload.budgets,
                payload.reactive_states,
                full=payload.kind == "full",
                refresh_period_seconds=payload.refresh_period_seconds,
                now=now,
            )
            self.last_seq = payload.seq
            self.last_term = (payload.epoch, payload.leader)
            self.fence_counters["accepted_publishes"] += 1
            if len(self._published) == self._published.maxlen:
                self._published_seqs.discard(self._published[0].seq)
            self._published.append(
                _Published(
                    seq=payload.seq,
                    epoch=payload.epoch,
                    leader=payload.leader,
                    kind=payload.kind,
                    targets=len(payload.target_ids),
                    received_at=now,
                )
            )
            self._published_seqs.add(payload.seq)
        # a delta is answered with the counters that moved, a full snapshot with all of them
        feedback = self.world.feedback(now=now, changed_only=payload.kind == "delta")
        return {"accepted_seq": payload.seq, "feedback": feedback}

    def count(self, counter: str) -> None:
        """Add one to a fence counter."""
        with self._lock:
            self.fence_counters[counter] += 1

    def published_after(self, after: int, limit: int) -> dict[str, object]:
        """``GET /sim/published``: accepted publishes with seq > ``after``, oldest first."""
        with self._lock:
            rows = [
                {
                    "seq": p.seq,
                    "epoch": p.epoch,
                    "leader": p.leader,
                    "kind": p.kind,
                    "targets": p.targets,
                    "received_at": p.received_at,
                }
                for p in self._published
                if p.seq > after
            ][:limit]
            rejected = {
                "stale_seq": self.fence_counters["rejected_stale"],
                "stale_epoch": self.fence_counters["rejected_stale_epoch"],
                "base_mismatch": self.fence_counters["rejected_base_mismatch"],
                "duplicates": self.fence_counters["duplicates_seen"],
                "invalid": self.fence_counters["rejected_invalid"],
                "unauthorized": self.fence_counters["rejected_unauthorized"],
            }
            return {"published": rows, "rejected": rejected, "last_seq": self.last_seq}

    def fence_json(self) -> dict[str, object]:
        """The receiver's fence counters for ``/sim/metrics``."""
        with self._lock:
            return {**self.fence_counters, "last_seq": self.last_seq}

    # ---------------------------------------------------------------- control

    def control_json(self) -> dict[str, object]:
        """``GET /sim/control``."""
        with self._lock:
            return self.faults.as_json(self.world.corruption)

    def apply_control(self, body: object) -> dict[str, object]:
        """``POST /sim/control``: validate everything first, then apply it all."""
        if not isinstance(body, dict):
            raise _bad_request("The control body must be a JSON object.")
        known = {
            "stat_server",
            "engagement",
            "corrupt",
            "latency_ms",
            "slow_seconds",
            "clear",
            "reset_metrics",
            "oauth",
        }
        unknown = sorted(set(body) - known)
        if unknown:
            raise _bad_request(f"Unknown control keys {unknown}; known keys are {sorted(known)}.")
        actions: list[Callable[[], None]] = []
        faults = self.faults

        if body.get("clear") is True:

            def clear() -> None:
                faults.stat_server = {"primary": "up", "backup": "up"}
                faults.engagement = "ok"
                faults.latency_ms = 0.0
                self.world.clear_corruption()

            actions.append(clear)
        if "stat_server" in body:
            modes = body["stat_server"]
            if not isinstance(modes, dict) or not set(modes) <= {"primary", "backup"}:
                raise _bad_request('"stat_server" must map "primary"/"backup" to a mode.')
            for role, mode in modes.items():
                if mode not in STAT_SERVER_MODES:
                    raise _bad_request(
                        f"Stat Server mode {mode!r} for {role} is not one of "
                        f"{sorted(STAT_SERVER_MODES)}."
                    )
            actions.append(lambda: faults.stat_server.update(modes))
        if "engagement" in body:
            engagement = body["engagement"]
            mode = engagement.get("mode") if isinstance(engagement, dict) else None
            if mode not in ENGAGEMENT_MODES:
                raise _bad_request(
                    f'"engagement" must be {{"mode": …}} with a mode in {sorted(ENGAGEMENT_MODES)}.'
                )
            engagement_mode = str(mode)
            actions.append(lambda: setattr(faults, "engagement", engagement_mode))
        for key in ("latency_ms", "slow_seconds"):
            if key in body:
                number = _number(body[key])
                if number is None or not 0 <= number <= 600_000:
                    raise _bad_request(f'"{key}" must be a number between 0 and 600000.')
                actions.append(_setter(faults, key, number))
        if "corrupt" in body:
            corrupt = body["corrupt"]
            if not isinstance(corrupt, dict):
                raise _bad_request('"corrupt" must map target ids to a mode or null.')
            known_ids = set(self.world.target_ids())
            for target_id, mode in corrupt.items():
                if target_id not in known_ids:
                    raise _bad_request(f'Unknown target {target_id!r} in "corrupt".')
                if mode is not None and mode not in CORRUPTION_MODES | {"none"}:
                    raise _bad_request(
                        f"Corruption {mode!r} is not one of {sorted(CORRUPTION_MODES)} or null."
                    )

            def corrupt_targets() -> None:
                for target_id, mode in corrupt.items():
                    self.world.set_corruption(target_id, None if mode in (None, "none") else mode)

            actions.append(corrupt_targets)
        if body.get("reset_metrics") is True:
            actions.append(self.world.reset_metrics)
        if "oauth" in body:
            oauth = body["oauth"]
            if not isinstance(oauth, dict) or not set(oauth) <= {"revoke", "expires_in"}:
                raise _bad_request('"oauth" accepts {"revoke": true, "expires_in": seconds}.')
            if "expires_in" in oauth:
                lifetime = oauth["expires_in"]
                if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < 1:
                    raise _bad_request('"oauth.expires_in" must be a positive integer.')
                actions.append(lambda: setattr(self, "token_lifetime_seconds", lifetime))
            if oauth.get("revoke") is True:
                actions.append(self.revoke_tokens)
        for action in actions:
            action()
        logger.info("simulator faults changed", extra={"control": sorted(body)})
        return self.control_json()


def _setter(target: object, name: str, value: object) -> Callable[[], None]:
    def apply() -> None:
        setattr(target, name, value)

    return apply
