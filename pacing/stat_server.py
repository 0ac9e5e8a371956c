"""Client of the Stat Server gateway: live statistics per pacing target (docs/contracts.md §1).

Public surface:

* :func:`parse_statistics_response` — pure validation of one decoded response body; every
  requested target gets either :class:`~pacing.domain.TargetStatistics` or a
  :class:`~pacing.domain.StatisticsError`.
* :class:`StatServerClient` — ``POST {base}/v1/statistics/query`` against the primary/backup pair
  with failover inside one call and failback to the primary after a quiet interval.

Errors come from :mod:`pacing.errors`: :class:`~pacing.errors.InvalidResponse` for a body that is
not the documented shape (the client turns it into a failover) and
:class:`~pacing.errors.StatServerUnavailable` when neither server answered usably.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, Literal

import orjson
import requests

from pacing._http import is_json, read_capped, url_for_messages
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

_INTEGER_FIELDS: Final = (
    "agents_logged_in",
    "agents_ready",
    "agents_busy",
    "interactions_waiting",
    "answered_total",
    "abandoned_total",
    "reactive_arrivals_total",
)


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
) -> dict[str, TargetStatistics | StatisticsError]:
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

    results: dict[str, TargetStatistics | StatisticsError] = {}
    for target_id in requested_ids:
        if target_id in results:
            continue
        if target_id in unknown:
            results[target_id] = StatisticsError(
                target_id, Reason.UNKNOWN_TARGET, "the Stat Server does not know this target"
            )
        elif target_id not in statistics:
            results[target_id] = StatisticsError(
                target_id, Reason.UNKNOWN_TARGET, "absent from the Stat Server response"
            )
        else:
            try:
                results[target_id] = _parse_row(
                    target_id, statistics[target_id], now=now, max_age_seconds=max_age_seconds
                )
            except _RowProblem as problem:
                results[target_id] = StatisticsError(target_id, problem.reason, problem.detail)
    return results


def _parse_row(
    target_id: str, row: object, *, now: float, max_age_seconds: float
) -> TargetStatistics:
    if not isinstance(row, Mapping):
        raise _RowProblem(Reason.ERROR, "the statistics row is not an object")
    timestamp = _number(row, "timestamp")
    counts = {name: _integer(row, name) for name in _INTEGER_FIELDS}
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
    ) -> None:
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

    def fetch(self, target_ids: Sequence[str]) -> dict[str, TargetStatistics | StatisticsError]:
        """Return statistics or a per-target error for every id in ``target_ids``.

        Ids that are not valid target ids are answered with ``ERROR`` without asking the
        gateway. Raises :class:`StatServerUnavailable` if neither server answered usably.
        """
        results: dict[str, TargetStatistics | StatisticsError] = {}
        to_query: list[str] = []
        for target_id in dict.fromkeys(target_ids):
            if is_valid_target_id(target_id):
                to_query.append(target_id)
            else:
                results[target_id] = StatisticsError(
                    target_id, Reason.ERROR, "not a valid target id"
                )
        for batch in _batches(to_query, MAX_IDS_PER_REQUEST):
            results.update(self._query_pair(batch))
        return results

    def _query_pair(self, target_ids: list[str]) -> dict[str, TargetStatistics | StatisticsError]:
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

    def _query_one(
        self, role: ServerRole, target_ids: list[str]
    ) -> dict[str, TargetStatistics | StatisticsError]:
        url = self._urls[role] + QUERY_PATH
        request_body = orjson.dumps({"targets": target_ids})
        # requests' read timeout bounds each socket read, not the whole body; a server that
        # trickles bytes would otherwise hold the shard past the refresh period. The deadline is
        # checked per received chunk, so it bounds a slow large body, not a byte-per-second one.
        deadline = time.monotonic() + self._timeout[0] + self._timeout[1]
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
                    response, max_bytes=self._max_body_bytes, deadline=deadline, what="the server"
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
