"""The state of a simulated world: its numpy arrays, its clock and the stepping up to "now".

:class:`WorldState` builds the flat per-target and per-slot arrays from the target specs
(:mod:`pacing.simulator.targets`) and steps them lazily up to the clock
(:meth:`WorldState.advance`). What one step does is :meth:`pacing.simulator.world.World._step`;
what the world reports is :mod:`pacing.simulator.world_views`. Every array lives here, so each
of those modules reads and moves the same state.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from pacing.simulator.targets import TargetSpec

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
Int8Array = npt.NDArray[np.int8]


class WorldState:
    """The arrays and clock of a world; :class:`pacing.simulator.world.World` steps them."""

    def __init__(
        self,
        specs: Sequence[TargetSpec],
        *,
        seed: int = 7,
        clock: Callable[[], float] = time.time,
        step_seconds: float = 0.1,
        max_catch_up_seconds: float = 30.0,
        aht_window_seconds: float = 900.0,
    ) -> None:
        if step_seconds <= 0 or max_catch_up_seconds < step_seconds:
            raise ValueError("Need step_seconds > 0 and max_catch_up_seconds >= step_seconds.")
        ids = [spec.target_id for spec in specs]
        if len(set(ids)) != len(ids):
            raise ValueError("Target ids must be unique.")
        self.lock = threading.RLock()
        self.specs: tuple[TargetSpec, ...] = tuple(specs)
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._dt = step_seconds
        self._max_catch_up_steps = int(max_catch_up_seconds / step_seconds)
        self._aht_decay_every = max(1, round(1.0 / step_seconds))
        self._aht_decay = math.exp(-self._aht_decay_every * step_seconds / aht_window_seconds)

        count = len(self.specs)
        self._count = count
        self._index: dict[str, int] = {target_id: i for i, target_id in enumerate(ids)}
        # the ids by row, picked for many rows at once by numpy (feedback lists most targets)
        self._ids: npt.NDArray[np.object_] = np.array(ids, dtype=object)
        self.channels: tuple[str, ...] = tuple(sorted({spec.channel for spec in self.specs}))
        channel_code = {channel: code for code, channel in enumerate(self.channels)}
        self._channel_code: IntArray = np.array(
            [channel_code[spec.channel] for spec in self.specs], dtype=np.int64
        )

        def column(values: Iterable[float]) -> FloatArray:
            return np.fromiter(values, dtype=np.float64, count=count)

        def int_column(values: Iterable[int]) -> IntArray:
            return np.fromiter(values, dtype=np.int64, count=count)

        self._logged_in = int_column(spec.slots for spec in self.specs)
        self._staffed = int_column(spec.staffed for spec in self.specs)
        self._accept_p = column(spec.accept_probability for spec in self.specs)
        self._handle_mean = column(spec.handle_mean_seconds for spec in self.specs)
        handle_cv = column(spec.handle_cv for spec in self.specs)
        self._handle_sigma: FloatArray = np.sqrt(np.log1p(handle_cv**2))
        self._handle_mu: FloatArray = np.log(self._handle_mean) - self._handle_sigma**2 / 2
        self._exponential: npt.NDArray[np.bool_] = np.fromiter(
            (spec.exponential_handle for spec in self.specs), dtype=np.bool_, count=count
        )
        self._any_exponential = bool(self._exponential.any())
        patience = column(spec.patience_seconds for spec in self.specs)
        self._abandon_p_step: FloatArray = -np.expm1(-step_seconds / patience)
        reactive_rate = column(spec.reactive_rate_per_second for spec in self.specs)
        self._dual_rows: IntArray = np.flatnonzero(reactive_rate > 0).astype(np.int64)
        self._reactive_mean_step: FloatArray = reactive_rate[self._dual_rows] * step_seconds

        # An invitation resolves after 0.6 d or 1.4 d (half each): mean d, some spread, and
        # a fixed ring of per-step buckets instead of a timer per invitation.
        delay = column(spec.resolution_delay_seconds for spec in self.specs)
        self._early_steps: IntArray = np.maximum(1, np.rint(0.6 * delay / step_seconds)).astype(
            np.int64
        )
        self._late_steps: IntArray = np.maximum(1, np.rint(1.4 * delay / step_seconds)).astype(
            np.int64
        )
        ring_rows = int(self._late_steps.max(initial=1)) + 1
        # int32 halves the largest array of the world (rows x targets).
        self._ring: Int32Array = np.zeros((ring_rows, count), dtype=np.int32)

        # Slots of target i are [offset[i], offset[i] + slots[i]); only the first `staffed`
        # of them ever take work (the rest are the not-ready agents).
        self._slot_offset: IntArray = np.cumsum(self._logged_in) - self._logged_in
        total_slots = int(self._logged_in.sum())
        self._slot_target: IntArray = np.repeat(np.arange(count, dtype=np.int64), self._logged_in)
        self._slot_end: FloatArray = np.full(total_slots, np.inf)  # inf = free
        self._slot_duration: FloatArray = np.zeros(total_slots)
        self._slot_class: Int8Array = np.zeros(total_slots, dtype=np.int8)
        # Target i's free staffed slots are _free_stack[offset[i] : offset[i] + free[i]].
        self._free_stack: IntArray = np.arange(total_slots, dtype=np.int64)
        self._soon: IntArray = np.zeros(0, dtype=np.int64)
        self._soon_until = -math.inf

        def zeros() -> IntArray:
            return np.zeros(count, dtype=np.int64)

        self._busy_pro = zeros()
        self._busy_rea = zeros()
        self._queue_pro = zeros()
        self._queue_rea = zeros()
        self._budget = zeros()
        self._sent_in_window = zeros()
        self._split_toggle = zeros()
        self._reactive_state: FloatArray = np.ones(count)
        self._window_start = 0.0
        self._window_seconds = 1.0
        self._window_open = False

        # Cumulative counters (never decrease: the Stat Server and feedback contracts).
        self._offers_sent = zeros()
        self._offers_resolved = zeros()
        # (sent, accepted, resolved) as last reported by feedback(): what changed_only compares
        self._reported_feedback = np.full((self._count, 3), -1, dtype=np.int64)
        self._offers_accepted = zeros()
        self._answered_pro = zeros()
        self._answered_rea = zeros()
        self._abandoned_pro = zeros()
        self._abandoned_rea = zeros()
        self._reactive_arrivals = zeros()
        self._reactive_admitted = zeros()
        self._busy_steps_pro = zeros()
        self._busy_steps_rea = zeros()
        self._staffed_steps = zeros()
        self._reactive_state_steps: FloatArray = np.zeros(count)
        # the feedback reports this share of the acceptances (a feed fault; 1 = the truth)
        self._feedback_accept_scale: FloatArray = np.ones(count)
        self._steps_total = 0
        # Exponentially weighted handle-time sums for aht_seconds over a recent window.
        self._aht_sum: FloatArray = np.zeros(count)
        self._aht_count: FloatArray = np.zeros(count)

        self._origin = float(clock())
        self._step_index = 0
        self.skipped_seconds = 0.0
        self._corruption: dict[str, str] = {}
        self._baseline: dict[str, IntArray] = {}
        self._baseline_steps = 0
        self.reset_metrics()

    # ------------------------------------------------------------------ time

    @property
    def step_seconds(self) -> float:
        """Simulated seconds per step."""
        return self._dt

    @property
    def now(self) -> float:
        """The time the world's state corresponds to (a multiple of the step after the origin)."""
        return self._origin + self._step_index * self._dt

    @property
    def simulated_seconds(self) -> float:
        """Simulated time actually stepped since the world was created."""
        return self._steps_total * self._dt

    def advance(self, now: float | None = None) -> int:
        """Step the world up to ``now`` (default: the clock); returns the number of steps taken.

        A long pause (a stopped debugger, a suspended laptop) is not replayed: at most
        ``max_catch_up_seconds`` are stepped and the rest is skipped, so a request never waits
        for minutes. Skipped time is counted in ``skipped_seconds`` and not in the metrics.
        """
        with self.lock:
            target_time = self._clock() if now is None else now
            # The epsilon keeps a clock that lands exactly on a step boundary from losing it
            # to floating-point rounding.
            steps = math.floor((target_time - self.now) / self._dt + 1e-9)
            if steps <= 0:
                return 0
            if steps > self._max_catch_up_steps:
                skipped = steps - self._max_catch_up_steps
                self._origin += skipped * self._dt
                self.skipped_seconds += skipped * self._dt
                steps = self._max_catch_up_steps
            for _ in range(steps):
                self._step()
            return steps

    def _step(self) -> None:
        """One step of ``step_seconds``; :meth:`pacing.simulator.world.World._step` is the step."""
        raise NotImplementedError

    def _rows(self, target_ids: Iterable[str] | None) -> IntArray:
        if target_ids is None:
            return np.arange(self._count, dtype=np.int64)
        rows = [self._index[i] for i in target_ids if i in self._index]
        return np.array(rows, dtype=np.int64)

    # ------------------------------------------------------- metrics window

    def reset_metrics(self) -> None:
        """Start a new measurement window for :meth:`metrics` (e.g. after a warm-up).

        The cumulative counters the Stat Server and the feedback report are not touched.
        """
        with self.lock:
            self._baseline = {name: array.copy() for name, array in self._metric_arrays().items()}
            self._baseline_steps = self._steps_total

    def _metric_arrays(self) -> dict[str, IntArray]:
        return {
            "offers_sent": self._offers_sent,
            "offers_resolved": self._offers_resolved,
            "offers_accepted": self._offers_accepted,
            "answered_pro": self._answered_pro,
            "answered_rea": self._answered_rea,
            "abandoned_pro": self._abandoned_pro,
            "abandoned_rea": self._abandoned_rea,
            "reactive_arrivals": self._reactive_arrivals,
            "reactive_admitted": self._reactive_admitted,
            "busy_steps_pro": self._busy_steps_pro,
            "busy_steps_rea": self._busy_steps_rea,
        }
