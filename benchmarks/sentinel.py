"""Plain Redis against the Sentinel stack, side by side in one run (issue 18's benchmark line).

    python benchmarks/sentinel.py [--pairs 4] [--cycles 16] [--warmup 8] [--workers 2]
                                  [--fence-calls 1000] [--json FILE]

The 10,000-target cycle of ``benchmarks/cycle.py`` on plain Redis (one ``redis-server``) and on
the Sentinel stack (a master, its replica and three Sentinels, every client finding the master
through them, the topology of ``pacing up --ha``), in alternating blocks: each block is one run
of ::

    benchmarks/cycle.py --targets 10000 --skip-scaling --skip-history
                        --cycles C --warmup W --workers N --redis {plain,sentinel} --json F

in a subprocess, so each block has a fresh stack (Redis, PostgreSQL database, simulator, worker)
and a fresh Celery client. The blocks run in ``--pairs`` pairs of one of each, the first of each
pair alternating (plain, sentinel, sentinel, plain, plain, …), so steady drift in the machine's
load weighs on both kinds alike. Each block measures ``--cycles`` pipeline cycles after
``--warmup`` warm-up cycles (and as many in-process baseline cycles: cycle.py alternates the
two). The report gives per block and per kind of Redis the e2e median and p95 (cycle.py's
figures: tick to audit row committed, cycles that published), the stage medians, and the ratio
sentinel / plain of the medians per pair and overall (every measured cycle of each kind pooled),
with PASS or MISS against 1.2.

Then the per-tick cost of the fence on a Sentinel stack of the same kind started here (idle),
``--fence-calls`` calls of each, interleaved round-robin: ``master_confirmed(client)``
(``pacing.cluster.witness``: a SENTINEL MASTER to each of the three Sentinels), a ``WAIT 1 100``
right after a ``SET`` (what a ``WAIT``-per-claim fence would add; the WAIT alone is timed) and a
``PING`` (one round trip: the floor), as medians in ms and as shares of the Sentinel stack's
median 10,000-target cycle.

Block logs (each cycle.py's output) and JSON files stay in a temporary directory whose path is
printed; ``--json`` writes the report (default ``var/bench/sentinel-<time>.json``). Exit status 0
whatever the figures, 1 if the fence's stack failed, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks._stack, tests/

from benchmarks._sentinel_report import (
    Block,
    block_order,
    compare,
    fence_costs,
    print_blocks,
    print_comparison,
    print_fence,
)
from benchmarks._stack import MASTER_NAME, SENTINELS, distinct_free_ports
from pacing.cli.redis_ha import SentinelSet, SentinelTimings
from pacing.cluster.connection import redis_client
from pacing.cluster.witness import master_confirmed
from pacing.settings import ENV_PREFIX, load_settings

REPO = Path(__file__).resolve().parents[1]
TARGETS = 10_000
#: a block that has not finished by then is stopped (its start, 26 cycles and the audit figure
#: take about 1.5 min here)
BLOCK_TIMEOUT_SECONDS = 900.0
FENCE_WARMUP_CALLS = 50
WITNESS, WAIT, PING = "witness (master_confirmed)", "WAIT 1 100 after a SET", "PING"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="blocks of each kind of Redis")
    parser.add_argument("--cycles", type=int, default=16, help="measured cycles per block")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up cycles per block")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the pool")
    parser.add_argument("--fence-calls", type=int, default=1000, help="timed calls of each")
    parser.add_argument("--json", type=Path, help="write the report here (default: var/bench/)")
    args = parser.parse_args(argv)
    if min(args.pairs, args.cycles, args.workers, args.fence_calls) < 1 or args.warmup < 0:
        parser.error("--pairs, --cycles, --workers and --fence-calls must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # the blocks get the caller's environment (cycle.py reads PACING_BENCH_POSTGRES_URL and
    # drops the other PACING_* itself); this process's own settings (the fence) get none of it
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        del os.environ[name]
    workdir = Path(tempfile.mkdtemp(prefix="pacing-bench-sentinel-"))
    print(f"logs: {workdir}", file=sys.stderr, flush=True)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    try:
        samples, wait_timeouts = measure_fence(workdir, args.fence_calls)
        blocks, machines = [], []
        order = block_order(args.pairs)
        for index, (pair, mode) in enumerate(order, 1):
            block, machine = run_block(args, workdir, index, pair, mode, child_env)
            blocks.append(block)
            machines.append(machine)
            _progress(index, len(order), block)
    except KeyboardInterrupt:
        print("interrupted; every process of the run was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"the run failed: {error}", file=sys.stderr)
        return 1
    comparison = compare(blocks)
    cycle_median = comparison["modes"]["sentinel"]["e2e_median_ms"]
    fence = fence_costs(samples, cycle_median)
    report: dict[str, Any] = {
        "machine": next((m for m in machines if m), {}),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "minutes": round((time.monotonic() - began) / 60, 1),
        "run": {
            "targets": TARGETS,
            "pairs": args.pairs,
            "cycles": args.cycles,
            "warmup": args.warmup,
            "workers": args.workers,
            "fence_calls": args.fence_calls,
            "sentinel_timings": dataclasses.asdict(SentinelTimings()),
        },
        "logs": str(workdir),
        "blocks": [dataclasses.asdict(b) for b in blocks],
        "comparison": comparison,
        "fence": {"rows": fence, "wait_timeouts": wait_timeouts},
    }
    target = (
        args.json or REPO / "var" / "bench" / f"sentinel-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    _print_header(report)
    print_blocks(blocks)
    print_comparison(comparison)
    print_fence(fence, cycle_median_ms=cycle_median)
    if wait_timeouts:
        print(f"  {wait_timeouts} WAITs timed out (100 ms) without the replica's acknowledgement")
    print(f"\nJSON: {target}")
    return 0


# --- the blocks -------------------------------------------------------------------------------


def run_block(
    args: argparse.Namespace,
    workdir: Path,
    index: int,
    pair: int,
    mode: str,
    env: dict[str, str],
) -> tuple[Block, dict[str, Any]]:
    """One cycle.py run on ``mode``'s Redis; a run that fails is a block without figures."""
    name = f"block-{index:02d}-{mode}"
    json_path, log_path = workdir / f"{name}.json", workdir / f"{name}.log"
    argv = [
        sys.executable,
        str(REPO / "benchmarks" / "cycle.py"),
        f"--targets={TARGETS}",
        "--skip-scaling",
        "--skip-history",
        f"--cycles={args.cycles}",
        f"--warmup={args.warmup}",
        f"--workers={args.workers}",
        f"--redis={mode}",
        f"--json={json_path}",
    ]
    began = time.monotonic()
    with log_path.open("wb") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            status = child.wait(timeout=BLOCK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            status = None
            _stop(child, stopping_already=False)
        except KeyboardInterrupt:
            # the terminal's Ctrl-C reached the child too (same process group): it unwinds its
            # stack by itself, and a SIGTERM now would interrupt that
            _stop(child, stopping_already=True)
            raise
        except BaseException:
            _stop(child, stopping_already=False)  # SIGTERM: cycle.py unwinds its stack on it
            raise
    seconds = time.monotonic() - began
    if status != 0 or not json_path.exists():
        error = f"cycle.py exited with {status} after {seconds:.0f} s; see {log_path}"
        return Block(pair=pair, mode=mode, seconds=seconds, error=error), {}
    report = orjson.loads(json_path.read_bytes())
    return block_from_report(report, pair=pair, mode=mode, seconds=seconds), report["machine"]


def block_from_report(report: dict[str, Any], *, pair: int, mode: str, seconds: float) -> Block:
    """The block's figures from cycle.py's JSON: its one target count's measured cycles."""
    (result,) = report["target_counts"]
    measured = [c for c in result["cycles"] if not c["warmup"]]

    def ok(cycle: dict[str, Any]) -> bool:
        return cycle["status"] == "published" and cycle["e2e_ms"] is not None

    pipeline = [c for c in measured if c["kind"] == "pipeline"]
    machine = report["machine"]
    return Block(
        pair=pair,
        mode=mode,
        e2e_ms=[c["e2e_ms"] for c in pipeline if ok(c)],
        measured=len(pipeline),
        baseline_ms=[c["e2e_ms"] for c in measured if c["kind"] == "baseline" and ok(c)],
        stages=[c["stages"] for c in pipeline if ok(c)],
        load=(machine["load_average_at_start"][0], machine["load_average_at_end"][0]),
        seconds=seconds,
        failures=[
            f"seq {c['seq']}: {c['status']}" + (f" ({c['error']})" if c["error"] else "")
            for c in pipeline
            if not ok(c)
        ],
    )


def _stop(child: subprocess.Popen[bytes], *, stopping_already: bool) -> None:
    """Let ``child`` end (SIGTERM unless it is ``stopping_already``, then SIGKILL after a
    minute); cycle.py stops every process of its stack and drops its database on the way."""
    for signum in (None if stopping_already else signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if child.poll() is not None:
            return
        if signum is not None:
            child.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=60)


def _progress(index: int, total: int, block: Block) -> None:
    if block.error is not None:
        line = block.error
    else:
        median, p95 = block.median_ms, block.p95_ms
        line = (
            f"median {median:,.0f} ms, p95 {p95:,.0f} ms" if median and p95 else "no cycle"
        ) + f", {len(block.e2e_ms)}/{block.measured} published, {block.seconds:.0f} s"
    print(
        f"  [{index}/{total}] pair {block.pair} {block.mode:<8} {line}", file=sys.stderr, flush=True
    )


# --- the fence --------------------------------------------------------------------------------


def measure_fence(workdir: Path, calls: int) -> tuple[dict[str, list[float]], int]:
    """The three fence calls, ``calls`` times each, on a Sentinel stack of their own: per call
    the durations in ms, and how many WAITs timed out without the replica's acknowledgement."""
    master, replica, *sentinels = distinct_free_ports(2 + SENTINELS)
    print("fence: starting a Sentinel stack", file=sys.stderr, flush=True)
    servers = SentinelSet.start(
        workdir / "fence-redis-ha",
        master_port=master,
        replica_port=replica,
        sentinel_ports=sentinels,
        master_name=MASTER_NAME,
    )
    try:
        settings = load_settings(
            {"redis_sentinels": servers.sentinels_setting(), "redis_master_name": MASTER_NAME}
        )
        client = redis_client(settings)
        try:
            return time_fence_calls(client, calls)
        finally:
            client.close()
    finally:
        servers.stop()


def time_fence_calls(client: redis.Redis, calls: int) -> tuple[dict[str, list[float]], int]:
    """Each call ``calls`` times, after a few untimed ones, in rotating order (a drift or a
    cache effect of the order weighs on all three)."""
    key = "bench:fence"
    timeouts = 0

    def witness() -> None:
        if not master_confirmed(client):
            raise RuntimeError("no Sentinel majority confirms the master of an idle stack")

    def wait() -> float:
        nonlocal timeouts
        client.set(key, time.time_ns())
        began = time.perf_counter()
        acknowledged = client.wait(1, 100)
        took = time.perf_counter() - began
        timeouts += int(acknowledged) < 1
        return took

    def timed(call: str) -> float:
        if call == WAIT:
            return wait()
        began = time.perf_counter()
        if call == WITNESS:
            witness()
        else:
            client.ping()
        return time.perf_counter() - began

    names = [WITNESS, WAIT, PING]
    for _ in range(FENCE_WARMUP_CALLS):
        for name in names:
            timed(name)
    timeouts = 0
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(calls):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timed(name) * 1000)
    with contextlib.suppress(redis.RedisError):
        client.delete(key)
    return samples, timeouts


