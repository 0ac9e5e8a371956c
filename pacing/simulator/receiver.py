"""The engagement receiver's contract checks: a publish body validated (docs/contracts.md §2).

:func:`parse_publish` turns the JSON body of ``POST /engagement/v1/pacing`` into a
:class:`_Publish` or raises a 400. The ``seq`` fence that then applies it (stale seqs, a
delta's ``base_seq``, the record of accepted publishes) is
:meth:`pacing.simulator.app.SimulatorApp.publish`, under the app's one lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pacing.domain import is_valid_target_id
from pacing.simulator.errors import _bad_request, _HttpError

REASONS: frozenset[str] = frozenset(
    {"ok", "cold_start", "no_agents", "queue_full", "stale", "error", "unknown_target"}
)
#: A full snapshot of 10,000 targets is about 1.2 MB of JSON; 100,000 fit in 16 MiB.
MAX_PUBLISH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Publish:
    """A validated engagement payload."""

    seq: int
    epoch: int
    leader: str  # "" when the body has none (a sender older than the epoch fence)
    kind: str
    base_seq: int | None
    refresh_period_seconds: float
    target_ids: list[str]
    budgets: list[int]
    reactive_states: list[float]


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _number(value: object) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_publish(body: object, idempotency_key: str | None) -> _Publish:
    """Validate an engagement payload (docs/contracts.md §2); raises a 400 :class:`_HttpError`."""
    if not isinstance(body, dict):
        raise _bad_request("The body must be a JSON object.", "invalid_payload")

    def fail(detail: str) -> _HttpError:
        return _bad_request(detail, "invalid_payload")

    seq = body.get("seq")
    if not _is_count(seq):
        raise fail('"seq" must be an integer >= 0.')
    assert isinstance(seq, int)  # narrowed by _is_count, for mypy
    if idempotency_key is not None and idempotency_key.strip() != str(seq):
        raise fail(f'The Idempotency-Key header ({idempotency_key!r}) must equal "seq" ({seq}).')
    epoch = body.get("epoch")
    if not _is_count(epoch):
        raise fail('"epoch" must be an integer >= 0.')
    assert isinstance(epoch, int)
    leader = body.get("leader", "")
    if not isinstance(leader, str) or len(leader) > 64:
        raise fail('"leader" must be a string of at most 64 characters (the node name).')
    if not _is_number(body.get("generated_at")):
        raise fail('"generated_at" must be a number (Unix seconds).')
    period_ms = body.get("refresh_period_ms")
    if not _is_count(period_ms) or period_ms == 0:
        raise fail('"refresh_period_ms" must be a positive integer.')
    assert isinstance(period_ms, int)
    kind = body.get("kind")
    if kind not in ("full", "delta"):
        raise fail('"kind" must be "full" or "delta".')
    base_seq = body.get("base_seq")
    if kind == "delta":
        if not _is_count(base_seq):
            raise fail('A delta needs "base_seq", an integer >= 0.')
        assert isinstance(base_seq, int)
    else:
        base_seq = None
    targets = body.get("targets")
    if not isinstance(targets, list):
        raise fail('"targets" must be a list.')
    channels = body.get("channels")
    if not isinstance(channels, dict):
        raise fail('"channels" must be an object of per-channel sums.')
    for name, sums in channels.items():
        if not (
            isinstance(sums, dict)
            and _is_count(sums.get("proactive_budget"))
            and _is_count(sums.get("ready_capacity"))
        ):
            raise fail(
                f'channels["{name}"] must hold integer "proactive_budget" and "ready_capacity".'
            )

    target_ids: list[str] = []
    budgets: list[int] = []
    states: list[float] = []
    seen: set[str] = set()
    for i, target in enumerate(targets):
        if not isinstance(target, dict):
            raise fail(f"targets[{i}] must be an object.")
        target_id = target.get("id")
        if not is_valid_target_id(target_id):
            raise fail(f"targets[{i}].id must be a target id (1–128 safe characters).")
        assert isinstance(target_id, str)
        if target_id in seen:
            raise fail(f"targets[{i}].id {target_id!r} appears twice.")
        seen.add(target_id)
        if not isinstance(target.get("channel"), str):
            raise fail(f"targets[{i}].channel must be a string.")
        budget = target.get("proactive_budget")
        if not _is_count(budget):
            raise fail(f"targets[{i}].proactive_budget must be an integer >= 0.")
        state = _number(target.get("reactive_state"))
        if state is None or not 0.0 <= state <= 1.0:
            raise fail(f"targets[{i}].reactive_state must be a number in [0, 1].")
        if not _is_count(target.get("ready_capacity")):
            raise fail(f"targets[{i}].ready_capacity must be an integer >= 0.")
        if target.get("reason") not in REASONS:
            raise fail(f"targets[{i}].reason must be one of {sorted(REASONS)}.")
        target_ids.append(target_id)
        assert isinstance(budget, int)
        budgets.append(budget)
        states.append(state)
    return _Publish(
        seq=seq,
        epoch=epoch,
        leader=leader,
        kind=str(kind),
        base_seq=base_seq,
        refresh_period_seconds=period_ms / 1000.0,
        target_ids=target_ids,
        budgets=budgets,
        reactive_states=states,
    )
