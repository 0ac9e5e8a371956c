"""The scenario grids of algorithm.md §8: ``quick`` (minutes on 2 cores) and ``full`` (hours).

Both hold the world of §4's figures fixed unless a scenario varies it: p = 0.25, d = 10 s,
h = 180 s (lognormal, CV 1), patience 60 s, Δ = 2 s. The world is vectorised over targets and
every row of a batch is paced by the same cycle, while each simulated second costs its steps
and cycles: so the grids buy precision with replicas (seeds) rather than with hours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pacing.domain import Algorithm, Objective
from pacing.evaluation._batch import self_check_rate
from pacing.evaluation._scenario import Pacer, Scenario, Stress

QUICK_SLOTS = (1, 2, 5, 10, 30, 100)
FULL_SLOTS = (1, 2, 5, 10, 30, 100, 300)
#: Below this group size the documented split uses SUPER_PROGRESSIVE (algorithm.md §5).
LARGE_GROUP = 30
#: The self-check simulates about this many arrivals in all, spread over as many replicas of
#: the group as its load needs within SELF_CHECK_HOURS (no pacing: the world steps alone).
SELF_CHECK_ARRIVALS = 60000.0
SELF_CHECK_HOURS = 5.0

#: (label, objective, goal %) of the goals every grid evaluates.
GOALS: tuple[tuple[str, Objective, int], ...] = (
    ("abandon3", Objective.ABANDONMENT_RATE, 3),
    ("abandon5", Objective.ABANDONMENT_RATE, 5),
    ("busy80", Objective.BUSY_FACTOR, 80),
)


def dual_algorithm(slots: int) -> Algorithm:
    """The dual variant AUTO's split would choose for ``slots``."""
    if slots < LARGE_GROUP:
        return Algorithm.SUPER_PROGRESSIVE_DUAL
    return Algorithm.PREDICTIVE_B_DUAL


def _self_check(slots: int) -> Scenario:
    # λ*/μ at 3 % is about 0.04 for one slot and 97 for 100 slots: a one-slot group sees a
    # visitor an hour, so it gets thousands of replicas and a hundred-slot group a few.
    probe = Scenario(name="probe", slots=slots, pacer=Pacer.POISSON)
    warmup = 1.0
    per_replica = self_check_rate(probe) * 3600.0 * (SELF_CHECK_HOURS - warmup)
    return Scenario(
        name=f"selfcheck-{slots}",
        slots=slots,
        pacer=Pacer.POISSON,
        hours=SELF_CHECK_HOURS,
        warmup_hours=warmup,
        # at least 48: a large group's abandonments come in bursts, so its replicas vary (16
        # replicas of 30 slots missed Erlang-A by 0.39 points in one run, 0.17 in another)
        seeds=max(48, math.ceil(SELF_CHECK_ARRIVALS / per_replica)),
    )


def _progressive(slots: int, *, hours: float, warmup_hours: float, seeds: int) -> Scenario:
    return Scenario(
        name=f"progressive-abandon3-{slots}",
        slots=slots,
        pacer=Pacer.PROGRESSIVE,
        hours=hours,
        warmup_hours=warmup_hours,
        seeds=seeds,
        # Shown failing below 10 slots (§3); above, a comparison, not judged.
        expected_to_pass=False if slots < 10 else None,
    )


def quick_grid(*, seeds: int = 0) -> list[Scenario]:
    """The grid behind the acceptance criteria: minutes on 2 cores.

    ``seeds`` overrides the per-scenario replica counts (0 keeps them).
    """
    small_seeds, large_seeds = (seeds, seeds) if seeds else (32, 16)
    hours, warmup = 4.0, 1.0
    scenarios: list[Scenario] = []
    for label, objective, goal in GOALS:
        for slots in QUICK_SLOTS:
            scenarios.append(
                Scenario(
                    name=f"auto-{label}-{slots}",
                    slots=slots,
                    objective=objective,
                    goal_percent=goal,
                    hours=hours,
                    warmup_hours=warmup,
                    seeds=small_seeds if slots < LARGE_GROUP else large_seeds,
                )
            )
    for slots in QUICK_SLOTS:
        scenarios.append(_progressive(slots, hours=hours, warmup_hours=warmup, seeds=large_seeds))
    for slots in (10, 30, 100):
        for share in (0.3, 0.6):
            scenarios.append(
                Scenario(
                    name=f"dual-abandon3-{slots}-reactive{round(share * 100)}",
                    slots=slots,
                    algorithm=dual_algorithm(slots),
                    reactive_share=share,
                    proactive_ratio=0.7,
                    hours=hours,
                    warmup_hours=warmup,
                    seeds=large_seeds,
                )
            )
    scenarios.extend(_self_check(slots) for slots in QUICK_SLOTS)
    return scenarios


