"""SQLAlchemy models of the pacing history database (design.md §4).

The migrations in ``migrations/versions`` mirror these tables exactly; ``alembic check`` in CI
catches any drift. Every constraint gets a stable name from :data:`NAMING_CONVENTION`, so a later
migration can drop or alter it by name on both SQLite and PostgreSQL.

Write volume shapes the schema: ``decisions`` holds change rows only (plus every target on a full
snapshot), keyed ``(target_id, seq)`` so one target's history is one index range scan, with a
second index on ``seq`` so retention can delete whole cycles (a BRIN index on PostgreSQL, see
:class:`DecisionModel`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "ChannelTotalModel",
    "CycleModel",
    "DecisionModel",
    "LeadershipChangeModel",
    "TargetModel",
    "UTCDateTime",
    "metadata",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TARGET_ID_LENGTH = 128
PAYLOAD_KINDS = ("full", "delta", "none")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zone support and would silently drop
    the offset, so values are normalised to UTC before they are written and marked UTC when read.
    Naive datetimes are refused: a naive value is a bug upstream, not something to guess about.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"A naive datetime ({value.isoformat()}) cannot be stored in the history "
                "database; pass a timezone-aware datetime, e.g. datetime.now(UTC)."
            )
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    """Declarative base bound to the metadata with the naming convention."""

    metadata = metadata


class TargetModel(Base):
    """A configured pacing target (managed with the CLI, read by ``pacing.refresh``)."""

    __tablename__ = "targets"
    __table_args__ = (
        CheckConstraint("goal_percent BETWEEN 1 AND 99", name="goal_percent_range"),
        CheckConstraint("proactive_ratio >= 0 AND proactive_ratio <= 1", name="proactive_ratio"),
        CheckConstraint("max_budget >= 0", name="max_budget_non_negative"),
    )

    target_id: Mapped[str] = mapped_column(String(TARGET_ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(32))
    objective: Mapped[str] = mapped_column(String(32))
    goal_percent: Mapped[int] = mapped_column(Integer)
    proactive_ratio: Mapped[float] = mapped_column(Float)
    max_budget: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CycleModel(Base):
    """One refresh cycle as the master ran and published it; ``seq`` is unique by being the key."""

    __tablename__ = "cycles"
    __table_args__ = (
        CheckConstraint("payload_kind IN ('full', 'delta', 'none')", name="payload_kind"),
        Index("ix_cycles_started_at", "started_at"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger)
    node: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fetch_ms: Mapped[float | None] = mapped_column(Float)
    pace_ms: Mapped[float | None] = mapped_column(Float)
    merge_ms: Mapped[float | None] = mapped_column(Float)
    publish_ms: Mapped[float | None] = mapped_column(Float)
    target_count: Mapped[int] = mapped_column(Integer)
    changed_count: Mapped[int] = mapped_column(Integer)
    error_count: Mapped[int] = mapped_column(Integer)
    payload_kind: Mapped[str] = mapped_column(String(8))
    payload_bytes: Mapped[int] = mapped_column(Integer)
    publish_status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    #: When the audit transaction finished writing the cycle (after its decision rows, just
    #: before the commit); ``recorded_at - started_at`` is the cycle's end-to-end latency.
    #: Empty for cycles recorded before revision 0002.
    recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DecisionModel(Base):
    """One target's decision in one cycle: only changes, plus every target on a full snapshot.

    ``target_id`` deliberately has no foreign key: history must outlive a deleted target.

    ``seq`` has no foreign key to ``cycles`` either (since revision 0002). PostgreSQL checks a
    foreign key with one trigger query per inserted row, which was the largest single cost of
    writing a 10,000-row snapshot: the server-side COPY took 100 ms with it and 50 ms without
    (PostgreSQL 15 on loopback, 2 cores, median of 20 snapshots into a fresh table). Integrity
    is kept by the only writer instead: :func:`pacing.history.writing.record_cycle` inserts
    the cycle row and its decisions in one transaction, and retention deletes a cycle's
    decisions before the cycle itself.

    ``ix_decisions_seq`` (retention finds a cycle's rows by ``seq``) is a BRIN index on
    PostgreSQL: rows are appended in ``seq`` order, so a summary per block range finds them, and
    maintaining it costs about 5 ms per 10,000-row snapshot where the B-tree cost about 17 ms
    (server-side COPY into a fresh table: 39–41 ms against 53–54 ms, 34–36 ms without either).
    Purging 150 cycles of an hour of 10,000 targets takes 0.4–0.7 s with it, against 2.4–2.5 s
    before (see ``purge_history``). Its ``autosummarize`` keeps the summaries current as ranges
    fill (an unsummarised range is read by every scan); ``purge_history`` also summarises before
    it deletes. SQLite has no BRIN and keeps a B-tree. Per-target history reads use the primary
    key.

    Kept as they were: ``reason`` stays short text (as a smallint code the server-side COPY of
    10,000 rows took the same 30–41 ms, and every SQL query operators run would change); the
    primary key stays ``(target_id, seq)`` (as ``(seq, target_id)`` it would need a second
    ``(target_id, seq)`` B-tree for the history query: two B-trees again, 62 ms).
    """

    __tablename__ = "decisions"
    __table_args__ = (
        Index(
            "ix_decisions_seq",
            "seq",
            postgresql_using="brin",
            postgresql_with={"autosummarize": "on"},
        ),
    )

    target_id: Mapped[str] = mapped_column(String(TARGET_ID_LENGTH), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    proactive_budget: Mapped[int] = mapped_column(Integer)
    reactive_state: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(32))
    agents_ready: Mapped[int | None] = mapped_column(Integer)
    agents_busy: Mapped[int | None] = mapped_column(Integer)
    interactions_waiting: Mapped[int | None] = mapped_column(Integer)


class ChannelTotalModel(Base):
    """The per-channel sums of one cycle."""

    __tablename__ = "channel_totals"

    seq: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("cycles.seq", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    proactive_budget: Mapped[int] = mapped_column(Integer)
    ready_capacity: Mapped[int] = mapped_column(Integer)
    target_count: Mapped[int] = mapped_column(Integer)


class LeadershipChangeModel(Base):
    """One leadership epoch; ``released_at`` is filled when a later epoch is recorded."""

    __tablename__ = "leadership_changes"

    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    node: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    previous_node: Mapped[str | None] = mapped_column(String(255))
    previous_epoch: Mapped[int | None] = mapped_column(BigInteger)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
