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

This module is :class:`World` itself: one step of the dynamics, the publishes it takes and the
changes the evaluation makes. Beneath it are
:mod:`pacing.simulator.targets` (the specs a world is built from),
:mod:`pacing.simulator.world_state` (the arrays and the clock) and
:mod:`pacing.simulator.world_views` (the Stat Server rows, counters and metrics it reports).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from pacing.simulator.targets import generate_targets
from pacing.simulator.world_state import FloatArray, IntArray
from pacing.simulator.world_views import WorldViews

#: How far ahead the completion watch list looks (see World._step).
_SOON_HORIZON_SECONDS = 10.0

#: Below this many trials a binomial is drawn as a sum of uniforms (see _binomial).
_SMALL_BINOMIAL = 8

_PROACTIVE = np.int8(0)
_REACTIVE = np.int8(1)


class World(WorldViews):
    """The simulated contact centre; thread-safe (every public method takes ``lock``)."""

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

    # ------------------------------------------------------------------ step

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
