"""Plain Redis against the Sentinel stack: the figures and the printed report of
``benchmarks/sentinel.py``.

:func:`block_order` says which Redis each block of the run uses, :func:`compare` turns the
blocks' cycles into medians, p95s, ratios and verdicts against the 1.2 × goal of issue 18,
:func:`fence_costs` the timed fence calls into medians and shares of a cycle; the ``print_*``
functions print them. Everything here is pure except the printing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks._cycle_stack import STAGES
from benchmarks._measurements import median, p95, ratio
from benchmarks._report import _heading, _ms, _say, _table

#: The Sentinel stack's 10,000-target e2e median may be at most this many times plain Redis's.
RATIO_LIMIT = 1.2
MODES = ("plain", "sentinel")


@dataclass(frozen=True)
class Block:
    """One run of ``benchmarks/cycle.py`` on one kind of Redis: its measured pipeline cycles.

    ``e2e_ms``: the end-to-end latency of each measured cycle that published; ``measured``: how
    many were measured (the difference failed); ``stages``: each published cycle's stages."""

    pair: int  # 1-based: the pair of blocks (one of each kind) it belongs to
    mode: str  # "plain" or "sentinel"
    e2e_ms: Sequence[float] = ()
    measured: int = 0
    baseline_ms: Sequence[float] = ()
    stages: Sequence[Mapping[str, float | None]] = ()
    load: tuple[float, float] | None = None  # 1-minute load average at its start and end
    seconds: float = 0.0
    error: str | None = None  # the run failed: no figures
    failures: Sequence[str] = field(default_factory=tuple)  # "seq N: status (error)"

    @property
    def median_ms(self) -> float | None:
        return median(self.e2e_ms)

    @property
    def p95_ms(self) -> float | None:
        return p95(self.e2e_ms)


def block_order(pairs: int) -> list[tuple[int, str]]:
    """``(pair, mode)`` in running order: plain and sentinel alternate, and the first of each
    pair alternates too (ABBA: plain, sentinel, sentinel, plain, plain, …), so a machine that
    slows down or speeds up steadily over the run weighs on both kinds alike."""
    order: list[tuple[int, str]] = []
    for pair in range(1, pairs + 1):
        modes = MODES if pair % 2 else tuple(reversed(MODES))
        order += [(pair, mode) for mode in modes]
    return order


def verdict(value: float | None, limit: float = RATIO_LIMIT) -> str:
    """PASS when the ratio is known and at most ``limit``; MISS otherwise (no figure is a miss:
    a kind of Redis that published no cycle did not meet the goal)."""
    return "PASS" if value is not None and value <= limit else "MISS"


def compare(blocks: Sequence[Block], limit: float = RATIO_LIMIT) -> dict[str, Any]:
    """Per kind of Redis: the e2e median and p95 over every measured cycle of its blocks
    (pooled), and per block; per pair: sentinel median / plain median; overall: the ratio of
    the pooled medians (the verdict's), beside the median of the pair ratios."""
    modes: dict[str, Any] = {}
    for mode in MODES:
        own = [b for b in blocks if b.mode == mode]
        e2e = [v for b in own for v in b.e2e_ms]
        modes[mode] = {
            "blocks": len(own),
            "failed_blocks": sum(b.error is not None for b in own),
            "measured": sum(b.measured for b in own),
            "published": len(e2e),
            "e2e_median_ms": median(e2e),
            "e2e_p95_ms": p95(e2e),
            "baseline_median_ms": median([v for b in own for v in b.baseline_ms]),
            "stages_median_ms": {
                name: median([v for b in own for s in b.stages if (v := s.get(name)) is not None])
                for name in STAGES
            },
        }
    pairs: list[dict[str, Any]] = []
    for number in sorted({b.pair for b in blocks}):
        by_mode = {b.mode: b for b in blocks if b.pair == number}
        plain, sentinel = by_mode.get("plain"), by_mode.get("sentinel")
        value = ratio(sentinel.median_ms if sentinel else None, plain.median_ms if plain else None)
        pairs.append(
            {
                "pair": number,
                "plain_median_ms": plain.median_ms if plain else None,
                "sentinel_median_ms": sentinel.median_ms if sentinel else None,
                "ratio": value,
                "verdict": verdict(value, limit),
            }
        )
    overall = ratio(modes["sentinel"]["e2e_median_ms"], modes["plain"]["e2e_median_ms"])
    known = [p["ratio"] for p in pairs if p["ratio"] is not None]
    return {
        "limit": limit,
        "modes": modes,
        "pairs": pairs,
        "ratio": overall,
        "median_pair_ratio": median(known),
        "pairs_passed": sum(p["verdict"] == "PASS" for p in pairs),
        "verdict": verdict(overall, limit),
    }