def _print_header(report: dict[str, Any]) -> None:
    machine, run = report["machine"], report["run"]
    timings = run["sentinel_timings"]
    print(
        f"\nMachine   {machine.get('cpu_model')}, {machine.get('cores')} cores, "
        f"{machine.get('ram_gib')} GiB RAM\n"
        f"Software  Python {machine.get('python')}, PostgreSQL {machine.get('postgresql')}, "
        f"Redis {machine.get('redis', '?').split(' ')[0]}, Celery {machine.get('celery')}\n"
        f"Code      {machine.get('code')}\n"
        f"Load      load average (1, 5, 15 min) "
        f"{' / '.join(f'{x:.2f}' for x in report['load_average_at_start'])} at the start, "
        f"{' / '.join(f'{x:.2f}' for x in report['load_average_at_end'])} at the end "
        f"({report['minutes']} min)\n"
        f"Run       {run['targets']:,} targets, {run['pairs']} pair(s) of blocks (plain and "
        f"sentinel, ABBA), each {run['cycles']} measured + {run['warmup']} warm-up cycles of "
        f"each kind, {run['workers']} worker processes; Sentinels: down-after "
        f"{timings['down_after_milliseconds']} ms, failover-timeout "
        f"{timings['failover_timeout_milliseconds']} ms, quorum 2\n"
        f"Logs      {report['logs']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
