"""Pacing mathematics alone: one call on 10,000 mixed targets vs the same targets in shards.

    python benchmarks/pace.py [--targets 10000] [--shard-size 250] [--cycles 90]
                              [--budget-ms 100]

70 % small groups (1–10 slots), 30 % large (30–200), mixed algorithms, realistic counters, run
until past the cold-start rule; prints medians of the steady-state cycles, measured side by side
in one run (the machines are shared and noisy: compare ratios, not absolute figures).

Issue 3's criterion: the one-call median for 10,000 targets is at most ``--budget-ms`` (100 ms)
on this machine, single process; the script says PASS or FAIL and exits 1 on FAIL. The large
groups are paced by PREDICTIVE_B (AUTO and PREDICTIVE_B targets), whose Erlang-A operating points
come from the process-wide cache in steady state.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pacing.algorithms import (
    PacingInputs,
    PacingParameters,
    PacingTargets,
    cold_state,
    pace,
)
from pacing.algorithms._state import StateColumn  # the benchmark fast-forwards the state
from pacing.domain import Algorithm, Reason, TargetConfig

ALGORITHMS = [
    Algorithm.SUPER_PROGRESSIVE,
    Algorithm.SUPER_PROGRESSIVE_DUAL,
    Algorithm.AUTO,
    Algorithm.PREDICTIVE_B,
]


def synthetic_cycles(n: int, cycles: int, seed: int = 7) -> list[PacingInputs]:
    rng = np.random.default_rng(seed)
    small = rng.random(n) < 0.7
    slots = np.where(small, rng.integers(1, 11, n), rng.integers(30, 201, n)).astype(float)
    counters = np.zeros((n, 5))
    rate = slots / 180 * 2
    out = []
    for _ in range(cycles):
        inputs = PacingInputs.empty(n)
        busy = np.floor(slots * rng.uniform(0.6, 1.0, n))
        inputs.agents_ready[:] = slots - busy
        inputs.agents_busy[:] = busy
        inputs.interactions_waiting[:] = np.where(rng.random(n) < 0.3, rng.integers(0, 3, n), 0)
        inputs.aht_seconds[:] = rng.uniform(120, 240, n)
        counters[:, 0] += rng.poisson(rate * 0.97)
        counters[:, 1] += rng.poisson(rate * 0.03)
        counters[:, 2] += rng.poisson(rate * 0.3)
        resolved = rng.poisson(rate * 4)
        counters[:, 3] += rng.binomial(resolved, 0.25)
        counters[:, 4] += resolved
        inputs.answered_total[:] = counters[:, 0]
        inputs.abandoned_total[:] = counters[:, 1]
        inputs.reactive_arrivals_total[:] = counters[:, 2]
        inputs.offers_accepted_total[:] = counters[:, 3]
        inputs.offers_resolved_total[:] = counters[:, 4]
        inputs.offers_sent_total[:] = counters[:, 4] + 5
        inputs.offers_pending[:] = np.floor(rate * 40 * rng.uniform(0.5, 1.5, n))
        out.append(inputs)
    return out


def _slice(inputs: PacingInputs, part: slice) -> PacingInputs:
    return PacingInputs(
        **{name: getattr(inputs, name)[part] for name in PacingInputs.__dataclass_fields__}
    )


def run(
    n: int, shard_size: int, cycles: int, warmup: int
) -> tuple[list[float], list[float], dict[str, int]]:
    configs = [
        TargetConfig(f"t{i}", algorithm=ALGORITHMS[i % 4], proactive_ratio=0.7, max_budget=50)
        for i in range(n)
    ]
    targets = PacingTargets.from_configs(configs)
    shards = [slice(i, min(i + shard_size, n)) for i in range(0, n, shard_size)]
    shard_targets = [PacingTargets.from_configs(configs[s]) for s in shards]
    parameters = PacingParameters()
    state_whole = cold_state(n)
    state_shards = [cold_state(s.stop - s.start) for s in shards]
    whole_ms: list[float] = []
    sharded_ms: list[float] = []
    now = 1.7e9
    for k, inputs in enumerate(synthetic_cycles(n, cycles)):
        now += 2.0
        started = time.perf_counter()
        whole_result = pace(inputs, targets, state_whole, parameters=parameters, now=now)
        state_whole = whole_result.state
        whole = time.perf_counter() - started
        started = time.perf_counter()
        for index, part in enumerate(shards):
            result = pace(
                _slice(inputs, part),
                shard_targets[index],
                state_shards[index],
                parameters=parameters,
                now=now,
            )
            state_shards[index] = result.state
        sharded = time.perf_counter() - started
        if k == 0:
            # Steady state: as after hours of traffic, every row is past the cold-start rule
            # (the synthetic small groups would need ~450 cycles to see 20 resolved invitations).
            for state in (state_whole, *state_shards):
                state[:, StateColumn.RESOLVED_SEEN] = 1e4
                state[:, StateColumn.COMPLETED_SEEN] = 1e4
        if k >= warmup:
            whole_ms.append(whole * 1000)
            sharded_ms.append(sharded * 1000)
    reasons = {
        Reason(code).label: int(count)
        for code, count in zip(*np.unique(whole_result.reason, return_counts=True), strict=True)
    }
    return whole_ms, sharded_ms, reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--cycles", type=int, default=90)
    parser.add_argument("--budget-ms", type=float, default=100.0)
    args = parser.parse_args()
    # Past the cold-start rule of the large groups (≈20 resolved invitations, 10 completed).
    warmup = min(45, args.cycles // 2)
    whole, sharded, reasons = run(args.targets, args.shard_size, args.cycles, warmup)
    shards = -(-args.targets // args.shard_size)
    print(f"pace() on {args.targets} mixed targets, {len(whole)} steady-state cycles")
    whole_median = statistics.median(whole)
    print(f"  one call           median {whole_median:7.1f} ms  max {max(whole):7.1f} ms")
    print(
        f"  {shards} shards of {args.shard_size:<5} median {statistics.median(sharded):7.1f} ms  "
        f"max {max(sharded):7.1f} ms  (sum over shards, one process)"
    )
    print(f"  ratio shards / one call: {statistics.median(sharded) / statistics.median(whole):.2f}")
    print(f"  reasons in the last cycle: {reasons}")
    verdict = "PASS" if whole_median <= args.budget_ms else "FAIL"
    print(f"{verdict}: one-call median {whole_median:.1f} ms, budget {args.budget_ms:.0f} ms")
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
