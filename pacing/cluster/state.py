"""Per-target pacing state and engagement feedback in Redis (design.md §2.3).

Any worker may pace any shard, so the state lives in Redis: one hash field per target, the value
the raw bytes of a float64 vector. A shard reads its state and feedback in one pipelined round
trip and writes its state back, with the statistics it paced on, in another. A missing,
truncated or foreign-width value reads as a row of NaN, which the algorithms treat as a cold
start (algorithm.md §2); a row shorter by whole columns (written before columns were appended)
keeps the columns it has.

Each value is the row's raw little-endian bytes: packing and unpacking are ``tobytes`` and
``frombuffer``, with no text encoding. The commands carrying a shard's rows (an HSET of
2 × targets arguments, an HMGET of targets) are put in the Redis protocol here and sent with
:func:`round_trip`, which is faster than redis-py's own packing (see "commands packed here").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple, cast

import numpy as np
import redis
from numpy.typing import NDArray

from pacing.algorithms import OperatingPoints
from pacing.clients.statistics import COLUMN, STATISTICS_FIELDS, StatisticsBatch
from pacing.cluster.keys import Keys
from pacing.domain import OfferFeedback, Reason, StatisticsError

FEEDBACK_WIDTH = 4  # sent, accepted, resolved, pending
#: refreshed by every successful fetch; the expiry only clears the rows of a stopped cluster
LAST_STATISTICS_TTL_SECONDS = 24 * 3600


class LoadedState(NamedTuple):
    """What a shard reads before pacing (NaN where unknown).

    ``in_flight`` is the budget each target was given by the publish whose feedback
    ``feedback`` is: the engagement platform answers a publish with the counters of that
    moment and then sends the budget over the refresh period, so those invitations are in none
    of the counters the next cycle reads. The rules count them as pending (algorithm.md §2).
    """

    state: NDArray[np.float64]
    feedback: NDArray[np.float64]
    in_flight: NDArray[np.float64]


class StateStore:
    """Reads and writes the per-target state and feedback of one cluster."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    def load(self, target_ids: Sequence[str], *, width: int) -> LoadedState:
        """State rows ``(n, width)``, feedback rows ``(n, 4)`` and the budgets in flight
        ``(n,)``, in one round trip; NaN where unknown."""
        if not target_ids:
            return LoadedState(np.empty((0, width)), np.empty((0, FEEDBACK_WIDTH)), np.empty(0))
        ids = _encoded(target_ids)
        raw_state, raw_feedback, raw_in_flight = cast(
            list[list[bytes | None]],
            round_trip(
                self._client,
                [
                    _packed_hmget(self._keys.state, ids),
                    _packed_hmget(self._keys.feedback, ids),
                    _packed_hmget(self._keys.in_flight, ids),
                ],
            ),
        )
        return LoadedState(
            _unpack(raw_state, width),
            _unpack(raw_feedback, FEEDBACK_WIDTH),
            _unpack(raw_in_flight, 1)[:, 0],
        )

    def save(
        self,
        target_ids: Sequence[str],
        state: NDArray[np.float64],
        *,
        statistics: StatisticsBatch | None = None,
    ) -> None:
        """Store one state row per target and, if given, each target's valid statistics (kept
        for when no Stat Server answers), in one round trip."""
        if not target_ids:
            return
        commands = [_packed_hset(self._keys.state, _encoded(target_ids), state)]
        if statistics is not None:
            valid = statistics.valid()
            if valid.any():
                ids = [tid for tid, ok in zip(statistics.ids, valid.tolist(), strict=True) if ok]
                commands.append(
                    _packed_hset(
                        self._keys.last_statistics, _encoded(ids), statistics.matrix[valid]
                    )
                )
                commands.append(
                    _packed(b"EXPIRE", self._keys.last_statistics, LAST_STATISTICS_TTL_SECONDS)
                )
        round_trip(self._client, commands)

    def save_feedback(self, feedback: Mapping[str, OfferFeedback]) -> None:
        """Store the counters the engagement platform returned (partial maps keep the rest)."""
        # columns in OfferFeedback's field order: sent, accepted, resolved, pending
        rows = np.array(list(feedback.values()), dtype=np.float64).reshape(-1, FEEDBACK_WIDTH)
        self.save_feedback_rows(list(feedback), rows)

    def save_feedback_rows(
        self,
        target_ids: Sequence[str],
        rows: NDArray[np.float64],
        *,
        in_flight: tuple[Sequence[str], NDArray[np.float64]] | None = None,
    ) -> None:
        """:meth:`save_feedback` from ids and an (n, 4) array of counters, and with them, in the
        same round trip, the budgets ``in_flight = (ids, budgets)`` of the publish that returned
        them (:class:`LoadedState`)."""
        commands = []
        if target_ids:
            commands.append(_packed_hset(self._keys.feedback, _encoded(target_ids), rows))
        if in_flight is not None and in_flight[0]:
            ids, budgets = in_flight
            commands.append(
                _packed_hset(
                    self._keys.in_flight,
                    _encoded(ids),
                    np.asarray(budgets, dtype=np.float64)[:, None],
                )
            )
        if commands:
            round_trip(self._client, commands)

    def last_statistics(
        self, target_ids: Sequence[str], *, now: float, max_age_seconds: float
    ) -> StatisticsBatch:
        """Each target's last valid statistics while younger than ``max_age_seconds``, else
        STALE (design.md §3.1: both gateways down)."""
        ids = list(dict.fromkeys(target_ids))
        rows = _unpack(self._client.hmget(self._keys.last_statistics, ids), len(STATISTICS_FIELDS))
        batch = StatisticsBatch(ids, rows)
        ages = now - rows[:, COLUMN["timestamp"]]
        for tid, age in zip(ids, ages.tolist(), strict=True):
            if math.isnan(age):
                detail = "no Stat Server answered and no earlier statistics are known"
            elif age > max_age_seconds:
                detail = (
                    f"no Stat Server answered; the last statistics are {age:.1f} s old "
                    f"(limit {max_age_seconds:g} s)"
                )
            else:
                continue
            batch.errors[tid] = StatisticsError(tid, Reason.STALE, detail)
        stale = ~batch.valid()
        rows[stale] = math.nan
        return batch

    def forget(self, target_ids: Sequence[str]) -> None:
        """Drop the state and feedback of targets that no longer exist."""
        if target_ids:
            pipe = self._client.pipeline(transaction=False)
            pipe.hdel(self._keys.state, *target_ids)
            pipe.hdel(self._keys.feedback, *target_ids)
            pipe.hdel(self._keys.in_flight, *target_ids)
            pipe.hdel(self._keys.last_statistics, *target_ids)
            pipe.execute()


