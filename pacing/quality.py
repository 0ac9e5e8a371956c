"""Pacing quality over a window: abandonment against the goal and occupancy, per group size.

The input is two readings of the simulator's per-target metrics, the JSON of
``GET /sim/metrics?per_target=1`` (:meth:`pacing.simulator.world.World.metrics` with
``per_target=True``). Their counts are cumulative since the world's last metrics reset, so the
difference of two readings is what happened between them, whoever took them and however
(over HTTP from a live stack, or from a world stepped in virtual time)::

    first, second = get_metrics(), get_metrics()   # a minute apart
    figures = window(first, second, uniform_goals(second, 0.03))
    print(format_windows([figures], title="the last minute"))

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

:func:`issue_criteria` checks the bounds of issue 16 on 5-minute windows. Nothing here does
I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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

#: Comparisons against a bound allow for the rounding of the ratios (a rate of exactly
#: goal + 1 point passes).
_TOLERANCE = 1e-12


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
            "abandonment": _rounded(self.abandonment),
            "occupancy": _rounded(self.occupancy),
            "goal": _rounded(self.goal),
            "difference": _rounded(self.difference),
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


# --- issue 16's bounds ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One figure of one window against its bounds (None: no bound on that side)."""

    window: str
    size_class: str
    measure: str  # "abandonment" or "occupancy"
    value: float | None
    low: float | None
    high: float | None

    @property
    def passed(self) -> bool:
        """Within the bounds; a figure that could not be measured (None) never passes."""
        if self.value is None:
            return False
        above_low = self.low is None or self.value >= self.low - _TOLERANCE
        below_high = self.high is None or self.value <= self.high + _TOLERANCE
        return above_low and below_high

    def as_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "class": self.size_class,
            "measure": self.measure,
            "value": _rounded(self.value),
            "low": _rounded(self.low),
            "high": _rounded(self.high),
            "passed": self.passed,
        }


@dataclass(frozen=True, slots=True)
class Criterion:
    """A bound and every check it made; it passes if it checked something and all passed."""

    name: str
    description: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "passed": self.passed,
            "checks": [check.as_json() for check in self.checks],
        }


def issue_criteria(
    windows_: Iterable[Window],
    *,
    settled_from: int,
    ceiling_points: float = 1.0,
    band_points: float = 0.5,
    min_occupancy: float = 0.9,
) -> list[Criterion]:
    """Issue 16's bounds on 5-minute windows.

    * ceiling: in every window, abandonment ≤ goal + ``ceiling_points`` for ``all`` and ``10+``;
    * settled: in every window from minute ``settled_from`` on (its ``first`` ≥ it), ``10+``
      within goal ± ``band_points`` and its occupancy ≥ ``min_occupancy``.

    A criterion with no window to check (a run too short) does not pass.
    """
    ceiling = ceiling_points / 100
    band = band_points / 100
    ceiling_checks: list[Check] = []
    settled_checks: list[Check] = []
    for item in windows_:
        for name in (ALL, LARGE):
            figures = item.classes[name]
            high = None if figures.goal is None else figures.goal + ceiling
            ceiling_checks.append(
                Check(item.label, name, "abandonment", figures.abandonment, None, high)
            )
        if item.first >= settled_from:
            figures = item.classes[LARGE]
            goal = figures.goal
            settled_checks.append(
                Check(
                    item.label,
                    LARGE,
                    "abandonment",
                    figures.abandonment,
                    None if goal is None else goal - band,
                    None if goal is None else goal + band,
                )
            )
            settled_checks.append(
                Check(item.label, LARGE, "occupancy", figures.occupancy, min_occupancy, None)
            )
    return [
        Criterion(
            "ceiling",
            f"every window: abandonment ≤ goal + {ceiling_points:g} point for {ALL} and {LARGE}",
            tuple(ceiling_checks),
        ),
        Criterion(
            "settled",
            f"windows from minute {settled_from} on: {LARGE} within goal ± {band_points:g} "
            f"point, occupancy ≥ {min_occupancy:.0%}",
            tuple(settled_checks),
        ),
    ]


# --- a whole run ------------------------------------------------------------------------------

#: Minutes per window of issue 16's bounds.
SPAN = 5
#: The settled band applies from this many minutes after a start from an empty state.
SETTLE_MINUTES = 10
#: The minutes after a wipe of the per-target state that are reported on their own.
AFTER_WIPE_MINUTES = 10


def run_report(
    readings: Sequence[Mapping[str, Any]],
    goals: Mapping[str, float],
    *,
    wipe_at: int | None = None,
) -> dict[str, Any]:
    """Every table and criterion of a run from its readings, one a minute from the start.

    ``readings[0]`` is taken at the start (an empty state), ``readings[k]`` after minute k.
    A wipe of the per-target state after reading ``wipe_at`` is a cold start again: the start's
    bounds are checked on the windows before it, and the :data:`AFTER_WIPE_MINUTES` after it are
    reported on their own and held to the cold start's bounds — the ceiling in every window, the
    settled band once :data:`SETTLE_MINUTES` have passed since the wipe (a criterion with
    nothing to check yet is left out).
    """
    minutes = len(readings) - 1
    settled_from = SETTLE_MINUTES + 1
    # the start's own windows end where a wipe begins a second cold start
    start_end = minutes if wipe_at is None else min(wipe_at, minutes)
    result: dict[str, Any] = {
        "minutes": windows(readings, goals),
        "five_minutes": windows(readings, goals, span=SPAN),
        "settled": (
            window(
                readings[SETTLE_MINUTES],
                readings[start_end],
                goals,
                first=settled_from,
                last=start_end,
            )
            if start_end > SETTLE_MINUTES
            else None
        ),
    }
    result["criteria"] = [
        criterion
        for criterion in issue_criteria(
            windows(readings[: start_end + 1], goals, span=SPAN), settled_from=settled_from
        )
        if criterion.checks or wipe_at is None
    ]
    if wipe_at is not None:
        end = min(wipe_at + AFTER_WIPE_MINUTES, minutes)
        after = windows(readings[: end + 1], goals, span=SPAN, start=wipe_at)
        criteria = issue_criteria(after, settled_from=wipe_at + SETTLE_MINUTES + 1)
        result["after_wipe"] = {
            "five_minutes": after,
            "whole": window(readings[wipe_at], readings[end], goals, first=wipe_at + 1, last=end),
            "criteria": [criterion for criterion in criteria if criterion.checks],
        }
    return result


