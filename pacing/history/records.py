"""The values the history stores and returns: plain frozen dataclasses and the column form of
a cycle's decisions.

The pipeline builds a :class:`CycleRecord` per cycle, stages it in Redis as JSON
(:meth:`CycleRecord.to_json`) and ``pacing.record_cycle`` hands it back to
:func:`pacing.history.writing.record_cycle`; the queries of :mod:`pacing.history.reading` answer
with :class:`CycleSummary`, :class:`HistoryPoint`, :class:`ChannelPoint` and
:class:`LeadershipChange`. Nothing here touches the database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final, overload

__all__ = [
    "CYCLE_RECORD_JSON_VERSION",
    "ChannelPoint",
    "ChannelTotal",
    "CycleRecord",
    "CycleSummary",
    "DecisionColumns",
    "DecisionRow",
    "HistoryPoint",
    "LeadershipChange",
    "require_aware",
]

#: Format version of :meth:`CycleRecord.to_json`; bump it when the layout changes. Version 1
#: (decisions as positional rows) is still read, so records staged by the previous release drain.
CYCLE_RECORD_JSON_VERSION: Final = 2
_READABLE_JSON_VERSIONS: Final = (1, 2)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One target's decision in one cycle, with the statistics that led to it."""

    target_id: str
    proactive_budget: int
    reactive_state: float
    reason: str
    agents_ready: int | None = None
    agents_busy: int | None = None
    interactions_waiting: int | None = None


#: DecisionRow's fields in order: the columns of :class:`DecisionColumns`
_DECISION_FIELDS: Final = tuple(field.name for field in fields(DecisionRow))


class DecisionColumns(Sequence[DecisionRow]):
    """A cycle's decisions column by column: one list per :class:`DecisionRow` field.

    The form the pipeline builds, stages in Redis and copies into the history. A 100,000-target
    cycle's decisions as objects cost about 0.3 s of Python on each side of Redis (building the
    rows, one list per row in JSON, one dataclass per row when read back); as seven lists they
    go through orjson and into the COPY in C. Indexing still gives :class:`DecisionRow` values,
    and a ``DecisionColumns`` equals any sequence of the same rows.
    """

    __slots__ = _DECISION_FIELDS

    target_id: list[str]
    proactive_budget: list[int]
    reactive_state: list[float]
    reason: list[str]
    agents_ready: list[int | None]
    agents_busy: list[int | None]
    interactions_waiting: list[int | None]

    def __init__(
        self,
        *,
        target_id: Sequence[str],
        proactive_budget: Sequence[int],
        reactive_state: Sequence[float],
        reason: Sequence[str],
        agents_ready: Sequence[int | None],
        agents_busy: Sequence[int | None],
        interactions_waiting: Sequence[int | None],
    ) -> None:
        columns = (
            target_id,
            proactive_budget,
            reactive_state,
            reason,
            agents_ready,
            agents_busy,
            interactions_waiting,
        )
        lengths = {len(column) for column in columns}
        if len(lengths) > 1:
            named = ", ".join(
                f"{name} {len(column)}"
                for name, column in zip(_DECISION_FIELDS, columns, strict=True)
            )
            raise ValueError(f"Decision columns must have one length; they have {named}.")
        for name, column in zip(_DECISION_FIELDS, columns, strict=True):
            object.__setattr__(self, name, list(column))

    @classmethod
    def of(cls, rows: Iterable[DecisionRow]) -> DecisionColumns:
        """The columns of ``rows`` (returned as they are if they are columns already)."""
        if isinstance(rows, DecisionColumns):
            return rows
        rows = list(rows)
        return cls(**{name: [getattr(row, name) for row in rows] for name in _DECISION_FIELDS})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionColumns:
        """Columns from :meth:`to_json`, with every value's type checked (a C-speed pass per
        column: the record comes from Redis, and a wrong type must fail here, not in the COPY)."""
        if not isinstance(data, Mapping) or set(data) != set(_DECISION_FIELDS):
            raise ValueError(f"Decision columns must be an object with keys {_DECISION_FIELDS}.")
        columns = {name: data[name] for name in _DECISION_FIELDS}
        expected: dict[str, tuple[type, ...]] = {
            "target_id": (str,),
            "proactive_budget": (int,),
            "reactive_state": (float, int),
            "reason": (str,),
            "agents_ready": (int, type(None)),
            "agents_busy": (int, type(None)),
            "interactions_waiting": (int, type(None)),
        }
        for name, column in columns.items():
            if not isinstance(column, list):
                raise ValueError(f"Decision column {name} must be a list.")
            kinds = set(map(type, column))
            if not kinds <= set(expected[name]):
                bad = sorted(kind.__name__ for kind in kinds - set(expected[name]))
                raise ValueError(f"Decision column {name} holds {', '.join(bad)} values.")
            if name == "reactive_state" and int in kinds:  # 1 from another writer means 1.0
                columns[name] = [float(v) for v in column]
        return cls(**columns)

    def to_json(self) -> dict[str, list[Any]]:
        return {name: getattr(self, name) for name in _DECISION_FIELDS}

    def rows(self, seq: int) -> Iterator[tuple[Any, ...]]:
        """``(target_id, seq, budget, …)`` tuples in the COPY's column order
        (``_DECISION_COLUMNS`` of :mod:`pacing.history.writing`), zipped in C."""
        return zip(
            self.target_id,
            itertools.repeat(seq),
            self.proactive_budget,
            self.reactive_state,
            self.reason,
            self.agents_ready,
            self.agents_busy,
            self.interactions_waiting,
            strict=False,  # the constructor checked the lengths; repeat() is endless
        )

    def __len__(self) -> int:
        return len(self.target_id)

    @overload
    def __getitem__(self, index: int) -> DecisionRow: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[DecisionRow]: ...
    def __getitem__(self, index: int | slice) -> DecisionRow | Sequence[DecisionRow]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return DecisionRow(*(getattr(self, name)[index] for name in _DECISION_FIELDS))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DecisionColumns):
            return all(getattr(self, n) == getattr(other, n) for n in _DECISION_FIELDS)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside

    def __repr__(self) -> str:
        return f"DecisionColumns({len(self)} rows)"