# --- commands packed here ---------------------------------------------------------------------
# A shard's state round trips carry 2 × targets arguments per HSET and targets per HMGET. redis-py
# packs each argument through a Python generator before hiredis (an HSET of 2,500 state rows
# from a mapping: 4.2 ms, medians of 40 on the benchmark machine); one bytes format per row
# here takes 2.2 ms, and the commands go out on one pooled connection as a pipeline would send
# them. 100,000 targets: about 0.1 s of CPU per cycle less, spread over the worker processes.


def _encoded(target_ids: Sequence[str]) -> list[bytes]:
    return [tid.encode() for tid in target_ids]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _packed(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol (RESP) from a few bytes, str or int arguments."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(map(_bulk, parts))


def _packed_hmget(key: str, ids: Sequence[bytes]) -> bytes:
    return b"*%d\r\n$5\r\nHMGET\r\n%b%b" % (
        len(ids) + 2,
        _bulk(key.encode()),
        b"".join(map(_bulk, ids)),
    )


def _packed_hset(key: str, ids: Sequence[bytes], rows: NDArray[np.float64]) -> bytes:
    """HSET key id row …, each row its raw little-endian float64 bytes (one format per row)."""
    packed = np.ascontiguousarray(rows, dtype="<f8")
    width = packed.shape[1] * 8 if packed.ndim == 2 else 0
    raw = packed.tobytes()
    fields = b"".join(
        [
            b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(tid), tid, width, raw[i * width : (i + 1) * width])
            for i, tid in enumerate(ids)
        ]
    )
    return b"*%d\r\n$4\r\nHSET\r\n%b%b" % (2 * len(ids) + 2, _bulk(key.encode()), fields)


def round_trip(client: redis.Redis, commands: Sequence[bytes]) -> list[object]:
    """Send packed ``commands`` in one write and read their replies, like a pipeline.

    Every reply is read before an error reply is raised, so the pooled connection stays in step.
    A connection that fails or times out is dropped and the whole batch sent once more on a
    fresh one (the commands here are idempotent), as the client's own retry would.
    """
    pool = client.connection_pool
    payload = b"".join(commands)
    for attempt in (1, 2):
        connection = pool.get_connection()
        try:
            connection.send_packed_command([payload])  # type: ignore[no-untyped-call]
            replies: list[object] = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as error:  # raised as read: keep reading the rest
                    replies.append(error)
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()  # type: ignore[no-untyped-call]
            if attempt == 2:
                raise
            continue
        except BaseException:
            # a reply may be half read: this socket is never used again
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(connection)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies
    raise AssertionError("unreachable")


