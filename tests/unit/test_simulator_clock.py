"""The simulator's clock thread: it takes each step of the world itself, just after the step
falls due, so that no Stat Server request has to take it (and wait for it).

The loop runs on a clock the test moves: each of its waits moves the clock by exactly the time it
asked to sleep, so the test sees when the thread would wake, whatever the machine's load (Python's
``Event.wait`` keeps the real sleep; how promptly a loaded machine then schedules the thread is
not the loop's to decide).
"""

from __future__ import annotations

import pytest

from pacing.simulator import CLOCK_LAG_SECONDS, _keep_time
from pacing.simulator.world import World

STEPS_WATCHED = 10


class MovedClock:
    """Unix time that moves only when the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SleepsOnTheClock:
    """The clock loop's stop event: every wait moves the clock by its timeout and notes when
    the loop woke and where the world stood just before; stops after ``wakes`` waits."""

    def __init__(self, clock: MovedClock, world: World, wakes: int) -> None:
        self.clock, self.world, self.wakes = clock, world, wakes
        self.woke_at: list[float] = []
        self.world_before: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.world_before.append(self.world.now)
        self.clock.now += timeout
        self.woke_at.append(self.clock.now)
        return len(self.woke_at) > self.wakes


def test_the_clock_takes_each_step_just_after_it_falls_due_whenever_it_started() -> None:
    # given: a world whose clock thread starts 60 ms into a 100 ms step, as if the previous
    # wake-ups had drifted against the step boundaries
    clock = MovedClock(1_795_000_000.0)
    world = World.synthetic(200, clock=clock)
    step = world.step_seconds
    clock.now = world.now + 0.6 * step
    stopping = SleepsOnTheClock(clock, world, STEPS_WATCHED)

    # when
    _keep_time(world, clock, stopping)  # type: ignore[arg-type]

    # then: every wake-up came just after a step fell due (by the lag, no later) …
    origin = stopping.world_before[0]
    due = [origin + n * step for n in range(1, STEPS_WATCHED + 1)]
    assert stopping.woke_at[:STEPS_WATCHED] == pytest.approx([t + CLOCK_LAG_SECONDS for t in due])
    # … found that step not yet taken, and took it: every step was the clock thread's
    assert stopping.world_before[1:] == pytest.approx(due)
    assert world.now == pytest.approx(due[-1])


def test_a_clock_that_jumped_far_ahead_is_caught_up_at_the_next_wake() -> None:
    # given: the machine was suspended for ten seconds before the first wake-up
    clock = MovedClock(1_795_000_000.0)
    world = World.synthetic(200, clock=clock)
    clock.now += 10.0
    resumed_at = clock.now
    stopping = SleepsOnTheClock(clock, world, 1)

    # when
    _keep_time(world, clock, stopping)  # type: ignore[arg-type]

    # then: the first wait slept only the lag (the step was long due), and the world caught up
    assert stopping.woke_at[0] == pytest.approx(resumed_at + CLOCK_LAG_SECONDS)
    assert 0 <= clock.now - world.now < 2 * world.step_seconds
