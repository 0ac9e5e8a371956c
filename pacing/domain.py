"""Plain value types shared by every part of the service (no I/O, no Celery)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import NamedTuple

#: Target ids come from outside (CSV/YAML files, the Stat Server); this is what we accept.
TARGET_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def is_valid_target_id(target_id: object) -> bool:
    """True if ``target_id`` is a string of 1–128 safe characters."""
    return isinstance(target_id, str) and TARGET_ID_PATTERN.fullmatch(target_id) is not None


class Reason(IntEnum):
    """Why a target got its budget. Small integers travel in chord results; labels are public."""

    OK = 0
    COLD_START = 1  # paced with the prior parameters until the estimators have data
    NO_AGENTS = 2  # nobody staffed: budget 0
    QUEUE_FULL = 3  # the queue is far longer than the group: budget 0
    STALE = 4  # statistics older than stats_max_age, or no Stat Server answered
    ERROR = 5  # malformed statistics for this target
    UNKNOWN_TARGET = 6  # the Stat Server does not know this target

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Reason:
        return cls[label.upper()]


class Algorithm(StrEnum):
    """The pacing algorithm configured for a target."""

    AUTO = "AUTO"
    SUPER_PROGRESSIVE = "SUPER_PROGRESSIVE"
    PREDICTIVE_B = "PREDICTIVE_B"
    SUPER_PROGRESSIVE_DUAL = "SUPER_PROGRESSIVE_DUAL"
    PREDICTIVE_B_DUAL = "PREDICTIVE_B_DUAL"

    @property
    def is_dual(self) -> bool:
        return self in (Algorithm.SUPER_PROGRESSIVE_DUAL, Algorithm.PREDICTIVE_B_DUAL)


class Objective(StrEnum):
    """What the goal of a target means."""

    ABANDONMENT_RATE = "ABANDONMENT_RATE"
    BUSY_FACTOR = "BUSY_FACTOR"

    @classmethod
    def parse(cls, value: str) -> Objective:
        """Accept the legacy Genesys spelling ``ABANDONEMENT_RATE`` as an alias."""
        normalised = value.strip().upper()
        if normalised == "ABANDONEMENT_RATE":
            return cls.ABANDONMENT_RATE
        return cls(normalised)


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One pacing target as configured in the history database."""

    target_id: str
    name: str = ""
    kind: str = "agent_group"
    channel: str = "chat"
    algorithm: Algorithm = Algorithm.AUTO
    objective: Objective = Objective.ABANDONMENT_RATE
    goal_percent: int = 3
    proactive_ratio: float = 1.0
    max_budget: int = 50
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class TargetStatistics:
    """One target's validated statistics from the Stat Server gateway (docs/contracts.md)."""

    target_id: str
    timestamp: float  # Unix seconds, UTC
    agents_logged_in: int
    agents_ready: int
    agents_busy: int
    interactions_waiting: int
    aht_seconds: float
    answered_total: int
    abandoned_total: int
    reactive_arrivals_total: int


@dataclass(frozen=True, slots=True)
class StatisticsError:
    """Why one target has no usable statistics this cycle."""

    target_id: str
    reason: Reason  # STALE, ERROR or UNKNOWN_TARGET
    detail: str


class OfferFeedback(NamedTuple):
    """Cumulative invitation counters the engagement platform returns per target.

    A named tuple, not a dataclass: a publish answers with up to one per target, and a list of
    tuples becomes the (n, 4) array the state store saves in one C call (10,000 entries: the
    attribute-by-attribute copy took 8.7 ms).
    """

    offers_sent_total: int
    offers_accepted_total: int
    offers_resolved_total: int
    offers_pending: int
