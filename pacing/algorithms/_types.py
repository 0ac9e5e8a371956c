"""The value types of the pacing interface: inputs, targets, parameters and result (arrays)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from pacing.domain import Algorithm, Objective, Reason, TargetConfig
from pacing.errors import ConfigurationError

#: ``PacingTargets.algorithm`` holds indices into this tuple.
ALGORITHMS: tuple[Algorithm, ...] = tuple(Algorithm)
#: ``PacingTargets.objective`` holds indices into this tuple.
OBJECTIVES: tuple[Objective, ...] = tuple(Objective)


@dataclass(frozen=True, slots=True)
class PacingInputs:
    """What the Stat Server and the engagement feedback say about n targets this cycle.

    Every array has length n, float64, NaN where unknown. ``input_reason`` is ``Reason.OK`` where
    the statistics were valid, else STALE / ERROR / UNKNOWN_TARGET (the other fields may then be
    NaN). Feedback counters are cumulative and NaN before the first feedback.
    """

    agents_ready: NDArray[np.float64]
    agents_busy: NDArray[np.float64]
    interactions_waiting: NDArray[np.float64]
    aht_seconds: NDArray[np.float64]
    answered_total: NDArray[np.float64]
    abandoned_total: NDArray[np.float64]
    reactive_arrivals_total: NDArray[np.float64]
    offers_sent_total: NDArray[np.float64]
    offers_accepted_total: NDArray[np.float64]
    offers_resolved_total: NDArray[np.float64]
    offers_pending: NDArray[np.float64]
    #: invitations allowed by the publish whose feedback this is, which the receiver sends
    #: after it counted (pacing.cluster.state.LoadedState): pending, for the rules, on top of
    #: offers_pending
    offers_in_flight: NDArray[np.float64]
    input_reason: NDArray[np.int8]

    @classmethod
    def empty(cls, n: int) -> PacingInputs:
        """n targets with every statistic unknown (NaN) and ``input_reason`` OK."""
        names = [field.name for field in fields(cls) if field.name != "input_reason"]
        columns = {name: np.full(n, math.nan) for name in names}
        return cls(**columns, input_reason=np.full(n, Reason.OK, dtype=np.int8))

    def __len__(self) -> int:
        return len(self.input_reason)


@dataclass(frozen=True, slots=True)
class PacingTargets:
    """Per-target configuration as arrays of length n.

    ``goal`` is a fraction: 0.03 for a 3 % abandonment goal, 0.80 for an 80 % busy factor.
    """

    algorithm: NDArray[np.int8]  # index into ALGORITHMS
    objective: NDArray[np.int8]  # index into OBJECTIVES
    goal: NDArray[np.float64]
    proactive_ratio: NDArray[np.float64]
    max_budget: NDArray[np.int64]

    @classmethod
    def from_configs(cls, configs: Sequence[TargetConfig]) -> PacingTargets:
        """Arrays from configured targets (``goal_percent`` becomes a fraction)."""
        algorithm_index = {algorithm: i for i, algorithm in enumerate(ALGORITHMS)}
        objective_index = {objective: i for i, objective in enumerate(OBJECTIVES)}
        return cls(
            algorithm=np.array([algorithm_index[c.algorithm] for c in configs], dtype=np.int8),
            objective=np.array([objective_index[c.objective] for c in configs], dtype=np.int8),
            goal=np.array([c.goal_percent / 100.0 for c in configs], dtype=np.float64),
            proactive_ratio=np.array([c.proactive_ratio for c in configs], dtype=np.float64),
            max_budget=np.array([c.max_budget for c in configs], dtype=np.int64),
        )

    @classmethod
    def from_columns(
        cls,
        *,
        algorithm: Sequence[str],
        objective: Sequence[str],
        goal_percent: Sequence[float],
        proactive_ratio: Sequence[float],
        max_budget: Sequence[int],
    ) -> PacingTargets:
        """Arrays from configuration columns (enum values as strings, as a shard carries them).

        Raises ValueError naming an unknown algorithm or objective.
        """
        try:
            algorithms = [_ALGORITHM_INDEX[a] for a in algorithm]
            objectives = [_OBJECTIVE_INDEX[o] for o in objective]
        except KeyError as unknown:
            raise ValueError(f"unknown algorithm or objective {unknown.args[0]!r}") from None
        return cls(
            algorithm=np.array(algorithms, dtype=np.int8),
            objective=np.array(objectives, dtype=np.int8),
            goal=np.array(goal_percent, dtype=np.float64) / 100.0,
            proactive_ratio=np.array(proactive_ratio, dtype=np.float64),
            max_budget=np.array(max_budget, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.algorithm)


_ALGORITHM_INDEX: dict[str, int] = {algorithm.value: i for i, algorithm in enumerate(ALGORITHMS)}
_OBJECTIVE_INDEX: dict[str, int] = {objective.value: i for i, objective in enumerate(OBJECTIVES)}


@dataclass(frozen=True, slots=True)
class PacingParameters:
    """Tuning of the pacing rules and estimators; every field has a sensible default.

    Times are in seconds. The ``*_memory_seconds`` fields are the time constants of the
    exponential forgetting of each estimator (algorithm.md §1); the ``*_weight`` fields are how
    many observations the prior counts for.
    """

    refresh_period_seconds: float = 2.0
    # --- priors (algorithm.md §1; used alone during a cold start, §2) ---
    prior_accept_probability: float = 0.25
    prior_resolve_delay_seconds: float = 10.0
    prior_handle_time_seconds: float = 180.0
    prior_patience_seconds: float = 60.0
    prior_accept_weight: float = 20.0  # pseudo resolved invitations behind the Beta prior of p
    prior_resolve_weight: float = 5.0  # pseudo resolutions behind the prior of d
    prior_patience_weight: float = 5.0  # pseudo abandonments behind the prior of θ
    prior_handle_weight: float = 10.0  # pseudo completed interactions behind the prior of h
    # --- estimator memories ---
    feedback_memory_seconds: float = 900.0  # p and d
    handle_time_memory_seconds: float = 300.0  # the smoothing of the Stat Server's AHT
    #: h by Little's law: 15 minutes, the usual window of a Stat Server's AHT; a shorter memory
    #: lets the prior weigh more (at 5 minutes, a 50-slot group read 5 % long)
    busy_memory_seconds: float = 900.0
    patience_memory_seconds: float = 1800.0  # θ: abandonments are rare, so remember longer
    reactive_memory_seconds: float = 600.0  # λ_r: §1 asks for 5–15 minutes
    max_observation_gap_seconds: float = 60.0  # longer gaps re-base the counters (see _estimators)
    # --- self-calibrating trim (§6) ---
    trim_learning_rate: float = 0.02  # η, per served or abandoned interaction
    #: η for rows paced by SUPER_PROGRESSIVE: a small group sees few interactions an hour, and
    #: at 0.02 a 10-slot group took over ten simulated hours to settle; at 0.06 it holds its goal
    #: within ± 0.5 points in the quick evaluation. (Large groups keep 0.02: a faster trim is
    #: noisier and cost PREDICTIVE_B two points of occupancy at 100 slots.)
    small_group_trim_learning_rate: float = 0.06
    busy_trim_learning_rate: float = 0.02  # η_b, per second of busy-factor error
    trim_min: float = -5.0
    trim_max: float = 3.0
    #: The abandonment allowance SUPER_PROGRESSIVE starts from for BUSY_FACTOR targets, which have
    #: no abandonment goal of their own; the busy-factor trim scales it (§6).
    busy_factor_abandonment: float = 0.03
    #: BUSY_FACTOR targets paced by PREDICTIVE_B never aim at more abandonment than this: a busy
    #: goal the group cannot reach with patient visitors must not turn into a queue (§5.1).
    busy_factor_abandonment_ceiling: float = 0.2
    # --- PREDICTIVE_B (§5) and AUTO ---
    predictive_gain: float = 0.5  # γ of §5.5: the share of the pipeline gap closed per cycle
    #: AUTO paces a target with PREDICTIVE_B once its group (staffed slots, smoothed) has this
    #: many slots, with SUPER_PROGRESSIVE below (the documented split 1–30 / 30+).
    large_group_slots: float = 30.0
    #: The time constant of that smoothing: a group does not flip rules on a short absence.
    group_size_memory_seconds: float = 300.0
    # --- safety layer (§2) ---
    cold_start_min_resolved: int = 20
    cold_start_min_completed: int = 10
    queue_full_factor: float = 4.0  # Q > factor · N is "Q much larger than N"
    max_plausible_slots: float = 100_000.0  # staffing or queue above this is malformed
    budget_search_limit: int = 10_000  # no target gets more per cycle, whatever max_budget says
    global_budget_cap: int | None = None  # per cycle over all targets passed to one pace() call
    #: Interpolate SUPER_PROGRESSIVE's slack between n* and n* + 1 so that the fractional carry
    #: (§2) can send below one invitation per cycle; False gives the plain integer rule of §4.
    #: Off by default: the rule decides how many invitations should be outstanding (a stock),
    #: and the same fraction re-granted every cycle while nothing changes adds up to a rate. In
    #: the evaluation that overbooked small groups (8 % abandonment at one slot against a 3 %
    #: goal; 0 % with the integer rule, as algorithm.md §4 reports).
    super_progressive_interpolate: bool = False

    def __post_init__(self) -> None:
        positive = (
            "refresh_period_seconds",
            "prior_resolve_delay_seconds",
            "prior_handle_time_seconds",
            "prior_patience_seconds",
            "prior_accept_weight",
            "prior_resolve_weight",
            "prior_patience_weight",
            "prior_handle_weight",
            "feedback_memory_seconds",
            "handle_time_memory_seconds",
            "busy_memory_seconds",
            "patience_memory_seconds",
            "reactive_memory_seconds",
            "max_observation_gap_seconds",
            "queue_full_factor",
            "max_plausible_slots",
            "group_size_memory_seconds",
        )
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(
                    f"Pacing parameter {name} is {value!r}; set it to a finite positive number."
                )
        if not 0 < self.prior_accept_probability <= 1:
            raise ConfigurationError(
                "Pacing parameter prior_accept_probability must lie in (0, 1]; "
                f"it is {self.prior_accept_probability!r}."
            )
        if not 0 < self.predictive_gain <= 1:
            raise ConfigurationError(
                "Pacing parameter predictive_gain must lie in (0, 1] (algorithm.md §5 uses "
                f"0.5 to 1); it is {self.predictive_gain!r}."
            )
        if not 0 < self.busy_factor_abandonment_ceiling < 1:
            raise ConfigurationError(
                "Pacing parameter busy_factor_abandonment_ceiling must lie in (0, 1); "
                f"it is {self.busy_factor_abandonment_ceiling!r}."
            )
        if not (self.trim_min <= 0 <= self.trim_max):
            raise ConfigurationError(
                "Pacing parameters trim_min and trim_max must bracket 0 (trim_min <= 0 <= "
                f"trim_max); they are {self.trim_min!r} and {self.trim_max!r}."
            )
        if self.budget_search_limit < 0 or (
            self.global_budget_cap is not None and self.global_budget_cap < 0
        ):
            raise ConfigurationError(
                "Pacing parameters budget_search_limit and global_budget_cap must not be "
                "negative; use None for no global cap."
            )


@dataclass(frozen=True, slots=True)
class PacingResult:
    """The decision for n targets and the state to store for the next cycle."""

    proactive_budget: NDArray[np.int64]  # finite, 0 <= x <= max_budget
    reactive_state: NDArray[np.float64]  # in [0, 1]; 1.0 for non-dual targets
    reason: NDArray[np.int8]  # Reason values
    state: NDArray[np.float64]  # (n, STATE_WIDTH)
