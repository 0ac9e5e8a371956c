"""Client of the Stat Server gateway: live statistics per pacing target (docs/contracts.md §1).

Public surface:

* :func:`parse_statistics_response` — pure validation of one decoded response body into a
  :class:`~pacing.clients.statistics.StatisticsBatch`: every requested target gets either
  :class:`~pacing.domain.TargetStatistics` or a :class:`~pacing.domain.StatisticsError`.
* :class:`StatServerClient` — ``POST {base}/v1/statistics/query`` against the primary/backup pair
  with failover inside one call and failback to the primary after a quiet interval.

Errors come from :mod:`pacing.errors`: :class:`~pacing.errors.InvalidResponse` for a body that is
not the documented shape (the client turns it into a failover) and
:class:`~pacing.errors.StatServerUnavailable` when neither server answered usably.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, Literal, cast

import numpy as np
import orjson
import requests
from numpy.typing import NDArray

from pacing.clients._http import is_json, read_capped, url_for_messages
from pacing.clients.statistics import (
    COLUMN,
    INTEGER_FIELDS,
    STATISTICS_FIELDS,
    StatisticsBatch,
    statistics_row,
)
from pacing.domain import Reason, StatisticsError, TargetStatistics, is_valid_target_id
from pacing.errors import InvalidResponse, StatServerUnavailable

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_IDS_PER_REQUEST",
    "QUERY_PATH",
    "ServerRole",
    "StatServerClient",
    "parse_statistics_response",
]

logger = logging.getLogger(__name__)

QUERY_PATH: Final = "/v1/statistics/query"
#: The contract's limit per request; a larger shard is split into several requests.
MAX_IDS_PER_REQUEST: Final = 5000
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
#: Anything above this is a unit mix-up or garbage, never a real count, rate or duration.
ABSURD_NUMBER: Final = 1e12
#: Gateway and node clocks are NTP-synchronised, not identical; a row a little "from the future"
#: is clock skew, a row far in the future is a broken gateway clock.
FUTURE_TOLERANCE_SECONDS: Final = 5.0

ServerRole = Literal["primary", "backup"]


class _RowProblem(Exception):
    """Internal: one row breaks a rule; carries the per-target reason and a short detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_statistics_response(
    body: object,
    requested_ids: Sequence[str],
    *,
    now: float,
    max_age_seconds: float,
) -> StatisticsBatch:
    """Validate a decoded ``/v1/statistics/query`` body target by target.

    Every id in ``requested_ids`` gets an entry: listed in ``unknown`` or absent from
    ``statistics`` → ``UNKNOWN_TARGET``; a missing field, wrong type, negative, non-finite or
    absurd number, inconsistent staffing or a timestamp in the future → ``ERROR``; a row older
    than ``max_age_seconds`` at ``now`` → ``STALE``. Rows for ids nobody asked for are ignored.

    Raises :class:`InvalidResponse` only when the body as a whole is not the documented shape
    (not an object, no ``statistics`` object, an ``unknown`` that is not a list).
    """
    if not isinstance(body, Mapping):
        raise InvalidResponse("The Stat Server response is not a JSON object.")
    statistics = body.get("statistics")
    if not isinstance(statistics, Mapping):
        raise InvalidResponse("The Stat Server response has no 'statistics' object.")
    unknown_field = body.get("unknown", [])
    # A malformed 'unknown' list means we cannot tell which targets the gateway disowns; the
    # whole answer is suspect and the other server of the pair may do better.
    if not isinstance(unknown_field, list):
        raise InvalidResponse("The Stat Server response has an 'unknown' field that is not a list.")
    unknown = {item for item in unknown_field if isinstance(item, str)}

    batch = StatisticsBatch.empty(list(dict.fromkeys(requested_ids)))
    errors = batch.errors
    positions: list[int] = []
    rows: list[object] = []
    for position, target_id in enumerate(batch.ids):
        row = statistics.get(target_id, _ABSENT) if target_id not in unknown else _ABSENT
        if row is _ABSENT:
            detail = (
                "the Stat Server does not know this target"
                if target_id in unknown
                else "absent from the Stat Server response"
            )
            errors[target_id] = StatisticsError(target_id, Reason.UNKNOWN_TARGET, detail)
        else:
            positions.append(position)
            rows.append(row)
    table = _fast_rows(rows, now=now, max_age_seconds=max_age_seconds)
    if table is not None:
        good, values = table
        batch.matrix[np.asarray(positions, dtype=np.intp)[good]] = values[good]
        suspects = np.flatnonzero(~good).tolist()
    else:
        suspects = list(range(len(rows)))
    # The rows the fast path did not vouch for go through the reference validation, which
    # names the first problem of each row.
    for k in suspects:
        position, target_id = positions[k], batch.ids[positions[k]]
        try:
            parsed = _parse_row(target_id, rows[k], now=now, max_age_seconds=max_age_seconds)
        except _RowProblem as problem:
            errors[target_id] = StatisticsError(target_id, problem.reason, problem.detail)
        else:
            batch.matrix[position] = statistics_row(parsed)
    return batch