def _unpack(values: Sequence[bytes | str | None], width: int) -> NDArray[np.float64]:
    expected = width * 8
    if all(isinstance(value, bytes) and len(value) == expected for value in values):
        # the common case, every row known: one join and one frombuffer for the whole shard
        joined = b"".join(cast(Sequence[bytes], values))
        return np.frombuffer(joined, dtype="<f8").reshape(len(values), width).copy()
    out = np.full((len(values), width), math.nan)
    for i, value in enumerate(values):
        if isinstance(value, bytes) and len(value) <= expected and len(value) % 8 == 0:
            # a row written before columns were appended keeps its columns; the new ones
            # start unknown (an upgrade is not a cold start)
            row = np.frombuffer(value, dtype="<f8")
            out[i, : row.size] = row
    return out


#: The shared operating points expire a day after the last new one: a grid point is valid
#: forever, this only clears the list of a cluster that stopped.
OPERATING_POINTS_TTL_SECONDS = 24 * 3600
#: Past this many batches the list starts again (every process keeps its own cache).
OPERATING_POINTS_MAX_BATCHES = 20_000
_POINT = np.dtype([("ceiling", "<f8"), ("key", "<i8"), ("load", "<f8"), ("abandon", "<f8")])


class SharedOperatingPoints:
    """The Erlang-A operating-point cache of this process, shared through Redis.

    Solving a missing grid point costs a vectorised root search (milliseconds), and each worker
    process starts with an empty cache: without sharing, every process of every node solves
    the same points again, and a new leader's workers pace their first cycles slowly. Each
    process appends the points it solved as one packed batch to a Redis list and reads the
    batches it has not seen yet (one LRANGE per shard, nothing to decode when nothing is new).
    A grid point has one value whoever solves it (same code, same grid); values that are not
    a plausible operating point are ignored.
    """

    def __init__(self, client: redis.Redis, keys: Keys, cache: OperatingPoints) -> None:
        self._client = client
        self._key = keys.operating_points
        self._cache = cache
        self._seen = 0  # batches of the list already absorbed (or pushed by this process)

    def pull(self) -> int:
        """Absorb the points solved elsewhere since the last pull; returns how many were new."""
        pipe = self._client.pipeline(transaction=False)
        pipe.lrange(self._key, self._seen, -1)
        pipe.llen(self._key)
        batches, length = cast(tuple[list[bytes], int], tuple(pipe.execute()))
        if length < self._seen:  # the list expired or started again: read it from the start
            self._seen = 0
            return self.pull() if length else 0
        self._seen += len(batches)
        blob = b"".join(b for b in batches if len(b) % _POINT.itemsize == 0)
        if not blob:
            return 0
        points = np.frombuffer(blob, dtype=_POINT)
        plausible = (
            np.isfinite(points["load"])
            & np.isfinite(points["abandon"])
            & (points["load"] > 0)
            & (points["abandon"] >= 0)
            & (points["abandon"] <= 1)
        )
        absorbed = 0
        for ceiling in np.unique(points["ceiling"][plausible]).tolist():
            rows = points[plausible & (points["ceiling"] == ceiling)]
            values = np.column_stack([rows["load"], rows["abandon"]]).astype(np.float64)
            absorbed += self._cache.absorb(ceiling, rows["key"].astype(np.int64), values)
        return absorbed

    def push(self) -> None:
        """Share the points this process solved since the last push (no-op if none)."""
        fresh = self._cache.export_fresh()
        if not fresh:
            return
        points = np.empty(sum(keys.size for _, keys, _ in fresh), dtype=_POINT)
        start = 0
        for ceiling, keys, values in fresh:
            end = start + keys.size
            points["ceiling"][start:end] = ceiling
            points["key"][start:end] = keys
            points["load"][start:end] = values[:, 0]
            points["abandon"][start:end] = values[:, 1]
            start = end
        pipe = self._client.pipeline(transaction=False)
        pipe.rpush(self._key, points.tobytes())
        pipe.expire(self._key, OPERATING_POINTS_TTL_SECONDS)
        length = cast(int, pipe.execute()[0])
        if length == self._seen + 1:
            self._seen = length  # nobody else pushed meanwhile: no need to read our own batch
        if length > OPERATING_POINTS_MAX_BATCHES:
            self._client.delete(self._key)
