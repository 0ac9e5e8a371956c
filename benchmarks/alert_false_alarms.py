"""How often PacingAbandonmentAboveGoal fires for a channel exactly on its goal, by volume.

The rule (docs/prometheus/pacing-rules.yaml): the abandonment of the last 15 minutes above the
goal + 1 point, on at least the floor's interactions, for 15 minutes, evaluated every 15 s.
Here interactions arrive at random (Poisson) at a fixed volume per 15 minutes and each abandons
independently with the goal's probability: the best case, since real abandonments come in
bursts. Prints the alerts a day for each goal and volume (the table in
docs/operators-monitoring.md#pacingabandonmentabovegoal)::

    python benchmarks/alert_false_alarms.py [--days 10000] [--seed 2]
"""

from __future__ import annotations

import argparse

import numpy as np

EVALUATIONS_PER_WINDOW = 60  # one every 15 s over the 15-minute window (and the 15-minute for:)
EVALUATIONS_PER_DAY = 24 * 3600 // 15


#: Days simulated at once (memory); a run above the threshold across two chunks is lost, which
#: at most one in CHUNK_DAYS days of any rate here can be
CHUNK_DAYS = 500


def alerts_per_day(
    rng: np.random.Generator, *, interactions: int, goal: float, days: int, margin: float = 0.01
) -> float:
    """Times a day the rule starts firing for a channel of ``interactions`` per 15 minutes
    whose true abandonment is exactly ``goal``."""
    alerts = 0
    for start in range(0, days, CHUNK_DAYS):
        chunk = min(CHUNK_DAYS, days - start)
        alerts += _alerts(rng, interactions=interactions, goal=goal, days=chunk, margin=margin)
    return alerts / days


def _alerts(
    rng: np.random.Generator, *, interactions: int, goal: float, days: int, margin: float
) -> int:
    w = EVALUATIONS_PER_WINDOW
    arrived = rng.poisson(interactions / w, days * EVALUATIONS_PER_DAY)
    abandoned = rng.binomial(arrived, goal)
    total_arrived = np.concatenate(([0], np.cumsum(arrived)))
    total_abandoned = np.concatenate(([0], np.cumsum(abandoned)))
    window_arrived = total_arrived[w:] - total_arrived[:-w]
    window_abandoned = total_abandoned[w:] - total_abandoned[:-w]
    above = window_abandoned > (goal + margin) * window_arrived
    edges = np.diff(np.concatenate(([0], above.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    # pending at the first evaluation above, firing once it has been above for 15 minutes
    return int(np.count_nonzero(ends - starts > w))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("interactions/15 min  goal  alerts/day  once in (days)")
    for goal in (0.03, 0.05):
        for interactions in (500, 1000, 2000, 3000):
            rate = alerts_per_day(rng, interactions=interactions, goal=goal, days=args.days)
            every = f"{1 / rate:,.0f}" if rate else f"> {args.days:,}"
            print(f"{interactions:>20,}  {goal:.0%}  {rate:10.4f}  {every:>14}")


if __name__ == "__main__":
    main()
