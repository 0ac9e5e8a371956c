"""The shard stage (``pacing.pace_shard``, the chord header): one shard's statistics, state and
pacing, and its rows (:mod:`pacing.cycle.rows`) parked in Redis for the merge.

:func:`run_shard` is the task's work: it decodes the shard's rows (or reads them back from the
digest they are parked under), paces them (:func:`pace_shard`) and, should that fail, gives every
target an error row (:func:`failed_shard`). :func:`park_shard` and :func:`collect_shards` move
the rows through Redis instead of the result backend.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from pacing import algorithms
from pacing.algorithms import PacingInputs
from pacing.clients.statistics import COLUMN, StatisticsBatch
from pacing.cycle.plan import pacing_parameters
from pacing.cycle.rows import ShardRows, interaction_outcomes, optional_ints
from pacing.cycle.split import ShardTargets
from pacing.domain import Reason
from pacing.errors import StatServerUnavailable
from pacing.services import Services

logger = logging.getLogger(__name__)

REACTIVE_DECIMALS = 4  # reactive_state is published with this precision; changes below it are noise

_STAT_FIELDS = (
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "aht_seconds",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
)


#: The state columns holding the Stat Server counters answered_total and abandoned_total as
#: last seen (the exporter's abandonment is their change over a cycle)
_COUNTER_COLUMNS = [
    algorithms.STATE_FIELDS.index("last_answered_total"),
    algorithms.STATE_FIELDS.index("last_abandoned_total"),
]


def run_shard(
    services: Services,
    *,
    seq: int,
    shard: int,
    rows: Sequence[Sequence[Any]] | str,
    epoch: int = 0,
) -> ShardRows:
    """One chord header task's work on its target rows, or on the digest they are parked
    under (:func:`park_targets`); a shard that fails gets error rows.

    Raises :class:`ShardTargetsMissing` only if the rows are parked and gone: without them
    not even error rows can be made, and the merge must not publish a cycle without them.
    """
    if isinstance(rows, str):
        rows = services.shard_targets(rows)
    try:
        targets = ShardTargets.from_rows(rows)
        return pace_shard(services, seq=seq, shard=shard, targets=targets)
    except Exception:
        logger.exception(
            "shard failed; its targets get error rows",
            extra={"seq": seq, "shard": shard, "epoch": epoch},
        )
        return failed_shard(seq=seq, shard=shard, rows=rows)


def pace_shard(services: Services, *, seq: int, shard: int, targets: ShardTargets) -> ShardRows:
    """Fetch one shard's statistics, pace it and save its state. Never raises for a target."""
    clock = services.clock
    ids = targets.ids
    started_at = clock()
    started = time.perf_counter()
    statistics: StatisticsBatch
    try:
        statistics = services.stat_server.fetch(ids)
    except StatServerUnavailable as error:
        # design.md §3.1: with both gateways down, a target keeps its last good statistics
        # while they are younger than stats_max_age; only then is it paced as stale (budget 0)
        statistics = services.state.last_statistics(
            ids, now=clock(), max_age_seconds=services.settings.stats_max_age
        )
        logger.warning(
            "no Stat Server answered; shard paced on its last good statistics or as stale",
            extra={"seq": seq, "shard": shard, "error": str(error)},
        )
        fresh = False
    else:
        fresh = True
    fetched = time.perf_counter()

    state, feedback, in_flight = services.state.load(ids, width=algorithms.STATE_WIDTH)
    services.operating_points.pull()
    inputs = _inputs(ids, statistics, feedback, in_flight)
    result = algorithms.pace(
        inputs,
        targets.targets,
        state,
        parameters=pacing_parameters(services.settings),
        now=clock(),
    )
    # one round trip: the new state, and the fresh statistics for when no gateway answers
    services.state.save(ids, result.state, statistics=statistics if fresh else None)
    services.operating_points.push()
    # what the Stat Server counted since the previous cycle, for the exporter's abandonment
    outcomes = shard_outcomes(targets, before=state, after=result.state)
    paced = time.perf_counter()
    return ShardRows(
        shard=shard,
        seq=seq,
        ids=ids,
        channel=targets.channel,
        budget=result.proactive_budget.tolist(),
        reactive=np.round(result.reactive_state, REACTIVE_DECIMALS).tolist(),
        reason=result.reason.tolist(),
        ready=optional_ints(inputs.agents_ready),
        busy=optional_ints(inputs.agents_busy),
        waiting=optional_ints(inputs.interactions_waiting),
        fetch_ms=(fetched - started) * 1000,
        pace_ms=(paced - fetched) * 1000,
        started_at=started_at,
        finished_at=clock(),
        outcomes=outcomes,
        answered=fresh,
    )