_ABSENT: Final = object()
_ROW_GETTER: Final = operator.itemgetter(*STATISTICS_FIELDS)
_FLOAT_COLUMNS: Final = tuple(COLUMN[name] for name in ("timestamp", "aht_seconds"))
_INT_COLUMNS: Final = tuple(COLUMN[name] for name in INTEGER_FIELDS)


def _fast_rows(
    rows: Sequence[object], *, now: float, max_age_seconds: float
) -> tuple[NDArray[np.bool_], NDArray[np.float64]] | None:
    """All rows at once, with column-wise type checks and array range checks.

    Returns a mask of the rows that pass every rule of :func:`_parse_row` and the values of all
    rows, or None when the batch has a row that is not an object or lacks a field, or a column
    with a value of the wrong type (then every row takes the per-row path). Measured on 10,000
    rows: 9 ms against 110 ms for the per-row validation, which is the reference: a row is
    accepted here only if it would be accepted there, with the same values.
    """
    if not rows:
        return None
    if any(type(row) is not dict for row in rows):  # orjson objects are dicts; else per row
        return None
    try:
        columns = list(zip(*map(_ROW_GETTER, cast(list[dict[str, object]], rows)), strict=True))
    except KeyError:
        return None
    for index in _INT_COLUMNS:
        if set(map(type, columns[index])) != {int}:  # bool is a subclass: its type is bool
            return None
    for index in _FLOAT_COLUMNS:
        if not set(map(type, columns[index])) <= {int, float}:
            return None
    try:
        values = np.array(columns, dtype=np.float64).T
    except OverflowError:  # an integer beyond float64: the per-row path calls it absurd
        return None
    c = COLUMN
    with np.errstate(invalid="ignore"):
        good = (
            np.isfinite(values).all(axis=1)
            & (values >= 0).all(axis=1)
            & (values <= ABSURD_NUMBER).all(axis=1)
            & (
                values[:, c["agents_ready"]] + values[:, c["agents_busy"]]
                <= values[:, c["agents_logged_in"]]
            )
            & (values[:, c["timestamp"]] <= now + FUTURE_TOLERANCE_SECONDS)
            & (now - values[:, c["timestamp"]] <= max_age_seconds)
        )
    return good, np.ascontiguousarray(values)


def _parse_row(
    target_id: str, row: object, *, now: float, max_age_seconds: float
) -> TargetStatistics:
    if not isinstance(row, Mapping):
        raise _RowProblem(Reason.ERROR, "the statistics row is not an object")
    timestamp = _number(row, "timestamp")
    counts = {name: _integer(row, name) for name in INTEGER_FIELDS}
    # aht_seconds may be 0 even with answered_total > 0: "handled" means finished (talk and
    # wrap-up), and the first answered interactions are still in progress. 0 means "no data yet".
    aht_seconds = _number(row, "aht_seconds")
    if counts["agents_ready"] + counts["agents_busy"] > counts["agents_logged_in"]:
        raise _RowProblem(
            Reason.ERROR, "agents_ready + agents_busy is larger than agents_logged_in"
        )
    if timestamp > now + FUTURE_TOLERANCE_SECONDS:
        raise _RowProblem(Reason.ERROR, "timestamp is in the future")
    age = now - timestamp
    if age > max_age_seconds:
        raise _RowProblem(
            Reason.STALE, f"statistics are {age:.1f} s old (limit {max_age_seconds:g} s)"
        )
    return TargetStatistics(
        target_id=target_id,
        timestamp=timestamp,
        agents_logged_in=counts["agents_logged_in"],
        agents_ready=counts["agents_ready"],
        agents_busy=counts["agents_busy"],
        interactions_waiting=counts["interactions_waiting"],
        aht_seconds=aht_seconds,
        answered_total=counts["answered_total"],
        abandoned_total=counts["abandoned_total"],
        reactive_arrivals_total=counts["reactive_arrivals_total"],
    )


def _field(row: Mapping[object, object], name: str) -> object:
    if name not in row:
        raise _RowProblem(Reason.ERROR, f"{name} is missing")
    return row[name]


def _integer(row: Mapping[object, object], name: str) -> int:
    value = _field(row, name)
    # bool is an int subclass in Python; JSON true is not a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _RowProblem(Reason.ERROR, f"{name} is not an integer")
    _check_range(name, value)
    return value


