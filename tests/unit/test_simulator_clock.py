"""The simulator's clock thread, in real time: it takes each step of the world itself, just after
the step falls due, so that no Stat Server request has to take it (and wait for it)."""

from __future__ import annotations

import threading
import time

from pacing.simulator import _keep_time
from pacing.simulator.world import World

STEPS_WATCHED = 10
#: How soon after a step falls due the clock thread must have taken it.
PROMPTLY_SECONDS = 0.03


def test_the_clock_takes_each_step_just_after_it_falls_due_whenever_it_started() -> None:
    # given: a world, and its clock thread started 60 ms into a 100 ms step, as if the previous
    # wake-ups had drifted against the step boundaries
    world = World.synthetic(200, clock=time.time)
    stopping = threading.Event()
    time.sleep(max(0.0, world.now + 0.06 - time.time()))
    clock = threading.Thread(target=_keep_time, args=(world, time.time, stopping), daemon=True)
    clock.start()
    try:
        # when: the world is looked at (without being advanced) shortly after each boundary
        late = []
        for _ in range(STEPS_WATCHED):
            due = world.now + world.step_seconds
            time.sleep(max(0.0, due + PROMPTLY_SECONDS - time.time()))
            if world.now < due - 1e-6:
                late.append(round(time.time() - due, 3))

        # then: every step was already taken, by the clock thread
        assert late == [], f"steps not yet taken {PROMPTLY_SECONDS * 1000:g} ms after they fell due"
    finally:
        stopping.set()
        clock.join(timeout=1)
    assert not clock.is_alive()
