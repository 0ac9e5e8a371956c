"""What one evaluation scenario is: a contact-centre world, a pacing rule, a goal and a horizon."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum

from pacing.domain import Algorithm, Objective


class Pacer(StrEnum):
    """Who decides how many invitations to send (or, for the self-check, nobody)."""

    PACED = "paced"  # pacing.algorithms.pace(), exactly as the workers call it
    PROGRESSIVE = "progressive"  # the naive baseline of algorithm.md §3
    POISSON = "poisson"  # unpaced Poisson arrivals at λ*: the simulator's self-check (§8)


class Stress(StrEnum):
    """Changes of the world in the middle of a run, or faults of its feeds (algorithm.md §8)."""

    NONE = "none"
    LOGOUT = "logout"  # half the agents log out
    SLOWER = "slower"  # handle time doubles
    ACCEPT_HALVES = "accept_halves"  # p halves
    STALE_FEED = "stale_feed"  # one cycle in ten has stale statistics
    NONFINITE_FEED = "nonfinite_feed"  # one cycle in ten has NaN / inf in its statistics
    UNDERREPORTED = "underreported"  # feedback under-reports acceptances by 20 % (p too low)


#: Stresses that change the world at one instant (the 15-minute check of §8 applies after it).
STEP_CHANGES = frozenset({Stress.LOGOUT, Stress.SLOWER, Stress.ACCEPT_HALVES})


@dataclass(frozen=True, slots=True)
class Scenario:
    """One cell of the grid. Times in seconds unless named otherwise."""

    name: str
    slots: int
    pacer: Pacer = Pacer.PACED
    algorithm: Algorithm = Algorithm.AUTO
    objective: Objective = Objective.ABANDONMENT_RATE
    goal_percent: int = 3
    accept_probability: float = 0.25
    resolve_delay: float = 10.0
    handle_time: float = 180.0
    handle_cv: float = 1.0  # lognormal; the self-check uses exponential (Erlang-A's assumption)
    patience: float = 60.0
    refresh_period: float = 2.0
    reactive_share: float = 0.0  # offered reactive load as a share of λ* (dual targets)
    proactive_ratio: float = 1.0
    max_budget: int = 50
    hours: float = 8.0  # simulated, warm-up included
    warmup_hours: float = 1.0
    seeds: int = 8
    stress: Stress = Stress.NONE
    stress_at_hours: float = 0.0  # when a step change happens (0: half-way through measuring)
    #: What the evaluation expects: True = must meet the criteria; False = shown failing (the
    #: progressive baseline for small groups); None = shown for comparison, not judged.
    expected_to_pass: bool | None = True

    def __post_init__(self) -> None:
        if self.slots < 1 or self.seeds < 1 or not 0 < self.warmup_hours < self.hours:
            raise ValueError(
                f"Scenario {self.name}: needs slots >= 1, seeds >= 1 and 0 < warmup_hours < hours."
            )

    @property
    def goal(self) -> float:
        """The goal as a fraction."""
        return self.goal_percent / 100.0

    @property
    def step_at_seconds(self) -> float:
        """When a step change happens, in simulated seconds (inf without one)."""
        if self.stress not in STEP_CHANGES:
            return math.inf
        hours = self.stress_at_hours or (self.warmup_hours + self.hours) / 2.0
        return hours * 3600.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready fields (enums as their values)."""
        return {
            key: str(value) if isinstance(value, StrEnum) else value
            for key, value in asdict(self).items()
        }
