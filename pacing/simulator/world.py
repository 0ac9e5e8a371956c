"""A vectorised contact-centre world: N synthetic pacing targets stepped in time with numpy.

Each target is an agent group with ``slots`` logged-in slots, of which ``not_ready`` are not
available. The world sends the proactive invitations the pacing service allows (spread evenly
over the refresh period), lets visitors accept with probability ``p`` after about ``d`` seconds,
adds reactive (visitor-initiated) arrivals for dual targets, queues everyone, serves them with
lognormal handle times and lets them abandon after exponential patience.

State is held as flat numpy arrays, one entry per target or per slot, and advanced in fixed
steps (``step_seconds``, default 0.1 s) lazily up to "now" whenever someone looks at it. Counts
move with binomial and Poisson draws over whole arrays, so one step of 10,000 targets costs well
under a millisecond per array operation; a per-interaction event queue would not keep up.

The world answers with Stat Server rows (docs/contracts.md §1), engagement feedback rows (§2)
and the true abandonment rate and occupancy the pacing service is trying to control.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacing.domain import is_valid_target_id

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
Int8Array = npt.NDArray[np.int8]

#: Channels of the synthetic mix, with their share of targets.
CHANNEL_SHARES: Mapping[str, float] = {"chat": 0.7, "webcallback": 0.2, "email": 0.1}

#: Per-target corruption of Stat Server rows that tests and demos can switch on.
CORRUPTION_MODES: frozenset[str] = frozenset({"malformed", "stale", "missing"})

#: How old a "stale" row claims to be: far beyond any sensible ``stats_max_age``.
STALE_AGE_SECONDS = 3600.0

#: How far ahead the completion watch list looks (see World._step).
_SOON_HORIZON_SECONDS = 10.0

#: Below this many trials a binomial is drawn as a sum of uniforms (see _binomial).
_SMALL_BINOMIAL = 8

_PROACTIVE = np.int8(0)
_REACTIVE = np.int8(1)


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """The fixed parameters of one synthetic target (an agent group)."""

    target_id: str
    channel: str
    slots: int  # logged-in slots; an agent taking 3 chats is 3 slots
    not_ready: int  # logged-in slots that never take work
    accept_probability: float  # p: an invitation is accepted with this probability
    resolution_delay_seconds: float  # d: mean time from invitation to accept/decline
    handle_mean_seconds: float  # mean of the lognormal handle time, wrap-up included
    handle_cv: float  # coefficient of variation of the handle time
    patience_seconds: float  # mean of the exponential patience of a waiting visitor
    reactive_rate_per_second: float = 0.0  # > 0 makes the target dual
    name: str = ""
    #: exponential handle times instead of lognormal (the evaluation's Erlang-A self-check)
    exponential_handle: bool = False

    def __post_init__(self) -> None:
        if not is_valid_target_id(self.target_id):
            raise ValueError(f"Target id {self.target_id!r} does not match TARGET_ID_PATTERN.")
        if self.slots < 0 or not 0 <= self.not_ready <= self.slots:
            raise ValueError(f"Target {self.target_id}: need 0 <= not_ready <= slots.")
        if not 0.0 <= self.accept_probability <= 1.0:
            raise ValueError(f"Target {self.target_id}: accept_probability must be in [0, 1].")
        positive = (
            self.resolution_delay_seconds,
            self.handle_mean_seconds,
            self.patience_seconds,
        )
        if not all(math.isfinite(value) and value > 0 for value in positive):
            raise ValueError(
                f"Target {self.target_id}: delay, handle time and patience must be positive."
            )
        if not (math.isfinite(self.handle_cv) and self.handle_cv >= 0):
            raise ValueError(f"Target {self.target_id}: handle_cv must be >= 0.")
        if not (
            math.isfinite(self.reactive_rate_per_second) and self.reactive_rate_per_second >= 0
        ):
            raise ValueError(f"Target {self.target_id}: reactive rate must be >= 0.")

    @property
    def dual(self) -> bool:
        """True if reactive traffic shares the group with proactive invitations."""
        return self.reactive_rate_per_second > 0

    @property
    def staffed(self) -> int:
        """Slots that take work (ready or busy)."""
        return self.slots - self.not_ready

    @property
    def algorithm(self) -> str:
        """The pacing algorithm an operator would configure for this group."""
        base = "SUPER_PROGRESSIVE" if self.slots <= 30 else "PREDICTIVE_B"
        return f"{base}_DUAL" if self.dual else base


def generate_targets(count: int, *, seed: int = 7) -> list[TargetSpec]:
    """A realistic mix of ``count`` targets: mostly small groups, some large, three channels.

    About 70 % are small groups (1–10 slots) and 30 % large (30–200 slots); channels are chat
    (~70 %), web callback (~20 %) and email (~10 %); about 10 % of chat and web-callback targets
    are dual (reactive traffic worth roughly a third of their capacity). Ids look like
    ``chat-0001`` and are numbered per channel.
    """
    if count < 0:
        raise ValueError("The number of targets must be >= 0.")
    # A separate stream from the world's dynamics: the same seed gives the same targets
    # whatever the world later does.
    rng = np.random.default_rng([seed, 0x7A46])
    channels = list(CHANNEL_SHARES)
    shares = np.array(list(CHANNEL_SHARES.values()), dtype=np.float64)
    channel_index = rng.choice(len(channels), size=count, p=shares / shares.sum())
    small = rng.random(count) < 0.7
    slots = np.where(small, rng.integers(1, 11, count), rng.integers(30, 201, count))
    not_ready = rng.binomial(slots, 0.08)
    accept = np.clip(rng.beta(5.0, 15.0, count), 0.03, 0.8)
    delay = np.clip(10.0 * rng.lognormal(0.0, 0.3, count), 3.0, 20.0)
    handle = 180.0 * rng.lognormal(0.0, 0.25, count)
    patience = 60.0 * rng.lognormal(0.0, 0.3, count)
    dual = (rng.random(count) < 0.1) & (channel_index != channels.index("email"))
    reactive_share = rng.uniform(0.15, 0.45, count)
    staffed = slots - not_ready
    reactive_rate = np.where(dual, reactive_share * staffed / handle, 0.0)

    numbers = dict.fromkeys(channels, 0)
    specs: list[TargetSpec] = []
    for i in range(count):
        channel = channels[int(channel_index[i])]
        numbers[channel] += 1
        specs.append(
            TargetSpec(
                target_id=f"{channel}-{numbers[channel]:04d}",
                name=f"{channel.capitalize()} group {numbers[channel]}",
                channel=channel,
                slots=int(slots[i]),
                not_ready=int(not_ready[i]),
                accept_probability=float(accept[i]),
                resolution_delay_seconds=float(delay[i]),
                handle_mean_seconds=float(handle[i]),
                handle_cv=1.0,
                patience_seconds=float(patience[i]),
                reactive_rate_per_second=float(reactive_rate[i]),
            )
        )
    return specs


class World:
    """The simulated contact centre; thread-safe (every public method takes ``lock``)."""

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

    @classmethod
    def synthetic(
        cls,
        targets: int,
        *,
        seed: int = 7,
        clock: Callable[[], float] = time.time,
        step_seconds: float = 0.1,
        max_catch_up_seconds: float = 30.0,
    ) -> World:
        """A world of ``targets`` generated targets (see :func:`generate_targets`)."""
        return cls(
            generate_targets(targets, seed=seed),
            seed=seed,
            clock=clock,
            step_seconds=step_seconds,
            max_catch_up_seconds=max_catch_up_seconds,
        )

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
        self._step_index += 1
        self._steps_total += 1
        step = self._step_index
        t = self.now
        rng = self._rng

        # Service completions free their slots. Scanning every slot each step would dominate
        # the step (0.5 ms for 380,000 slots), so only the slots that end within the next
        # horizon are watched, and the full scan runs once per horizon.
        if t > self._soon_until:
            self._soon_until = t + _SOON_HORIZON_SECONDS
            self._soon = np.flatnonzero(self._slot_end <= self._soon_until)
        ending = self._slot_end[self._soon] <= t
        done = self._soon[ending]
        if done.size:
            self._soon = self._soon[~ending]
            self._release(done)

        ring_rows = self._ring.shape[0]
        # Invitations go out evenly over the refresh period that the last publish opened.
        if self._window_open:
            fraction = min(1.0, (t - self._window_start) / self._window_seconds)
            # The k-th of B invitations goes out at (k - 1/2) / B of the period.
            due = np.floor(self._budget * fraction + 0.5).astype(np.int64)
            send = due - self._sent_in_window
            rows = np.flatnonzero(send > 0)
            if rows.size:
                sent = send[rows]
                self._sent_in_window[rows] += sent
                self._offers_sent[rows] += sent
                # Half resolve early, half late; odd counts alternate so each target's split
                # stays exact without a random draw.
                toggle = self._split_toggle[rows]
                early = (sent + toggle) // 2
                self._split_toggle[rows] = toggle ^ (sent & 1)
                self._ring[(step + self._early_steps[rows]) % ring_rows, rows] += early.astype(
                    np.int32
                )
                self._ring[(step + self._late_steps[rows]) % ring_rows, rows] += (
                    sent - early
                ).astype(np.int32)
            if fraction >= 1.0:
                self._window_open = False

        # Invitations whose delay ends now are accepted (join the queue) or declined.
        bucket = self._ring[step % ring_rows]
        rows = np.flatnonzero(bucket > 0)
        if rows.size:
            resolved = bucket[rows].astype(np.int64)
            bucket[rows] = 0
            accepted = _binomial(rng, resolved, self._accept_p[rows])
            self._offers_resolved[rows] += resolved
            self._offers_accepted[rows] += accepted
            self._queue_pro[rows] += accepted

        # Reactive arrivals (Poisson), admitted with the published reactive_state.
        if self._dual_rows.size:
            arrivals = rng.poisson(self._reactive_mean_step)
            hit = np.flatnonzero(arrivals > 0)
            if hit.size:
                rows = self._dual_rows[hit]
                arrived = arrivals[hit].astype(np.int64)
                admitted = _binomial(rng, arrived, self._reactive_state[rows])
                self._reactive_arrivals[rows] += arrived
                self._reactive_admitted[rows] += admitted
                self._queue_rea[rows] += admitted

        # Waiting visitors take free slots first; only those still waiting may abandon.
        waiting = self._queue_pro + self._queue_rea
        rows = np.flatnonzero(waiting > 0)
        if rows.size:
            free = self._staffed[rows] - self._busy_pro[rows] - self._busy_rea[rows]
            take = np.minimum(waiting[rows], free)
            serve = take > 0
            if serve.any():
                self._assign(rows[serve], take[serve], t)
            rows = rows[self._queue_pro[rows] + self._queue_rea[rows] > 0]
        if rows.size:
            waiting_pro = self._queue_pro[rows]
            waiting_rea = self._queue_rea[rows]
            left = _binomial(rng, waiting_pro + waiting_rea, self._abandon_p_step[rows])
            # Who leaves is a uniform draw among the waiting visitors of both classes.
            left_pro = np.minimum(left, waiting_pro)
            mixed = (waiting_pro > 0) & (waiting_rea > 0) & (left > 0)
            if mixed.any():
                left_pro[mixed] = rng.hypergeometric(
                    waiting_pro[mixed], waiting_rea[mixed], left[mixed]
                )
            left_rea = left - left_pro
            self._queue_pro[rows] -= left_pro
            self._queue_rea[rows] -= left_rea
            self._abandoned_pro[rows] += left_pro
            self._abandoned_rea[rows] += left_rea

        self._busy_steps_pro += self._busy_pro
        self._busy_steps_rea += self._busy_rea
        self._staffed_steps += self._staffed
        self._reactive_state_steps += self._reactive_state
        # The handle-time window decays once a second: cheap, and a second is nothing
        # against a 15-minute window.
        if step % self._aht_decay_every == 0:
            self._aht_sum *= self._aht_decay
            self._aht_count *= self._aht_decay

    def _assign(self, rows: IntArray, take: IntArray, t: float) -> None:
        """Move ``take[i]`` waiting visitors of target ``rows[i]`` onto its free slots."""
        # Pop take[i] slots off the top of each target's free-slot stack: the work is
        # proportional to the visitors served, not to the size of the groups.
        ends = np.cumsum(take)
        local = np.arange(int(ends[-1]), dtype=np.int64) - np.repeat(ends - take, take)
        free = self._staffed[rows] - self._busy_pro[rows] - self._busy_rea[rows]
        top = self._slot_offset[rows] + free - take
        chosen = self._free_stack[np.repeat(top, take) + local]

        # FIFO-ish between the classes: which of the waiting visitors get the slots is a
        # uniform draw (hypergeometric), which matches FIFO on average.
        waiting_pro = self._queue_pro[rows]
        waiting_rea = self._queue_rea[rows]
        take_pro = np.minimum(take, waiting_pro)
        mixed = (waiting_pro > 0) & (waiting_rea > 0)
        if mixed.any():
            take_pro[mixed] = self._rng.hypergeometric(
                waiting_pro[mixed], waiting_rea[mixed], take[mixed]
            )
        take_rea = take - take_pro

        chosen_target = np.repeat(rows, take)
        durations = self._rng.lognormal(
            self._handle_mu[chosen_target], self._handle_sigma[chosen_target]
        )
        if self._any_exponential:
            exponential = self._exponential[chosen_target]
            if exponential.any():
                durations[exponential] = self._rng.exponential(
                    self._handle_mean[chosen_target[exponential]]
                )
        slot_ends = t + durations
        self._slot_end[chosen] = slot_ends
        self._slot_duration[chosen] = durations
        self._slot_class[chosen] = np.where(
            local < np.repeat(take_pro, take), _PROACTIVE, _REACTIVE
        )
        # Keep the watch list complete: a slot ending inside the current horizon joins it.
        self._soon = np.concatenate((self._soon, chosen[slot_ends <= self._soon_until]))

        self._queue_pro[rows] -= take_pro
        self._queue_rea[rows] -= take_rea
        self._busy_pro[rows] += take_pro
        self._busy_rea[rows] += take_rea
        self._answered_pro[rows] += take_pro
        self._answered_rea[rows] += take_rea

    def _release(self, done: IntArray) -> None:
        """Free the slots ``done`` (their service ended): push them back on the free stacks."""
        count = self._count
        done_target = self._slot_target[done]
        order = np.argsort(done_target, kind="stable")
        done = done[order]
        done_target = done_target[order]
        rank = np.arange(done.size) - np.searchsorted(done_target, done_target, side="left")
        free = (
            self._staffed[done_target] - self._busy_pro[done_target] - self._busy_rea[done_target]
        )
        # After a logout (update_targets) a group can be busier than it is staffed: a slot
        # that ends while that lasts leaves with its agent instead of rejoining the free stack.
        position = free + rank
        back = position >= 0
        self._free_stack[self._slot_offset[done_target[back]] + position[back]] = done[back]

        reactive = self._slot_class[done] == _REACTIVE
        self._busy_pro -= np.bincount(done_target[~reactive], minlength=count)
        self._busy_rea -= np.bincount(done_target[reactive], minlength=count)
        self._aht_sum += np.bincount(
            done_target, weights=self._slot_duration[done], minlength=count
        )
        self._aht_count += np.bincount(done_target, minlength=count)
        self._slot_end[done] = np.inf

    # -------------------------------------------------------- engagement side

    def apply_publish(
        self,
        target_ids: Sequence[str],
        proactive_budgets: Sequence[int],
        reactive_states: Sequence[float],
        *,
        full: bool,
        refresh_period_seconds: float,
        now: float | None = None,
    ) -> int:
        """Take the decisions of an accepted publish; returns how many known targets it named.

        Every publish opens a new sending window of ``refresh_period_seconds``: each target's
        budget (the new one, or for a delta the unchanged previous one) is sent evenly over it.
        Targets absent from a full snapshot are not paced (budget 0, every reactive request
        admitted). Ids the world does not know are ignored.
        """
        if not (math.isfinite(refresh_period_seconds) and refresh_period_seconds > 0):
            raise ValueError("refresh_period_seconds must be a positive number.")
        if not len(target_ids) == len(proactive_budgets) == len(reactive_states):
            raise ValueError("target_ids, proactive_budgets and reactive_states differ in length.")
        with self.lock:
            self.advance(now)
            if full:
                self._budget[:] = 0
                self._reactive_state[:] = 1.0
            # one dict lookup per id, and the values picked by numpy: at 100,000 targets this
            # is on the publish's critical path
            found = np.fromiter(
                map(self._index.get, target_ids, itertools.repeat(-1)),
                dtype=np.int64,
                count=len(target_ids),
            )
            known = found >= 0
            rows = found[known]
            budgets = np.asarray(proactive_budgets, dtype=np.int64)[known]
            states = np.asarray(reactive_states, dtype=np.float64)[known]
            self._budget[rows] = np.maximum(budgets, 0)
            self._reactive_state[rows] = np.clip(np.nan_to_num(states, nan=1.0), 0.0, 1.0)
            self._sent_in_window[:] = 0
            self._window_start = self.now
            self._window_seconds = refresh_period_seconds
            self._window_open = True
            return int(rows.size)

    def feedback(
        self,
        target_ids: Iterable[str] | None = None,
        *,
        now: float | None = None,
        changed_only: bool = False,
    ) -> dict[str, dict[str, int]]:
        """Cumulative invitation counters per target (default: all); unknown ids are skipped.

        ``changed_only``: just the targets whose counters moved since the last report (what
        the receiver answers a delta with; a full snapshot gets every target, so a service
        that lost its state learns all counters again at its first, full, publish).
        """
        with self.lock:
            self.advance(now)
            rows = self._rows(target_ids)
            accepted = self._offers_accepted[rows]
            if (self._feedback_accept_scale[rows] != 1.0).any():
                accepted = np.floor(accepted * self._feedback_accept_scale[rows]).astype(np.int64)
            counters = np.stack(
                [self._offers_sent[rows], accepted, self._offers_resolved[rows]], axis=1
            )
            if changed_only:
                moved = (counters != self._reported_feedback[rows]).any(axis=1)
                rows, counters = rows[moved], counters[moved]
            self._reported_feedback[rows] = counters
            ids = self._ids[rows].tolist()
            return {
                target_id: {
                    "offers_sent_total": s,
                    "offers_accepted_total": a,
                    "offers_resolved_total": r,
                    "offers_pending": s - r,
                }
                for target_id, (s, a, r) in zip(ids, counters.tolist(), strict=True)
            }

    def _rows(self, target_ids: Iterable[str] | None) -> IntArray:
        if target_ids is None:
            return np.arange(self._count, dtype=np.int64)
        rows = [self._index[i] for i in target_ids if i in self._index]
        return np.array(rows, dtype=np.int64)

    # ----------------------------------------------------------- changes

    def update_targets(
        self,
        target_ids: Sequence[str],
        *,
        staffed: int | None = None,
        handle_mean_seconds: float | None = None,
        accept_probability: float | None = None,
        feedback_accept_scale: float | None = None,
    ) -> None:
        """Change targets from now on (the evaluation's step changes and feed faults).

        ``staffed``: slots that take work, at most the logged-in slots; busy slots above it
        finish their interaction first. ``feedback_accept_scale``: the engagement feedback
        reports this share of the acceptances (0.8: a platform that under-reports by 20 %).
        """
        with self.lock:
            rows = self._rows(target_ids)
            if staffed is not None:
                for row in rows.tolist():
                    self._restaff(row, min(max(int(staffed), 0), int(self._logged_in[row])))
            if handle_mean_seconds is not None:
                if not (math.isfinite(handle_mean_seconds) and handle_mean_seconds > 0):
                    raise ValueError("handle_mean_seconds must be positive.")
                self._handle_mean[rows] = handle_mean_seconds
                self._handle_mu[rows] = (
                    np.log(handle_mean_seconds) - self._handle_sigma[rows] ** 2 / 2
                )
            if accept_probability is not None:
                if not 0.0 <= accept_probability <= 1.0:
                    raise ValueError("accept_probability must be in [0, 1].")
                self._accept_p[rows] = accept_probability
            if feedback_accept_scale is not None:
                if not 0.0 <= feedback_accept_scale <= 1.0:
                    raise ValueError("feedback_accept_scale must be in [0, 1].")
                self._feedback_accept_scale[rows] = feedback_accept_scale

    def _restaff(self, row: int, staffed: int) -> None:
        # The free stack of the row is rebuilt from its slots that are not busy: slots are
        # interchangeable, so which of them are staffed does not matter.
        offset = int(self._slot_offset[row])
        slots = np.arange(offset, offset + int(self._logged_in[row]), dtype=np.int64)
        idle = slots[np.isinf(self._slot_end[slots])]
        free = max(staffed - int(self._busy_pro[row] + self._busy_rea[row]), 0)
        self._free_stack[offset : offset + free] = idle[:free]
        self._staffed[row] = staffed

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

    def reset_metrics(self) -> None:
        """Start a new measurement window for :meth:`metrics` (e.g. after a warm-up).

        The cumulative counters the Stat Server and the feedback report are not touched.
        """
        with self.lock:
            self._baseline = {name: array.copy() for name, array in self._metric_arrays().items()}
            self._baseline_steps = self._steps_total

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


def _binomial(rng: np.random.Generator, trials: IntArray, probability: FloatArray) -> IntArray:
    """Binomial(trials[i], probability[i]) per element.

    numpy's binomial costs about 40 ns per element even for one trial; most rows here have a
    handful of trials, and comparing that many uniforms is several times cheaper.
    """
    result = np.zeros(trials.shape, dtype=np.int64)
    small = np.flatnonzero((trials > 0) & (trials <= _SMALL_BINOMIAL))
    if small.size:
        counts = trials[small]
        hits = rng.random(int(counts.sum())) < np.repeat(probability[small], counts)
        starts = np.cumsum(counts) - counts
        result[small] = np.add.reduceat(hits, starts, dtype=np.int64)
    large = np.flatnonzero(trials > _SMALL_BINOMIAL)
    if large.size:
        result[large] = rng.binomial(trials[large], probability[large])
    return result


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