def shard_outcomes(
    targets: ShardTargets, *, before: NDArray[np.float64], after: NDArray[np.float64]
) -> dict[str, list[float]]:
    """Per channel, the interactions the shard's targets answered and abandoned between the
    state ``before`` pace() and the state it returned (:func:`interaction_outcomes`).
    """
    return interaction_outcomes(
        targets.channel,
        before=before[:, _COUNTER_COLUMNS],
        after=after[:, _COUNTER_COLUMNS],
        goal=targets.abandonment_goal,
    )


#: Parked shard rows outlive any cycle that could still merge them (cycle_deadline ≤ 120 s).
PARKED_ROWS_SECONDS = 600


def park_shard(services: Services, rows: ShardRows) -> dict[str, Any]:
    """Keep a shard's rows in Redis and return the small reference the chord carries.

    Celery moves a header result through the result backend, the chord's join set and the
    body's message, JSON-encoding it with the standard library at each step; 10,000 targets'
    rows made that about 600 KB coded six times, 40-50 ms between the last shard and the
    merge. Parked, they are written once and read once, with orjson, in one MGET.
    """
    services.redis.set(
        services.keys.shard_rows(rows.seq, rows.shard),
        orjson.dumps(rows.to_json()),
        ex=PARKED_ROWS_SECONDS,
    )
    return {"parked": True, "seq": rows.seq, "shard": rows.shard}


def collect_shards(
    services: Services, results: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The rows behind the chord's results: parked ones read back (one round trip), others as
    they are. A parked shard whose rows are gone is left out, so the merge reports it
    missing."""
    parked = [r for r in results if r.get("parked")]
    rows: list[Mapping[str, Any]] = [r for r in results if not r.get("parked")]
    if parked:
        keys = [services.keys.shard_rows(int(r["seq"]), int(r["shard"])) for r in parked]
        rows.extend(orjson.loads(raw) for raw in services.redis.mget(keys) if raw)
    return rows


def forget_shards(services: Services, seq: int, shard_count: int) -> None:
    if shard_count:
        services.redis.delete(*(services.keys.shard_rows(seq, i) for i in range(shard_count)))


def failed_shard(*, seq: int, shard: int, rows: Sequence[Sequence[Any]]) -> ShardRows:
    """Error rows for a whole shard whose processing failed unexpectedly: budget 0 each."""
    n = len(rows)
    return ShardRows(
        shard=shard,
        seq=seq,
        ids=[str(row[0]) if len(row) > 0 else "" for row in rows],
        channel=[str(row[1]) if len(row) > 1 else "" for row in rows],
        budget=[0] * n,
        reactive=[1.0] * n,
        reason=[int(Reason.ERROR)] * n,
        ready=[None] * n,
        busy=[None] * n,
        waiting=[None] * n,
        fetch_ms=0.0,
        pace_ms=0.0,
        answered=False,
    )


def _inputs(
    ids: Sequence[str],
    statistics: StatisticsBatch,
    feedback: np.ndarray[Any, np.dtype[np.float64]],
    in_flight: np.ndarray[Any, np.dtype[np.float64]],
) -> PacingInputs:
    rows = statistics.rows_for(ids)
    reason = np.zeros(len(ids), dtype=np.int8)
    errors = statistics.errors
    for i, tid in enumerate(ids):
        if tid in errors:
            reason[i] = errors[tid].reason
        elif math.isnan(rows[i, 0]):  # an id the answer did not cover at all
            reason[i] = Reason.UNKNOWN_TARGET
    return PacingInputs(
        **{name: rows[:, COLUMN[name]].copy() for name in _STAT_FIELDS},
        offers_sent_total=feedback[:, 0].copy(),
        offers_accepted_total=feedback[:, 1].copy(),
        offers_resolved_total=feedback[:, 2].copy(),
        offers_pending=feedback[:, 3].copy(),
        offers_in_flight=in_flight.copy(),
        input_reason=reason,
    )
