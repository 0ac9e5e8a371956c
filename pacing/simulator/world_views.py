"""What a simulated world reports: Stat Server rows, corruption of them, and the true metrics.

:class:`WorldViews` adds to the world's state (:mod:`pacing.simulator.world_state`) the answers
read from it: the Stat Server rows of docs/contracts.md §1 (with the per-target corruption tests
and demos switch on), the cumulative counters the evaluation differences, and the true
abandonment rate and occupancy the pacing service is trying to control (``GET /sim/metrics``).
Each answer first steps the world up to "now".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from pacing.simulator.world_state import FloatArray, IntArray, WorldState

#: Per-target corruption of Stat Server rows that tests and demos can switch on.
CORRUPTION_MODES: frozenset[str] = frozenset({"malformed", "stale", "missing"})

#: How old a "stale" row claims to be: far beyond any sensible ``stats_max_age``.
STALE_AGE_SECONDS = 3600.0


class WorldViews(WorldState):
    """The world's answers: Stat Server rows, counters and metrics (thread-safe, like the world)."""

    # ------------------------------------------------------- stat server side

    def set_corruption(self, target_id: str, mode: str | None) -> None:
        """Corrupt (``malformed``, ``stale``, ``missing``) or heal (None) one target's rows."""
        if target_id not in self._index:
            raise KeyError(target_id)
        if mode is not None and mode not in CORRUPTION_MODES:
            raise ValueError(f"Corruption mode must be one of {sorted(CORRUPTION_MODES)}.")
        with self.lock:
            if mode is None:
                self._corruption.pop(target_id, None)
            else:
                self._corruption[target_id] = mode

    def clear_corruption(self) -> None:
        """Heal every corrupted target."""
        with self.lock:
            self._corruption.clear()

    @property
    def corruption(self) -> dict[str, str]:
        """A copy of the per-target corruption modes."""
        with self.lock:
            return dict(self._corruption)

    def statistics(
        self, target_ids: Sequence[str], *, now: float | None = None
    ) -> tuple[dict[str, dict[str, object]], list[str]]:
        """Stat Server rows for ``target_ids`` (``timestamp`` = now) and the unknown ids.

        Unknown ids and targets corrupted as ``missing`` are listed in ``unknown``; ``stale``
        rows are an hour old; ``malformed`` rows carry a string and a negative number.
        """
        with self.lock:
            self.advance(now)
            timestamp = self._clock() if now is None else now
            unknown: list[str] = []
            known_ids: list[str] = []
            rows_list: list[int] = []
            for target_id in target_ids:
                row = self._index.get(target_id)
                if row is None or self._corruption.get(target_id) == "missing":
                    unknown.append(target_id)
                else:
                    known_ids.append(target_id)
                    rows_list.append(row)
            rows = np.array(rows_list, dtype=np.int64)
            busy = self._busy_pro[rows] + self._busy_rea[rows]
            ready = np.maximum(self._staffed[rows] - busy, 0)
            waiting = self._queue_pro[rows] + self._queue_rea[rows]
            handled = self._aht_count[rows]
            aht = np.where(
                handled > 0, self._aht_sum[rows] / np.where(handled > 0, handled, 1.0), 0.0
            )
            answered = self._answered_pro[rows] + self._answered_rea[rows]
            abandoned = self._abandoned_pro[rows] + self._abandoned_rea[rows]
            statistics: dict[str, dict[str, object]] = {}
            for target_id, values in zip(
                known_ids,
                zip(
                    self._logged_in[rows].tolist(),
                    ready.tolist(),
                    busy.tolist(),
                    waiting.tolist(),
                    np.round(aht, 3).tolist(),
                    answered.tolist(),
                    abandoned.tolist(),
                    self._reactive_arrivals[rows].tolist(),
                    strict=True,
                ),
                strict=True,
            ):
                row_dict: dict[str, object] = {
                    "timestamp": timestamp,
                    "agents_logged_in": values[0],
                    "agents_ready": values[1],
                    "agents_busy": values[2],
                    "interactions_waiting": values[3],
                    "aht_seconds": values[4],
                    "answered_total": values[5],
                    "abandoned_total": values[6],
                    "reactive_arrivals_total": values[7],
                }
                mode = self._corruption.get(target_id)
                if mode == "stale":
                    row_dict["timestamp"] = timestamp - STALE_AGE_SECONDS
                elif mode == "malformed":
                    row_dict["agents_ready"] = "several"
                    row_dict["abandoned_total"] = -7
                statistics[target_id] = row_dict
            return statistics, unknown

    # ---------------------------------------------------------------- metrics

    def counters(self, *, now: float | None = None) -> dict[str, npt.NDArray[np.float64]]:
        """Cumulative per-target counters since the world began, in world order (copies).

        What the evaluation differences between two instants: invitations ``offers_sent``,
        proactive ``offers_accepted`` and reactive ``reactive_admitted`` visitors,
        ``abandoned_pro``/``abandoned_rea``, ``reactive_arrivals``, and the slot-seconds
        ``busy_seconds``/``staffed_seconds`` and the time integral ``reactive_state_seconds``.
        """
        with self.lock:
            self.advance(now)
            dt = self._dt
            return {
                "offers_sent": self._offers_sent.astype(np.float64),
                "offers_accepted": self._offers_accepted.astype(np.float64),
                "reactive_admitted": self._reactive_admitted.astype(np.float64),
                "reactive_arrivals": self._reactive_arrivals.astype(np.float64),
                "abandoned_pro": self._abandoned_pro.astype(np.float64),
                "abandoned_rea": self._abandoned_rea.astype(np.float64),
                "busy_seconds": (self._busy_steps_pro + self._busy_steps_rea).astype(np.float64)
                * dt,
                "staffed_seconds": self._staffed_steps.astype(np.float64) * dt,
                "reactive_state_seconds": self._reactive_state_steps * dt,
            }

    def budgets(self) -> IntArray:
        """The budget each target is being sent now (a copy, world order)."""
        with self.lock:
            return self._budget.copy()

    def metrics(self, *, per_target: bool = False, now: float | None = None) -> dict[str, object]:
        """True abandonment and occupancy since the last :meth:`reset_metrics`.

        Abandonment rate = abandoned / accepted interactions (proactive: accepted invitations;
        reactive: admitted requests); occupancy = busy slot-time / (staffed slots x time).
        Overall, per channel and, with ``per_target``, per target. Every count, and
        ``busy_slot_seconds`` (the busy slot-time), is cumulative since the reset, so two
        readings give any window between them (:mod:`pacing.quality`).
        """
        with self.lock:
            self.advance(now)
            window = {
                name: array - self._baseline[name] for name, array in self._metric_arrays().items()
            }
            current = {
                "staffed": self._staffed,
                "busy": self._busy_pro + self._busy_rea,
                "waiting": self._queue_pro + self._queue_rea,
                "pending": self._offers_sent - self._offers_resolved,
                "targets": np.ones(self._count, dtype=np.int64),
            }
            columns = {**window, **current}
            window_steps = self._steps_total - self._baseline_steps
            overall = _summaries(
                columns, np.zeros(self._count, dtype=np.int64), 1, window_steps, self._dt
            )
            by_channel = _summaries(
                columns, self._channel_code, len(self.channels), window_steps, self._dt
            )
            result: dict[str, object] = {
                "generated_at": self.now,
                "window_seconds": round(window_steps * self._dt, 3),
                "skipped_seconds": round(self.skipped_seconds, 3),
                "overall": overall[0],
                "channels": dict(zip(self.channels, by_channel, strict=True)),
            }
            if per_target:
                rows = np.arange(self._count, dtype=np.int64)
                per = _summaries(columns, rows, self._count, window_steps, self._dt)
                for spec, summary in zip(self.specs, per, strict=True):
                    summary["channel"] = spec.channel
                result["targets"] = {
                    spec.target_id: summary for spec, summary in zip(self.specs, per, strict=True)
                }
            return result

    def targets_listing(self) -> list[dict[str, object]]:
        """The targets as ``GET /sim/targets`` lists them."""
        return [
            {
                "id": spec.target_id,
                "name": spec.name or spec.target_id,
                "channel": spec.channel,
                "slots": spec.slots,
                "algorithm": spec.algorithm,
            }
            for spec in self.specs
        ]

    def target_ids(self) -> list[str]:
        """Every target id, in world order."""
        return [spec.target_id for spec in self.specs]


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """numerator / denominator, 0 where the denominator is 0 (no data yet)."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


def _summaries(
    columns: Mapping[str, IntArray],
    labels: IntArray,
    groups: int,
    window_steps: int,
    step_seconds: float,
) -> list[dict[str, object]]:
    """Per-group metric blocks: sums of ``columns`` over ``labels`` and the derived rates."""
    sums: dict[str, FloatArray] = {
        name: np.bincount(labels, weights=values, minlength=groups).astype(np.float64)
        for name, values in columns.items()
    }
    # Staffed slots are constant, so staffed slot-time is staffed x window and occupancy is a
    # ratio of busy slot-steps to staffed slot-steps (the step length cancels).
    staffed_steps = sums["staffed"] * float(window_steps)
    accepted_pro = sums["offers_accepted"]
    accepted_rea = sums["reactive_admitted"]
    abandoned_pro = sums["abandoned_pro"]
    abandoned_rea = sums["abandoned_rea"]
    busy_pro = sums["busy_steps_pro"]
    busy_rea = sums["busy_steps_rea"]
    derived = {
        "abandonment": _ratio(abandoned_pro + abandoned_rea, accepted_pro + accepted_rea),
        "occupancy": _ratio(busy_pro + busy_rea, staffed_steps),
        "abandonment_pro": _ratio(abandoned_pro, accepted_pro),
        "occupancy_pro": _ratio(busy_pro, staffed_steps),
        "abandonment_rea": _ratio(abandoned_rea, accepted_rea),
        "occupancy_rea": _ratio(busy_rea, staffed_steps),
    }
    ints = {name: np.rint(values).astype(np.int64).tolist() for name, values in sums.items()}
    floats = {name: np.round(values, 6).tolist() for name, values in derived.items()}
    # The busy slot-time itself, not only its ratio: occupancy over a window between two
    # readings needs the difference of this counter (the rounded ratios would not give it).
    busy_seconds = np.round((busy_pro + busy_rea) * step_seconds, 3).tolist()
    blocks: list[dict[str, object]] = []
    for g in range(groups):
        blocks.append(
            {
                "targets": ints["targets"][g],
                "slots": ints["staffed"][g],
                "abandonment_rate": floats["abandonment"][g],
                "occupancy": floats["occupancy"][g],
                "accepted": ints["offers_accepted"][g] + ints["reactive_admitted"][g],
                "answered": ints["answered_pro"][g] + ints["answered_rea"][g],
                "abandoned": ints["abandoned_pro"][g] + ints["abandoned_rea"][g],
                "busy": ints["busy"][g],
                "busy_slot_seconds": busy_seconds[g],
                "waiting": ints["waiting"][g],
                "proactive": {
                    "accepted": ints["offers_accepted"][g],
                    "answered": ints["answered_pro"][g],
                    "abandoned": ints["abandoned_pro"][g],
                    "abandonment_rate": floats["abandonment_pro"][g],
                    "occupancy": floats["occupancy_pro"][g],
                },
                "reactive": {
                    "arrivals": ints["reactive_arrivals"][g],
                    "admitted": ints["reactive_admitted"][g],
                    "answered": ints["answered_rea"][g],
                    "abandoned": ints["abandoned_rea"][g],
                    "abandonment_rate": floats["abandonment_rea"][g],
                    "occupancy": floats["occupancy_rea"][g],
                },
                "offers": {
                    "sent": ints["offers_sent"][g],
                    "resolved": ints["offers_resolved"][g],
                    "accepted": ints["offers_accepted"][g],
                    "pending": ints["pending"][g],
                },
            }
        )
    return blocks