def full_grid(*, seeds: int = 0) -> list[Scenario]:
    """Every axis of §8 around the base world, one at a time, plus the stress scenarios.

    Small groups get 100+ simulated hours. Expect hours of CPU time.
    """
    count = seeds or 8
    scenarios: list[Scenario] = []

    def hours_for(slots: int) -> tuple[float, float]:
        return 24.0, 2.0

    for label, objective, goal in GOALS:
        for slots in FULL_SLOTS:
            total, warmup = hours_for(slots)
            scenarios.append(
                Scenario(
                    name=f"auto-{label}-{slots}",
                    slots=slots,
                    objective=objective,
                    goal_percent=goal,
                    hours=total,
                    warmup_hours=warmup,
                    # small groups need many visitors: 32 replicas × 22 hours
                    seeds=count * 4 if slots < 10 else count,
                )
            )
    for slots in FULL_SLOTS:
        total, warmup = hours_for(slots)
        scenarios.append(_progressive(slots, hours=total, warmup_hours=warmup, seeds=count))
        scenarios.append(_self_check(slots))
    scenarios.extend(_axes(count))
    scenarios.extend(_stress(count))
    return scenarios


def _axes(count: int) -> Iterable[Scenario]:
    variations: list[tuple[str, dict[str, float]]] = [
        *((f"p{value}", {"accept_probability": value}) for value in (0.05, 0.5)),
        *((f"d{value:g}", {"resolve_delay": value}) for value in (5.0, 30.0)),
        *((f"cv{value:g}", {"handle_cv": value}) for value in (0.5, 2.0)),
        *((f"period{value:g}", {"refresh_period": value}) for value in (1.0, 5.0, 10.0)),
    ]
    for label, change in variations:
        for slots in (2, 10, 30, 100):
            yield Scenario(
                name=f"axis-{label}-{slots}",
                slots=slots,
                hours=24.0,
                warmup_hours=2.0,
                seeds=count * 4 if slots < 10 else count,
                **change,  # type: ignore[arg-type]
            )
    for share in (0.1, 0.3, 0.5):
        for slots in (5, 10, 30, 100):
            yield Scenario(
                name=f"dual-abandon3-{slots}-reactive{round(share * 100)}",
                slots=slots,
                algorithm=dual_algorithm(slots),
                reactive_share=share,
                proactive_ratio=0.7,
                hours=24.0,
                warmup_hours=2.0,
                seeds=count * 4 if slots < 10 else count,
            )


def _stress(count: int) -> Iterable[Scenario]:
    for stress in Stress:
        if stress is Stress.NONE:
            continue
        for slots in (5, 30, 100):
            yield Scenario(
                name=f"stress-{stress.value}-{slots}",
                slots=slots,
                stress=stress,
                hours=12.0,
                warmup_hours=2.0,
                seeds=count,
            )


def tiny_grid() -> list[Scenario]:
    """A seconds-long grid for tests and smoke runs (not for conclusions: Δ = 5 s, 30 min)."""
    short = {"hours": 0.5, "warmup_hours": 0.1, "seeds": 2, "refresh_period": 5.0}
    return [
        Scenario(name="auto-abandon3-2", slots=2, **short),  # type: ignore[arg-type]
        Scenario(name="auto-abandon3-30", slots=30, **short),  # type: ignore[arg-type]
        Scenario(
            name="progressive-abandon3-2",
            slots=2,
            pacer=Pacer.PROGRESSIVE,
            expected_to_pass=False,
            **short,  # type: ignore[arg-type]
        ),
        Scenario(
            name="dual-abandon3-10-reactive30",
            slots=10,
            algorithm=Algorithm.SUPER_PROGRESSIVE_DUAL,
            reactive_share=0.3,
            proactive_ratio=0.7,
            **short,  # type: ignore[arg-type]
        ),
        Scenario(
            name="selfcheck-10", slots=10, pacer=Pacer.POISSON, hours=2.0, warmup_hours=0.2, seeds=8
        ),
    ]


GRIDS = {"quick": quick_grid, "full": full_grid}
