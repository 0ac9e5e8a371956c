"""Housekeeping of the history: :func:`purge_history` deletes the cycles past their retention.

The beat schedules ``pacing.purge_history``, which calls it with the cut-off; it works in short
transactions so that the writer of new cycles is never blocked for long.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import Engine, delete, select, text
from sqlalchemy import exc as sa_exc

from pacing.history.engine import IN_LIST_CHUNK, chunks, translate_errors
from pacing.history.models import CycleModel, metadata
from pacing.history.records import require_aware

__all__ = ["purge_history"]

logger = logging.getLogger(__name__)

_cycles = metadata.tables["cycles"]
_decisions = metadata.tables["decisions"]
_channel_totals = metadata.tables["channel_totals"]


@translate_errors
def purge_history(engine: Engine, *, older_than: datetime, batch_size: int = 5000) -> int:
    """Delete cycles started before ``older_than`` with their rows; returns the cycles deleted.

    Works in short transactions so the writer of new cycles is never blocked for long: each
    batch takes the ``batch_size`` oldest cycles, deletes their decision rows about
    ``batch_size`` at a time (whole cycles; a full snapshot alone holds one row per target),
    then their channel rows and the cycles themselves. Decisions go first: ``decisions.seq`` has
    no foreign key to cascade from ``cycles``.
    """
    require_aware(older_than, "older_than")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    _summarize_seq_index(engine)
    deleted_cycles = 0
    while True:
        with engine.connect() as connection:
            seqs = list(
                connection.execute(
                    select(CycleModel.seq)
                    .where(CycleModel.started_at < older_than)
                    .order_by(CycleModel.seq)
                    .limit(batch_size)
                ).scalars()
            )
        if not seqs:
            break
        for chunk in chunks(seqs, IN_LIST_CHUNK):
            _purge_decisions(engine, chunk, batch_size)
        with engine.begin() as connection:
            for chunk in chunks(seqs, IN_LIST_CHUNK):
                connection.execute(delete(_channel_totals).where(_channel_totals.c.seq.in_(chunk)))
                result = connection.execute(delete(_cycles).where(_cycles.c.seq.in_(chunk)))
                deleted_cycles += result.rowcount
        logger.info(
            "history purge batch",
            extra={"first_seq": seqs[0], "last_seq": seqs[-1], "cycles": len(seqs)},
        )
        if len(seqs) < batch_size:
            break
    return deleted_cycles


_SUMMARIZE_SEQ_INDEX: Final = text("SELECT brin_summarize_new_values('ix_decisions_seq'::regclass)")


def _summarize_seq_index(engine: Engine) -> None:
    """On PostgreSQL, summarise the block ranges of ``ix_decisions_seq`` not summarised yet.

    A BRIN scan reads every unsummarised range, so each purge statement would re-read the whole
    tail written since the last summary (measured: 150 cycles purged in 20 s with 228 ranges
    unsummarised, 0.56 s summarised). The index has ``autosummarize`` on, which autovacuum
    honours when it runs; this makes the purge independent of it. Without the privilege (only
    the owner of the table may summarise) the purge goes on, slower, with a warning.
    """
    if engine.dialect.name != "postgresql":
        return
    try:
        with engine.begin() as connection:
            connection.execute(_SUMMARIZE_SEQ_INDEX)
    except sa_exc.ProgrammingError as exc:
        logger.warning(
            "could not summarise ix_decisions_seq; the purge reads more than it needs",
            extra={"error": str(exc.orig).splitlines()[0] if exc.orig else str(exc)},
        )


def _purge_decisions(engine: Engine, seqs: Sequence[int], batch_size: int) -> None:
    """Delete the decision rows of the cycles ``seqs`` (ascending), about ``batch_size`` rows per
    transaction.

    Each statement deletes whole cycles (``seq IN (...)`` within its first and last seq, which
    PostgreSQL's BRIN index on seq turns into a few block ranges), as many as the previous
    statement's rows per cycle suggest fit in ``batch_size``, at least one (a full snapshot goes
    in one transaction). The former "the next ``batch_size`` rows of these cycles" (a
    ``LIMIT`` subquery) re-read the rows it had already deleted on every batch; on an hour of
    10,000-target history, 150 cycles are purged in 0.4–0.7 s this way, against 10.2 s for the
    former way on the BRIN index and 2.4–2.8 s for the former way on the former B-tree.
    """
    start, group = 0, 1
    while start < len(seqs):
        chunk = seqs[start : start + group]
        with engine.begin() as connection:
            deleted = connection.execute(
                delete(_decisions).where(
                    _decisions.c.seq.between(chunk[0], chunk[-1]), _decisions.c.seq.in_(chunk)
                )
            ).rowcount
        start += len(chunk)
        group = max(1, min(IN_LIST_CHUNK, batch_size * len(chunk) // max(deleted, 1)))