def _number(row: Mapping[object, object], name: str) -> float:
    value = _field(row, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RowProblem(Reason.ERROR, f"{name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _RowProblem(Reason.ERROR, f"{name} is not finite")
    _check_range(name, value)
    return float(value)


def _check_range(name: str, value: float) -> None:
    if value < 0:
        raise _RowProblem(Reason.ERROR, f"{name} is negative")
    if value > ABSURD_NUMBER:
        raise _RowProblem(Reason.ERROR, f"{name} is larger than 10^12")


class _Unusable(Exception):
    """Internal: one server's answer cannot be used; the message is a short, secret-free cause."""


class StatServerClient:
    """Fetches statistics from the Stat Server gateway pair with failover and failback.

    The client is meant to live for the whole worker process (created after fork) and is cheap
    to call from one thread at a time; the failover state is guarded by a lock anyway.
    """

    def __init__(
        self,
        *,
        primary_url: str,
        backup_url: str | None,
        session: requests.Session,
        connect_timeout: float,
        read_timeout: float,
        max_age_seconds: float,
        failback_seconds: float = 30.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (Unix seconds) judges row ages and the failback interval; ``monotonic``
        bounds a response body to the connect plus the read timeout."""
        self._urls: dict[ServerRole, str] = {"primary": primary_url.rstrip("/")}
        if backup_url is not None:
            self._urls["backup"] = backup_url.rstrip("/")
        self._session = session
        self._timeout = (connect_timeout, read_timeout)
        self._max_age_seconds = max_age_seconds
        self._failback_seconds = failback_seconds
        self._max_body_bytes = max_body_bytes
        # One clock for row ages and for failback: rows carry Unix timestamps, so wall time.
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._active: ServerRole = "primary"
        self._active_since = clock()

    def __repr__(self) -> str:
        urls = ", ".join(f"{role}={url_for_messages(url)!r}" for role, url in self._urls.items())
        return f"StatServerClient({urls}, active={self._active!r})"

    @property
    def active_server(self) -> ServerRole:
        """The server asked first on the next call: ``"primary"`` or ``"backup"``."""
        return self._active

    def fetch(self, target_ids: Sequence[str]) -> StatisticsBatch:
        """Return statistics or a per-target error for every id in ``target_ids``.

        Ids that are not valid target ids are answered with ``ERROR`` without asking the
        gateway. Raises :class:`StatServerUnavailable` if neither server answered usably.
        """
        invalid: dict[str, StatisticsError] = {}
        to_query: list[str] = []
        for target_id in dict.fromkeys(target_ids):
            if is_valid_target_id(target_id):
                to_query.append(target_id)
            else:
                invalid[target_id] = StatisticsError(
                    target_id, Reason.ERROR, "not a valid target id"
                )
        answers = [self._query_pair(batch) for batch in _batches(to_query, MAX_IDS_PER_REQUEST)]
        if invalid:
            answers.append(StatisticsBatch.empty(list(invalid)))
            answers[-1].errors.update(invalid)
        return StatisticsBatch.concat(answers)

    def _query_pair(self, target_ids: list[str]) -> StatisticsBatch:
        causes: list[str] = []
        for role in self._order():
            try:
                answer = self._query_one(role, target_ids)
            except _Unusable as unusable:
                causes.append(f"{role} {url_for_messages(self._urls[role])}: {unusable}")
                logger.warning(
                    "Stat Server answer unusable",
                    extra={"server": role, "cause": str(unusable)},
                )
                continue
            self._remember(role, primary_failed=bool(causes))
            return answer
        raise StatServerUnavailable(
            "No Stat Server gateway answered usably ("
            + "; ".join(causes)
            + "). Check that the gateways are running and that stat_server_primary_url and "
            "stat_server_backup_url point at them."
        )

    def _order(self) -> list[ServerRole]:
        if "backup" not in self._urls:
            return ["primary"]
        with self._lock:
            active = self._active
            since = self._active_since
        if active == "backup" and self._clock() - since < self._failback_seconds:
            return ["backup", "primary"]
        return ["primary", "backup"]

    def _remember(self, role: ServerRole, *, primary_failed: bool) -> None:
        with self._lock:
            if role == "backup" and primary_failed:
                # (Re)start the failback interval only when the primary was just tried and
                # failed, so a primary that is still down costs one attempt per interval.
                self._active_since = self._clock()
            if role != self._active:
                logger.warning("Stat Server switched", extra={"server": role})
                self._active = role

    def _query_one(self, role: ServerRole, target_ids: list[str]) -> StatisticsBatch:
        url = self._urls[role] + QUERY_PATH
        request_body = orjson.dumps({"targets": target_ids})
        # requests' read timeout bounds each socket read, not the whole body; a server that
        # trickles bytes would otherwise hold the shard past the refresh period. The deadline is
        # checked per received chunk, so it bounds a slow large body, not a byte-per-second one.
        deadline = self._monotonic() + self._timeout[0] + self._timeout[1]
        try:
            with self._session.post(
                url,
                data=request_body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    raise _Unusable(f"HTTP {response.status_code}")
                if not is_json(response.headers.get("Content-Type")):
                    raise _Unusable("the response is not application/json")
                raw = read_capped(
                    response,
                    max_bytes=self._max_body_bytes,
                    deadline=deadline,
                    what="the server",
                    clock=self._monotonic,
                )
        except InvalidResponse as exc:  # too large or undecodable
            raise _Unusable(str(exc)) from exc
        except requests.Timeout as exc:
            raise _Unusable("timed out") from exc
        except requests.ConnectionError as exc:
            raise _Unusable("connection failed or broke") from exc
        except requests.RequestException as exc:
            raise _Unusable(f"request failed ({type(exc).__name__})") from exc
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Unusable("the body is not valid JSON") from exc
        try:
            return parse_statistics_response(
                body, target_ids, now=self._clock(), max_age_seconds=self._max_age_seconds
            )
        except InvalidResponse as exc:
            raise _Unusable(str(exc)) from exc


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