@dataclass(frozen=True, slots=True)
class ChannelTotal:
    """The sums over one channel's targets in one cycle."""

    channel: str
    proactive_budget: int
    ready_capacity: int
    target_count: int


@dataclass(frozen=True, slots=True)
class CycleSummary:
    """One row of ``cycles``: what ``pacing cycles`` shows."""

    seq: int
    epoch: int
    node: str
    started_at: datetime
    published_at: datetime | None
    fetch_ms: float | None
    pace_ms: float | None
    merge_ms: float | None
    publish_ms: float | None
    target_count: int
    changed_count: int
    error_count: int
    payload_kind: str
    payload_bytes: int
    publish_status: str
    error: str | None
    #: When the audit transaction finished writing the cycle (set by
    #: :func:`~pacing.history.writing.record_cycle`, just
    #: before its commit); ``recorded_at - started_at`` is the end-to-end latency of the cycle.
    #: ``None`` for cycles recorded before the column existed.
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CycleRecord(CycleSummary):
    """Everything ``pacing.record_cycle`` writes for one cycle (the cycle row and its rows);
    travels through Redis as JSON. ``recorded_at`` is ignored here: the database write sets it."""

    decisions: Sequence[DecisionRow] = ()
    channels: Sequence[ChannelTotal] = ()

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict; the decisions are columns (:class:`DecisionColumns`)."""
        return {
            "v": CYCLE_RECORD_JSON_VERSION,
            "seq": self.seq,
            "epoch": self.epoch,
            "node": self.node,
            "started_at": require_aware(self.started_at, "started_at").isoformat(),
            "published_at": (
                None
                if self.published_at is None
                else require_aware(self.published_at, "published_at").isoformat()
            ),
            "fetch_ms": self.fetch_ms,
            "pace_ms": self.pace_ms,
            "merge_ms": self.merge_ms,
            "publish_ms": self.publish_ms,
            "target_count": self.target_count,
            "changed_count": self.changed_count,
            "error_count": self.error_count,
            "payload_kind": self.payload_kind,
            "payload_bytes": self.payload_bytes,
            "publish_status": self.publish_status,
            "error": self.error,
            "decisions": DecisionColumns.of(self.decisions).to_json(),
            "channels": [
                [total.channel, total.proactive_budget, total.ready_capacity, total.target_count]
                for total in self.channels
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CycleRecord:
        """Rebuild a record from :meth:`to_json` output."""
        version = data.get("v")
        if version not in _READABLE_JSON_VERSIONS:
            raise ValueError(
                f"Cycle record format version {version!r} is not supported (this release reads "
                f"{', '.join(map(str, _READABLE_JSON_VERSIONS))}); drain the queue with the "
                "matching release."
            )
        published_at = data["published_at"]
        return cls(
            seq=int(data["seq"]),
            epoch=int(data["epoch"]),
            node=str(data["node"]),
            started_at=_parse_timestamp(data["started_at"], "started_at"),
            published_at=(
                None if published_at is None else _parse_timestamp(published_at, "published_at")
            ),
            fetch_ms=_optional_float(data["fetch_ms"]),
            pace_ms=_optional_float(data["pace_ms"]),
            merge_ms=_optional_float(data["merge_ms"]),
            publish_ms=_optional_float(data["publish_ms"]),
            target_count=int(data["target_count"]),
            changed_count=int(data["changed_count"]),
            error_count=int(data["error_count"]),
            payload_kind=str(data["payload_kind"]),
            payload_bytes=int(data["payload_bytes"]),
            publish_status=str(data["publish_status"]),
            error=None if data["error"] is None else str(data["error"]),
            decisions=(
                DecisionColumns.from_json(data["decisions"])
                if version == 2
                else _decision_rows_v1(data["decisions"])
            ),
            channels=tuple(
                ChannelTotal(
                    channel=str(channel),
                    proactive_budget=int(budget),
                    ready_capacity=int(capacity),
                    target_count=int(count),
                )
                for channel, budget, capacity, count in data["channels"]
            ),
        )


def _decision_rows_v1(rows: Iterable[Sequence[Any]]) -> DecisionColumns:
    """Decisions of a version-1 record: one positional list per row."""
    return DecisionColumns.of(
        DecisionRow(
            target_id=str(target_id),
            proactive_budget=int(budget),
            reactive_state=float(reactive_state),
            reason=str(reason),
            agents_ready=_optional_int(ready),
            agents_busy=_optional_int(busy),
            interactions_waiting=_optional_int(waiting),
        )
        for target_id, budget, reactive_state, reason, ready, busy, waiting in rows
    )


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """A step of one target's history: the decision in force from ``at`` until the next point."""

    seq: int
    at: datetime
    proactive_budget: int
    reactive_state: float
    reason: str
    agents_ready: int | None
    agents_busy: int | None
    interactions_waiting: int | None


@dataclass(frozen=True, slots=True)
class ChannelPoint:
    """One channel's totals in one cycle."""

    seq: int
    at: datetime
    channel: str
    proactive_budget: int
    ready_capacity: int
    target_count: int


@dataclass(frozen=True, slots=True)
class LeadershipChange:
    """One leadership epoch: who held it, since when, whom it replaced, and when it ended."""

    epoch: int
    node: str
    acquired_at: datetime
    previous_node: str | None
    previous_epoch: int | None
    released_at: datetime | None


def require_aware(value: datetime, name: str) -> datetime:
    """``value``, refused with a ``ValueError`` if it has no time zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got {value!r}.")
    return value


def _parse_timestamp(value: Any, name: str) -> datetime:
    return require_aware(datetime.fromisoformat(str(value)), name).astimezone(UTC)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