def format_run_report(report: Mapping[str, Any], *, heading: Sequence[str]) -> str:
    """The tables and verdicts of :func:`run_report` as text, under the ``heading`` lines."""
    parts = [
        *heading,
        "",
        format_windows(report["minutes"], title="Per minute"),
        "",
        format_windows(report["five_minutes"], title="Per 5 minutes", period="minutes"),
    ]
    if report["settled"] is not None:
        parts += [
            "",
            format_windows(
                [report["settled"]],
                title=f"After minute {SETTLE_MINUTES}",
                period="minutes",
            ),
        ]
    parts += ["", format_criteria(report["criteria"], title="Issue 16's bounds")]
    if "after_wipe" in report:
        after = report["after_wipe"]
        parts += [
            "",
            format_windows(
                [*after["five_minutes"], after["whole"]],
                title=f"The {AFTER_WIPE_MINUTES} minutes after the wipe (a cold start again)",
                period="minutes",
            ),
            "",
            format_criteria(after["criteria"], title="Issue 16's bounds after the wipe"),
        ]
    return "\n".join(parts)


def run_report_json(report: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_report` as JSON-ready dicts."""
    after = report.get("after_wipe")
    return {
        "minutes": [item.as_json() for item in report["minutes"]],
        "five_minutes": [item.as_json() for item in report["five_minutes"]],
        "settled": report["settled"].as_json() if report["settled"] else None,
        "criteria": [criterion.as_json() for criterion in report["criteria"]],
        "after_wipe": (
            {
                "five_minutes": [item.as_json() for item in after["five_minutes"]],
                "whole": after["whole"].as_json(),
                "criteria": [criterion.as_json() for criterion in after["criteria"]],
            }
            if after
            else None
        ),
    }


# --- text -------------------------------------------------------------------------------------

_COLUMNS = (
    ("class", "<"),
    ("targets", ">"),
    ("slots", ">"),
    ("invited", ">"),
    ("accepted", ">"),
    ("abandoned", ">"),
    ("abandonment", ">"),
    ("goal", ">"),
    ("vs goal", ">"),
    ("occupancy", ">"),
)


def format_windows(
    windows_: Iterable[Window],
    *,
    title: str,
    period: str = "minute",
    classes: Sequence[str] = CLASS_NAMES,
) -> str:
    """A text table: one row per window and size class (classes without targets left out)."""
    rows: list[list[str]] = []
    for item in windows_:
        shown = [item.classes[name] for name in classes if item.classes[name].targets > 0]
        for index, figures in enumerate(shown):
            rows.append([item.label if index == 0 else "", *_cells(figures)])
    if not rows:
        return f"{title}\n  (no whole window: the run is too short)"
    header = [period, *(name for name, _ in _COLUMNS)]
    aligns = "<" + "".join(align for _, align in _COLUMNS)
    return f"{title}\n{format_table(header, rows, aligns)}"


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]], aligns: str) -> str:
    """Columns as wide as their widest cell, two spaces apart; ``aligns`` holds ``<`` or ``>``
    per column."""
    rows = list(rows)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = zip(cells, aligns, widths, strict=True)
        return "  ".join(f"{cell:{align}{width}}" for cell, align, width in padded).rstrip()

    return "\n".join(
        [line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)]
    )


def format_criteria(criteria: Iterable[Criterion], *, title: str) -> str:
    """PASS or FAIL per criterion, with the checks that failed."""
    lines = [title]
    for criterion in criteria:
        verdict = "PASS" if criterion.passed else "FAIL"
        lines.append(f"  {verdict}  {criterion.description}")
        if not criterion.checks:
            lines.append("          nothing to check: the run is too short")
        for check in criterion.checks:
            if not check.passed:
                lines.append(
                    f"          window {check.window}, {check.size_class}: {check.measure} "
                    f"{_percent(check.value)} outside {_bounds(check)}"
                )
    return "\n".join(lines)


def _cells(figures: ClassFigures) -> list[str]:
    difference = figures.difference
    return [
        figures.size_class,
        f"{figures.targets:,}",
        f"{figures.slots:,}",
        f"{figures.invitations:,}",
        f"{figures.accepted:,}",
        f"{figures.abandoned:,}",
        _percent(figures.abandonment),
        _percent(figures.goal),
        "–" if difference is None else f"{difference * 100:+.2f} pt",
        _percent(figures.occupancy, digits=1),
    ]


def _percent(value: float | None, *, digits: int = 2) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


def _bounds(check: Check) -> str:
    if check.low is not None and check.high is not None:
        return f"[{_percent(check.low)}, {_percent(check.high)}]"
    if check.high is not None:
        return f"≤ {_percent(check.high)}"
    if check.low is not None:
        return f"≥ {_percent(check.low)}"
    return "its bounds (no goal)"


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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