def fence_costs(
    samples: Mapping[str, Sequence[float]], cycle_median_ms: float | None
) -> list[dict[str, Any]]:
    """Per fence call (name → the duration of each call, ms): calls, median, p95 and the median
    as a share of ``cycle_median_ms`` (the Sentinel stack's 10,000-target e2e median)."""
    rows = []
    for name, values in samples.items():
        middle = median(values)
        rows.append(
            {
                "call": name,
                "calls": len(values),
                "median_ms": middle,
                "p95_ms": p95(values),
                "share_of_cycle": ratio(middle, cycle_median_ms),
            }
        )
    return rows


# --- printing ---------------------------------------------------------------------------------


def print_blocks(blocks: Sequence[Block]) -> None:
    _heading(
        "Blocks in running order: e2e median and p95 (ms) of the measured pipeline cycles that "
        "published, the in-process baseline's median, the 1-minute load average at the block's "
        "start and end."
    )
    rows = []
    for index, b in enumerate(blocks, 1):
        load = "—" if b.load is None else f"{b.load[0]:.2f} → {b.load[1]:.2f}"
        rows.append(
            [
                f"{index}. pair {b.pair}",
                b.mode,
                f"{len(b.e2e_ms)}/{b.measured}" if b.error is None else "failed",
                _ms(b.median_ms),
                _ms(b.p95_ms),
                _ms(median(b.baseline_ms)),
                load,
                f"{b.seconds:.0f} s",
            ]
        )
    headers = ["block", "redis", "published", "median", "p95", "baseline", "load", "took"]
    print(_table(headers, rows))
    for b in blocks:
        if b.error is not None:
            _say(f"pair {b.pair} {b.mode}: {b.error}", indent="  ")
        for failure in b.failures:
            _say(f"pair {b.pair} {b.mode}: {failure}", indent="  ")


def print_comparison(comparison: Mapping[str, Any]) -> None:
    limit = comparison["limit"]
    _heading(
        f"Sentinel against plain Redis at 10,000 targets: ratio = sentinel e2e median / plain e2e "
        f"median, goal ≤ {limit:g} (issue 18). Per pair: the two adjacent blocks; overall: the "
        "medians of every measured cycle of each kind pooled."
    )
    rows = [
        [
            f"pair {p['pair']}",
            _ms(p["plain_median_ms"]),
            _ms(p["sentinel_median_ms"]),
            _ratio(p["ratio"]),
            p["verdict"],
        ]
        for p in comparison["pairs"]
    ]
    plain, sentinel = comparison["modes"]["plain"], comparison["modes"]["sentinel"]
    rows.append(
        [
            "overall",
            _ms(plain["e2e_median_ms"]),
            _ms(sentinel["e2e_median_ms"]),
            _ratio(comparison["ratio"]),
            comparison["verdict"],
        ]
    )
    print(_table(["", "plain median", "sentinel median", "ratio", "verdict"], rows))
    print()
    print(
        _table(
            ["redis", "published", "e2e median", "e2e p95", "baseline median"],
            [
                [
                    mode,
                    f"{figures['published']}/{figures['measured']}",
                    _ms(figures["e2e_median_ms"]),
                    _ms(figures["e2e_p95_ms"]),
                    _ms(figures["baseline_median_ms"]),
                ]
                for mode, figures in comparison["modes"].items()
            ],
        )
    )
    print()
    print(
        _table(
            ["stage median, ms", "plain", "sentinel", "difference"],
            [
                [
                    name.removesuffix("_ms"),
                    _ms(p_value := plain["stages_median_ms"][name]),
                    _ms(s_value := sentinel["stages_median_ms"][name]),
                    _ms(None if p_value is None or s_value is None else s_value - p_value),
                ]
                for name in STAGES
            ],
        )
    )
    print(
        f"\n{comparison['verdict']}  10k e2e median, sentinel / plain ≤ {limit:g}: "
        f"{_ratio(comparison['ratio'])} overall (median of the pair ratios "
        f"{_ratio(comparison['median_pair_ratio'])}; {comparison['pairs_passed']} of "
        f"{len(comparison['pairs'])} pairs within {limit:g})"
    )


def print_fence(rows: Sequence[Mapping[str, Any]], *, cycle_median_ms: float | None) -> None:
    _heading(
        "What the fence costs per tick on the Sentinel stack, calls interleaved round-robin on an "
        "idle stack (ms; share: the median as a part of the Sentinel stack's 10k e2e median, "
        f"{_ms(cycle_median_ms)} ms). witness: master_confirmed(client), one SENTINEL MASTER "
        "per Sentinel; WAIT 1 100: what a WAIT after each lease claim would add, timed alone "
        "after a SET; PING: one round trip to the master, the floor."
    )
    print(
        _table(
            ["call", "calls", "median", "p95", "share of a cycle"],
            [
                [
                    row["call"],
                    f"{row['calls']:,}",
                    f"{row['median_ms']:.3f}" if row["median_ms"] is not None else "—",
                    f"{row['p95_ms']:.3f}" if row["p95_ms"] is not None else "—",
                    f"{row['share_of_cycle']:.2%}" if row["share_of_cycle"] is not None else "—",
                ]
                for row in rows
            ],
        )
    )


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
