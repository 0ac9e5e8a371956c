"""cycles.recorded_at; decisions without the per-row foreign key, BRIN seq index on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 10:00:00+00:00

Hand-written; mirrors pacing.history.models (`alembic check` in CI proves it).

* `cycles.recorded_at` (nullable timestamptz): when the audit transaction finished writing the
  cycle. Older cycles keep NULL; nothing is back-filled (the time is not known).
* `decisions.seq` loses its foreign key to `cycles`: PostgreSQL checks it with one trigger query
  per inserted row, half of the server time of a 10,000-row snapshot. `record_cycle` writes the
  cycle and its decisions in one transaction and `purge_history` deletes decisions before their
  cycle, so the constraint guarded nothing the writer does not already guarantee.
* `ix_decisions_seq` becomes a BRIN index on PostgreSQL with `autosummarize` (rows arrive in seq
  order; a B-tree on seq was a quarter of the snapshot's server time). SQLite keeps its B-tree.

On SQLite dropping and re-adding the foreign key copies the `decisions` table (batch mode);
`env.py` turns foreign keys off for the migration so the copy cascades nothing. On PostgreSQL the
index is rebuilt under a lock on `decisions`: on a large history run it in a quiet period.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("cycles", sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True))

    op.drop_index(op.f("ix_decisions_seq"), table_name="decisions")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_constraint(op.f("fk_decisions_seq_cycles"), type_="foreignkey")
    # retention deletes whole cycles; a BRIN index on PostgreSQL, a B-tree on SQLite
    op.create_index(
        op.f("ix_decisions_seq"),
        "decisions",
        ["seq"],
        unique=False,
        postgresql_using="brin",
        postgresql_with={"autosummarize": "on"},
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_decisions_seq"), table_name="decisions")
    with op.batch_alter_table("decisions") as batch:
        batch.create_foreign_key(
            op.f("fk_decisions_seq_cycles"),
            "cycles",
            ["seq"],
            ["seq"],
            ondelete="CASCADE",
        )
    op.create_index(op.f("ix_decisions_seq"), "decisions", ["seq"], unique=False)

    with op.batch_alter_table("cycles") as batch:
        batch.drop_column("recorded_at")
