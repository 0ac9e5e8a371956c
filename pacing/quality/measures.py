"""The measures of pacing quality: each size class's figures between two readings.

The input is two readings of the simulator's per-target metrics, the JSON of
``GET /sim/metrics?per_target=1`` (:meth:`pacing.simulator.world.World.metrics` with
``per_target=True``). Their counts are cumulative since the world's last metrics reset, so the
difference of two readings is what happened between them, whoever took them and however
(over HTTP from a live stack, or from a world stepped in virtual time).

Per size class (staffed slots of the target: ``1–2``, ``3–9``, ``10–30``, ``31–100``, ``101+``;
``0`` for targets nobody is staffed in; the aggregates ``10+`` and ``all``) a window has:

* invitations sent, accepted interactions (accepted invitations plus admitted reactive
  requests, as the simulator counts them) and abandoned ones;
* abandonment = abandoned / accepted, **None when nothing was accepted** (no visitor, no rate:
  0 would claim a success nobody measured). Both are counted when they happen, so a window's
  abandoned visitors may have been accepted in an earlier one: the minute after a flood can
  show more than 100 %;
* occupancy = busy slot-seconds / (staffed slots × window seconds), **None without staffed
  slots or without time**; the window's seconds are the simulated seconds the world stepped
  between the readings (``window_seconds``, which leaves out time a paused simulator skipped);
* the goal: each target's goal (a fraction, 0.03 for 3 %) weighted by its accepted
  interactions, so that abandonment − goal is the excess of abandoned visitors over what the
  targets' goals allow, per accepted visitor; the plain mean of the goals while nothing was
  accepted; None for a class without targets.

:mod:`pacing.quality.report` holds these windows to issue 16's bounds and
:mod:`pacing.quality.text` prints them. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Size classes by staffed slots: (name, fewest slots, most slots or None for no limit).
SIZE_CLASSES: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0),
    ("1–2", 1, 2),
    ("3–9", 3, 9),
    ("10–30", 10, 30),
    ("31–100", 31, 100),
    ("101+", 101, None),
)
#: Aggregates over the classes: (name, fewest slots); ``all`` holds every target.
AGGREGATES: tuple[tuple[str, int], ...] = (("10+", 10), ("all", 0))
#: Every class a window reports, in table order.
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SIZE_CLASSES) + tuple(
    name for name, _ in AGGREGATES
)
#: The classes issue 16's bounds speak of: the whole population and groups of 10 slots and more.
LARGE = "10+"
ALL = "all"


def size_class(slots: int) -> str:
    """The size class of a target with ``slots`` staffed slots."""
    if slots < 0:
        raise ValueError(f"A target cannot have {slots} staffed slots.")
    for name, low, high in SIZE_CLASSES:
        if slots >= low and (high is None or slots <= high):
            return name
    raise AssertionError("SIZE_CLASSES covers every slot count")  # pragma: no cover


def _classes_of(slots: int) -> list[str]:
    """The size class and the aggregates a target with ``slots`` staffed slots counts in."""
    return [size_class(slots), *(name for name, low in AGGREGATES if slots >= low)]


@dataclass(frozen=True, slots=True)
class ClassFigures:
    """One size class over one window; see the module docstring for each figure."""

    size_class: str
    targets: int
    slots: int
    seconds: float
    invitations: int
    accepted: int
    abandoned: int
    busy_slot_seconds: float
    goal: float | None

    @property
    def abandonment(self) -> float | None:
        """abandoned / accepted; None when nothing was accepted."""
        return self.abandoned / self.accepted if self.accepted > 0 else None

    @property
    def occupancy(self) -> float | None:
        """busy slot-seconds / (staffed slots × seconds); None without slots or time."""
        capacity = self.slots * self.seconds
        return self.busy_slot_seconds / capacity if capacity > 0 else None

    @property
    def difference(self) -> float | None:
        """abandonment − goal (a fraction: 0.01 is one point); None if either is unknown."""
        abandonment = self.abandonment
        if abandonment is None or self.goal is None:
            return None
        return abandonment - self.goal

    def as_json(self) -> dict[str, Any]:
        """The figures, the derived ones included, as a JSON-ready dict."""
        return {
            "targets": self.targets,
            "slots": self.slots,
            "seconds": self.seconds,
            "invitations": self.invitations,
            "accepted": self.accepted,
            "abandoned": self.abandoned,
            "busy_slot_seconds": round(self.busy_slot_seconds, 3),
            "abandonment": rounded(self.abandonment),
            "occupancy": rounded(self.occupancy),
            "goal": rounded(self.goal),
            "difference": rounded(self.difference),
        }


@dataclass(frozen=True, slots=True)
class Window:
    """The figures of every size class between two readings.

    ``first`` and ``last`` number the periods (minutes) the window covers, from 1: a window
    from the reading at the start to the one after the first minute is ``first=last=1``.
    ``start`` and ``end`` are the readings' ``generated_at`` (the simulator's time).
    """

    first: int
    last: int
    start: float
    end: float
    seconds: float
    classes: Mapping[str, ClassFigures] = field(repr=False)

    @property
    def label(self) -> str:
        """``7`` for one period, ``6–10`` for several."""
        return str(self.first) if self.first == self.last else f"{self.first}–{self.last}"

    def as_json(self) -> dict[str, Any]:
        """The window and its classes as a JSON-ready dict."""
        return {
            "first": self.first,
            "last": self.last,
            "label": self.label,
            "start": self.start,
            "end": self.end,
            "seconds": self.seconds,
            "classes": {name: figures.as_json() for name, figures in self.classes.items()},
        }


def uniform_goals(snapshot: Mapping[str, Any], goal: float) -> dict[str, float]:
    """The same goal (a fraction) for every target of ``snapshot``."""
    return dict.fromkeys(_targets(snapshot), goal)


def window(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    goals: Mapping[str, float],
    *,
    first: int = 1,
    last: int | None = None,
) -> Window:
    """Each size class's figures between the readings ``before`` and ``after``.

    ``goals`` maps every target id to its abandonment goal as a fraction. Raises ValueError
    when the readings do not belong together: other targets, a target's staffed slots changed,
    or a counter went down (the simulator's metrics were reset between them).
    """
    before_targets = _targets(before)
    after_targets = _targets(after)
    if before_targets.keys() != after_targets.keys():
        raise ValueError("The two readings list different targets; take both from one world.")
    missing = sorted(set(after_targets) - set(goals))
    if missing:
        raise ValueError(f"No goal given for {len(missing)} targets, e.g. {missing[0]!r}.")
    seconds = _number(after, "window_seconds") - _number(before, "window_seconds")
    if seconds < 0:
        raise ValueError("The second reading's window is shorter: the metrics were reset.")

    sums = {name: _Sums() for name in CLASS_NAMES}
    for target_id, now in after_targets.items():
        then = before_targets[target_id]
        slots = _count(now, "slots")
        if _count(then, "slots") != slots:
            raise ValueError(f"{target_id}: staffed slots differ between the readings.")
        change = _TargetChange(
            invitations=_count_delta(then, now, target_id, "offers", "sent"),
            accepted=_count_delta(then, now, target_id, "accepted"),
            abandoned=_count_delta(then, now, target_id, "abandoned"),
            busy_slot_seconds=_delta(then, now, target_id, "busy_slot_seconds"),
            goal=float(goals[target_id]),
        )
        for name in _classes_of(slots):
            sums[name].add(slots, change)
    return Window(
        first=first,
        last=first if last is None else last,
        start=_number(before, "generated_at"),
        end=_number(after, "generated_at"),
        seconds=round(seconds, 6),
        classes={name: sums[name].figures(name, seconds) for name in CLASS_NAMES},
    )


def windows(
    snapshots: Sequence[Mapping[str, Any]],
    goals: Mapping[str, float],
    *,
    span: int = 1,
    start: int = 0,
) -> list[Window]:
    """Consecutive windows of ``span`` periods over readings taken one period apart.

    ``snapshots[0]`` is the reading at the start and ``snapshots[k]`` the one after period k;
    the windows begin at reading ``start`` and only whole ones are returned (periods 1–5,
    6–10, … for ``span=5``).
    """
    if span < 1 or start < 0:
        raise ValueError("Need span >= 1 and start >= 0.")
    return [
        window(
            snapshots[begin],
            snapshots[begin + span],
            goals,
            first=begin + 1,
            last=begin + span,
        )
        for begin in range(start, len(snapshots) - span, span)
    ]


# --- reading the snapshots ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TargetChange:
    invitations: int
    accepted: int
    abandoned: int
    busy_slot_seconds: float
    goal: float


@dataclass(slots=True)
class _Sums:
    targets: int = 0
    slots: int = 0
    invitations: int = 0
    accepted: int = 0
    abandoned: int = 0
    busy_slot_seconds: float = 0.0
    goal_sum: float = 0.0  # plain sum of the targets' goals
    goal_accepted: float = 0.0  # sum of goal x accepted

    def add(self, slots: int, change: _TargetChange) -> None:
        self.targets += 1
        self.slots += slots
        self.invitations += change.invitations
        self.accepted += change.accepted
        self.abandoned += change.abandoned
        self.busy_slot_seconds += change.busy_slot_seconds
        self.goal_sum += change.goal
        self.goal_accepted += change.goal * change.accepted

    def figures(self, name: str, seconds: float) -> ClassFigures:
        if self.accepted > 0:
            goal: float | None = self.goal_accepted / self.accepted
        elif self.targets > 0:
            goal = self.goal_sum / self.targets
        else:
            goal = None
        return ClassFigures(
            size_class=name,
            targets=self.targets,
            slots=self.slots,
            seconds=round(seconds, 6),
            invitations=self.invitations,
            accepted=self.accepted,
            abandoned=self.abandoned,
            busy_slot_seconds=self.busy_slot_seconds,
            goal=goal,
        )


def _targets(snapshot: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    targets = snapshot.get("targets")
    if not isinstance(targets, Mapping):
        raise ValueError("The reading has no per-target metrics; ask for ?per_target=1.")
    return targets


def _number(snapshot: Mapping[str, Any], key: str) -> float:
    value = snapshot.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"The reading has no number {key!r}.")
    return float(value)


def _count(block: Mapping[str, Any], key: str) -> int:
    value = block.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"A target's metrics have no count {key!r}.")
    return value


def _field(block: Mapping[str, Any], target_id: str, path: tuple[str, ...]) -> int | float:
    value: Any = block
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        name = ".".join(path)
        hint = " (a simulator older than busy_slot_seconds?)" if name == "busy_slot_seconds" else ""
        raise ValueError(f"{target_id}: the reading has no number {name!r}{hint}.")
    return value


def _delta(
    before: Mapping[str, Any], after: Mapping[str, Any], target_id: str, *path: str
) -> float:
    change = _field(after, target_id, path) - _field(before, target_id, path)
    if change < 0:
        raise ValueError(
            f"{target_id}: {'.'.join(path)} went down between the readings: the metrics were "
            "reset; take both readings within one measurement window."
        )
    return change


def _count_delta(
    before: Mapping[str, Any], after: Mapping[str, Any], target_id: str, *path: str
) -> int:
    change = _delta(before, after, target_id, *path)
    if not isinstance(change, int):
        raise ValueError(f"{target_id}: {'.'.join(path)} is not a whole number.")
    return change


def rounded(value: float | None) -> float | None:
    """A figure as the JSON shows it, to 6 decimals (shared with :mod:`pacing.quality.report`)."""
    return None if value is None else round(value, 6)
