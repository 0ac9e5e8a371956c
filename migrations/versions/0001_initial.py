"""Initial schema of the pacing history database.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 15:20:58+00:00

Hand-reviewed; mirrors pacing.history.models exactly (`alembic check` in CI proves it).
Timestamps are `timestamptz` on PostgreSQL; pacing.history.models.UTCDateTime makes SQLite
store and return UTC. `decisions.target_id` deliberately has no foreign key: the history of a
target must outlive the target.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "targets",
        sa.Column("target_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("objective", sa.String(length=32), nullable=False),
        sa.Column("goal_percent", sa.Integer(), nullable=False),
        sa.Column("proactive_ratio", sa.Float(), nullable=False),
        sa.Column("max_budget", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "goal_percent BETWEEN 1 AND 99", name=op.f("ck_targets_goal_percent_range")
        ),
        sa.CheckConstraint(
            "proactive_ratio >= 0 AND proactive_ratio <= 1",
            name=op.f("ck_targets_proactive_ratio"),
        ),
        sa.CheckConstraint("max_budget >= 0", name=op.f("ck_targets_max_budget_non_negative")),
        sa.PrimaryKeyConstraint("target_id", name=op.f("pk_targets")),
    )

    op.create_table(
        "cycles",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetch_ms", sa.Float(), nullable=True),
        sa.Column("pace_ms", sa.Float(), nullable=True),
        sa.Column("merge_ms", sa.Float(), nullable=True),
        sa.Column("publish_ms", sa.Float(), nullable=True),
        sa.Column("target_count", sa.Integer(), nullable=False),
        sa.Column("changed_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("payload_kind", sa.String(length=8), nullable=False),
        sa.Column("payload_bytes", sa.Integer(), nullable=False),
        sa.Column("publish_status", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "payload_kind IN ('full', 'delta', 'none')", name=op.f("ck_cycles_payload_kind")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_cycles")),
    )
    op.create_index(op.f("ix_cycles_started_at"), "cycles", ["started_at"], unique=False)

    op.create_table(
        "decisions",
        sa.Column("target_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("proactive_budget", sa.Integer(), nullable=False),
        sa.Column("reactive_state", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("agents_ready", sa.Integer(), nullable=True),
        sa.Column("agents_busy", sa.Integer(), nullable=True),
        sa.Column("interactions_waiting", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["seq"],
            ["cycles.seq"],
            name=op.f("fk_decisions_seq_cycles"),
            ondelete="CASCADE",
        ),
        # (target_id, seq) is the index of target_history()
        sa.PrimaryKeyConstraint("target_id", "seq", name=op.f("pk_decisions")),
    )
    # retention deletes whole cycles
    op.create_index(op.f("ix_decisions_seq"), "decisions", ["seq"], unique=False)

    op.create_table(
        "channel_totals",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("proactive_budget", sa.Integer(), nullable=False),
        sa.Column("ready_capacity", sa.Integer(), nullable=False),
        sa.Column("target_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["seq"],
            ["cycles.seq"],
            name=op.f("fk_channel_totals_seq_cycles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", "channel", name=op.f("pk_channel_totals")),
    )

    op.create_table(
        "leadership_changes",
        sa.Column("epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("previous_node", sa.String(length=255), nullable=True),
        sa.Column("previous_epoch", sa.BigInteger(), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("epoch", name=op.f("pk_leadership_changes")),
    )


def downgrade() -> None:
    op.drop_table("leadership_changes")
    op.drop_table("channel_totals")
    op.drop_index(op.f("ix_decisions_seq"), table_name="decisions")
    op.drop_table("decisions")
    op.drop_index(op.f("ix_cycles_started_at"), table_name="cycles")
    op.drop_table("cycles")
    op.drop_table("targets")
