"""Live-quality benchmark: the processes of ``pacing up`` against the simulator, minute by minute.

    python benchmarks/live.py [--targets 1000] [--minutes 20] [--nodes 2] [--seed 7]
                              [--wipe-at MINUTE] [--minute-seconds 60] [--json FILE]

It starts what ``pacing up`` starts (``pacing.cli.localstack.start_local_stack``): a redis-server of
its own on a free loopback port without persistence (so Redis starts empty), a SQLite history in
a temporary directory, the simulator with the world ``pacing up`` builds (``--targets``,
``--seed``), ``--nodes`` nodes of a ``celery worker`` and a ``celery beat``, Flower and the
metrics exporter; every other setting is the embedded default (2 s refresh, …) and nothing of
the caller's ``PACING_*`` environment is used.

Reading 0 of ``GET /sim/metrics?per_target=1`` is taken as soon as the processes are started,
before the nodes have published; reading k at the simulator's time (its ``generated_at``)
start + k minutes: each is requested just after that time, and the reading's own time is what
counts, so a late reading does not shift the next one. Between readings, ``pacing.quality``
gives per size class (staffed slots) the invitations, accepted, abandoned, abandonment against
each target's goal (the history's configuration: 3 % for every target ``pacing up`` imports)
and occupancy: per minute, per 5-minute window (1–5, 6–10, …) and over minutes 11 to the end;
then issue 16's bounds:

* ceiling: in every 5-minute window, abandonment ≤ goal + 1 point for ``all`` and ``10+``
  (groups of 10 staffed slots and more);
* settled: in the windows after the tenth minute, ``10+`` within goal ± 0.5 point with an
  occupancy of 90 % or more.

``--wipe-at M`` restarts the redis-server right after reading M, without persistence: whatever
it held is lost (lease, seq, per-target state, feedback counters, queued tasks), as in a Redis
restart without persistence. Every target starts cold again, so the ten minutes after the wipe
are reported on their own and held to a cold start's bounds (``pacing.quality.run_report``):
the ceiling in both 5-minute windows, the settled band from the tenth minute after the wipe.

Beside the figures, per minute: the publishes the simulator accepted, the cycles of the
``cycle_events`` stream (status, latency), overruns, targets in cold start in the last cycle,
visitors waiting and invitations in flight, the load average. Logs stay in a temporary
directory whose path is printed, with a count of the WARNING/ERROR lines of the nodes, the
simulator and the exporter. ``--json`` writes everything, the readings too (per target, the
fields ``pacing.quality`` reads), so other classes can be computed later. ``--minute-seconds``
shortens the reporting period (the test runs the whole machinery in seconds). Exit status 0
whatever the figures (this is a measurement), 1 if the stack failed, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, cast

import orjson
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks._stack, tests/

from benchmarks._stack import code_version, log_problems
from pacing import quality
from pacing.cli.localstack import LocalStack, Process, redis_answers, start_local_stack, wait_until
from pacing.cluster.keys import Keys
from pacing.cluster.status import cluster_status
from pacing.domain import Objective
from pacing.history import repository
from pacing.settings import ENV_PREFIX, Settings, load_settings
from pacing.simulator import SimulatorConfig
from tests.reliability.harness import free_port, live_members

#: A reading is requested this long after its time, so that the simulator's step (0.1 s) at
#: that time is due when the request arrives and the reading's generated_at is that time.
READ_LAG_SECONDS = 0.02
#: The simulator answers 1,000 targets' metrics in a few ms; a machine busy with other test
#: runs may take seconds, and a benchmark should wait rather than fail.
READ_TIMEOUT_SECONDS = 60.0
LOG_PATTERNS = ("node-*.log", "simulator.log", "exporter.log")
WIPE_MARKER = "live-benchmark:wipe-marker"  # written before the wipe; must be gone after it
_FLOWER_PASSWORD = re.compile(r"(password )\S+?(?=\))")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SimulatorConfig()
    parser.add_argument("--targets", type=int, default=defaults.targets, help="like pacing up")
    parser.add_argument("--minutes", type=int, default=20, help="minutes measured")
    parser.add_argument("--nodes", type=int, default=2, help="worker + beat pairs, like pacing up")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the simulator's world")
    parser.add_argument("--wipe-at", type=int, help="restart Redis, data lost, after this minute")
    parser.add_argument(
        "--minute-seconds",
        type=float,
        default=60.0,
        help="length of a reporting period in seconds (shorter for tests)",
    )
    parser.add_argument("--json", type=Path, help="write the whole report here")
    args = parser.parse_args(argv)
    if args.targets < 1 or args.minutes < 1 or not 1 <= args.nodes <= 8:
        parser.error("need --targets >= 1, --minutes >= 1 and 1 <= --nodes <= 8")
    if args.minute_seconds < 1:
        parser.error("--minute-seconds must be at least 1")
    if args.wipe_at is not None and not 1 <= args.wipe_at < args.minutes:
        parser.error("--wipe-at must be a minute after the first and before the last")
    return args


# --- the stack --------------------------------------------------------------------------------


@dataclass
class LiveStack:
    """The processes of one ``pacing up``, a Redis client on its Redis and the simulator's URL."""

    stack: LocalStack
    settings: Settings
    simulator_url: str
    client: redis.Redis
    keys: Keys
    #: process groups of every process started, a restarted Redis too: checked at the end
    pgids: set[int] = field(default_factory=set)

    def process(self, name: str) -> Process:
        for process in self.stack.processes:
            if process.name == name:
                return process
        raise RuntimeError(f"The stack has no {name} process.")

    def stop(self) -> int:
        """Stop everything; returns how many processes of its groups are still alive."""
        self.client.close()
        self.stack.stop()
        return len(live_members(self.pgids))


def start_stack(workdir: Path, args: argparse.Namespace, echo: Callable[[str], None]) -> LiveStack:
    """``pacing up``'s processes on free loopback ports, on default settings otherwise."""
    simulator = f"http://127.0.0.1:{free_port()}"
    values = {
        "environment": "development",
        "broker_url": f"redis://127.0.0.1:{free_port()}/0",  # nothing there: it starts one
        "database_url": f"sqlite:///{workdir / 'history.db'}",
        "stat_server_primary_url": f"{simulator}/statserver/primary",
        "stat_server_backup_url": f"{simulator}/statserver/backup",
        "engagement_url": f"{simulator}/engagement",
    }
    # The processes inherit this environment: exactly these settings, none of the caller's.
    for name in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
        del os.environ[name]
    os.environ.update({f"{ENV_PREFIX}{name.upper()}": value for name, value in values.items()})
    settings = load_settings()
    stack = start_local_stack(
        settings,
        targets=args.targets,
        nodes=args.nodes,
        flower_port=free_port(),
        metrics_port=free_port(),
        workdir=workdir,
        echo=echo,
        seed=args.seed,
    )
    live = LiveStack(
        stack=stack,
        settings=settings,
        simulator_url=simulator,
        client=redis.Redis.from_url(settings.broker_url, socket_timeout=10),
        keys=Keys(settings.key_prefix),
        pgids={process.popen.pid for process in stack.processes},
    )
    try:
        live.process("redis")  # not some other Redis that took the free port meanwhile
    except RuntimeError:
        live.stop()
        raise
    return live


def target_goals(settings: Settings) -> dict[str, float]:
    """Each enabled target's abandonment goal as a fraction, from the history's configuration."""
    engine = repository.create_history_engine(settings.database_url)
    try:
        configs = repository.list_targets(engine, enabled_only=True)
    finally:
        engine.dispose()
    others = [c.target_id for c in configs if c.objective is not Objective.ABANDONMENT_RATE]
    if others:
        raise RuntimeError(f"{len(others)} targets have no abandonment goal, e.g. {others[0]}.")
    return {config.target_id: config.goal_percent / 100 for config in configs}


def wipe_redis(live: LiveStack) -> dict[str, Any]:
    """Restart the stack's redis-server with nothing kept: every key is gone afterwards."""
    process = live.process("redis")
    keys_before = int(cast(int, live.client.dbsize()))
    live.client.set(WIPE_MARKER, "1")
    argv = [str(arg) for arg in cast(Sequence[Any], process.popen.args)]
    stopped_at = time.time()
    live.stack.stop_process(process)
    # started with --save "" and --appendonly no, Redis writes nothing; anything found is
    # removed (so the restart is empty whatever happened) and reported
    data_dir = live.stack.workdir / "redis"
    leftovers = sorted(path.name for path in data_dir.iterdir())
    for name in leftovers:
        (data_dir / name).unlink()
    restarted = live.stack.spawn("redis", argv, os.environ)
    live.pgids.add(restarted.popen.pid)
    wait_until(
        lambda: redis_answers(live.settings.broker_url), timeout=30, what="Redis after the wipe"
    )
    answered_at = time.time()
    live.client.connection_pool.disconnect()  # the old server's connections are dead
    return {
        "stopped_at": stopped_at,
        "answered_at": answered_at,
        "down_seconds": round(answered_at - stopped_at, 3),
        "keys_before": keys_before,
        "keys_right_after": int(cast(int, live.client.dbsize())),
        "marker_survived": bool(live.client.exists(WIPE_MARKER)),
        "files_left_in_data_dir": leftovers,
        "pid_before": process.popen.pid,
        "pid_after": restarted.popen.pid,
    }


# --- readings ---------------------------------------------------------------------------------


def read_metrics(session: requests.Session, live: LiveStack) -> dict[str, Any]:
    response = session.get(
        f"{live.simulator_url}/sim/metrics",
        params={"per_target": "1"},
        timeout=READ_TIMEOUT_SECONDS,
    )
    response.raise_for_status()
    return cast(dict[str, Any], response.json())


def trimmed(reading: Mapping[str, Any]) -> dict[str, Any]:
    """A reading with, per target, only what ``pacing.quality`` reads (for the JSON file)."""
    return {
        "generated_at": reading["generated_at"],
        "window_seconds": reading["window_seconds"],
        "skipped_seconds": reading["skipped_seconds"],
        "overall": reading["overall"],
        "fence": reading["fence"],
        "targets": {
            target_id: {
                "slots": block["slots"],
                "accepted": block["accepted"],
                "abandoned": block["abandoned"],
                "busy_slot_seconds": block["busy_slot_seconds"],
                "offers": {"sent": block["offers"]["sent"]},
            }
            for target_id, block in reading["targets"].items()
        },
    }


@dataclass
class CycleLog:
    """What the pipeline reported through its ``cycle_events`` stream since the last look."""

    last_id: str = "-"

    def read(self, live: LiveStack) -> dict[str, Any]:
        try:
            start = self.last_id if self.last_id == "-" else f"({self.last_id}"
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                live.client.xrange(live.keys.cycle_events, min=start),
            )
            status = cluster_status(live.client, live.keys, now=time.time())
        except redis.RedisError as error:
            return {"error": str(error)}
        if entries:
            self.last_id = entries[-1][0].decode()
        events = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
        latencies = sorted(float(event["latency_ms"]) for event in events)
        last_reasons = orjson.loads(events[-1]["reasons"]) if events else {}
        return {
            "cycles": len(events),
            "statuses": dict(Counter(event["status"] for event in events)),
            "latency_ms_median": round(statistics.median(latencies), 1) if latencies else None,
            "latency_ms_max": round(latencies[-1], 1) if latencies else None,
            "cold_start_in_last_cycle": last_reasons.get("cold_start"),
            "targets_in_last_cycle": int(events[-1]["targets"]) if events else None,
            "overruns_total": status["overruns"],
            "leader": status["leader"],
            "epoch": status["epoch"],
        }

    def restart(self) -> None:
        """The stream went with a wiped Redis: read the new one from its start."""
        self.last_id = "-"


def minute_notes(
    reading: Mapping[str, Any], previous: Mapping[str, Any], cycles: Mapping[str, Any]
) -> dict[str, Any]:
    """Per-minute figures beside the quality: publishes, cycles, queue, load."""
    fence, fence_before = reading["fence"], previous["fence"]
    rejected = ("rejected_stale", "rejected_base_mismatch", "rejected_invalid")
    return {
        "publishes": fence["accepted_publishes"] - fence_before["accepted_publishes"],
        "publishes_rejected": sum(fence[key] - fence_before[key] for key in rejected),
        "simulator_skipped_seconds": round(
            reading["skipped_seconds"] - previous["skipped_seconds"], 3
        ),
        "waiting": reading["overall"]["waiting"],
        "in_flight": reading["overall"]["offers"]["pending"],
        "load_average": round(os.getloadavg()[0], 2),
        **cycles,
    }


def wait_until_time(due: float, live: LiveStack) -> None:
    """Sleep until the wall clock reaches ``due``; fail if a process of the stack stopped."""
    while (remaining := due - time.time()) > 0:
        dead = live.stack.dead()
        if dead:
            names = ", ".join(process.name for process in dead)
            raise RuntimeError(f"Stopped unexpectedly: {names}; see {dead[0].log_path}.")
        time.sleep(min(1.0, remaining))


@dataclass
class Measurement:
    readings: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)  # reading time - scheduled time
    notes: list[dict[str, Any]] = field(default_factory=list)
    wipe: dict[str, Any] | None = None


def measure(
    live: LiveStack,
    args: argparse.Namespace,
    goals: Mapping[str, float],
    echo: Callable[[str], None],
) -> Measurement:
    result = Measurement()
    cycles = CycleLog()
    with requests.Session() as session:
        first = read_metrics(session, live)
        start = float(first["generated_at"])
        result.readings.append(first)
        result.offsets.append(0.0)
        cycles.read(live)
        for minute in range(1, args.minutes + 1):
            due = start + minute * args.minute_seconds
            wait_until_time(due + READ_LAG_SECONDS, live)
            reading = read_metrics(session, live)
            result.offsets.append(round(float(reading["generated_at"]) - due, 3))
            previous = result.readings[-1]
            result.readings.append(reading)
            notes = minute_notes(reading, previous, cycles.read(live))
            result.notes.append(notes)
            figures = quality.window(previous, reading, goals, first=minute)
            echo(progress_line(minute, args.minutes, figures, notes))
            if minute == args.wipe_at:
                result.wipe = {"minute": minute, **wipe_redis(live)}
                cycles.restart()
                echo(
                    f"  Redis wiped after minute {minute}: restarted in "
                    f"{result.wipe['down_seconds']:.1f} s, {result.wipe['keys_before']} keys "
                    "lost"
                )
    return result


def progress_line(
    minute: int, minutes: int, figures: quality.Window, notes: Mapping[str, Any]
) -> str:
    parts = []
    for name in (quality.ALL, quality.LARGE):
        c = figures.classes[name]
        parts.append(
            f"{name}: invited {c.invitations:,} accepted {c.accepted:,} abandonment "
            f"{_percent(c.abandonment)} occupancy {_percent(c.occupancy, 1)}"
        )
    cold = notes.get("cold_start_in_last_cycle")
    return (
        f"minute {minute:>2}/{minutes}  "
        + " | ".join(parts)
        + f" | publishes {notes['publishes']}, cold start {'-' if cold is None else cold}, "
        f"load {notes['load_average']}"
    )


# --- the report -------------------------------------------------------------------------------


def text_report(
    args: argparse.Namespace, header: Mapping[str, Any], report: Mapping[str, Any]
) -> str:
    wipe = "" if args.wipe_at is None else f"; Redis wiped after minute {args.wipe_at}"
    minute = "" if args.minute_seconds == 60 else f" (a 'minute' is {args.minute_seconds:g} s)"
    first_publish = header["first_publish_after_seconds"]
    return quality.format_run_report(
        report,
        heading=[
            f"Live quality: {args.targets:,} targets, {args.nodes} node(s), seed {args.seed}, "
            f"{args.minutes} minutes from an empty Redis{wipe}{minute}",
            f"code {header['code']}; started {header['started']}; first publish accepted "
            + ("never" if first_publish is None else f"{first_publish:.1f} s after the start"),
            f"load average (1, 5, 15 min) at start {header['load_average_at_start']}, "
            f"at end {header['load_average_at_end']} ({header['cores']} cores)",
        ],
    )


def notes_table(measurement: Measurement) -> str:
    """Per minute: publishes, cycles, overruns, cold start, queue, load, the reading's lateness."""
    header = [
        "minute",
        "read late s",
        "publishes",
        "rejected",
        "cycles",
        "latency ms median/max",
        "overruns",
        "cold start",
        "waiting",
        "in flight",
        "load",
        "cycle statuses",
    ]
    rows = []
    for minute, (offset, notes) in enumerate(
        zip(measurement.offsets[1:], measurement.notes, strict=True), 1
    ):
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(notes.get("statuses", {}).items()))
        rows.append(
            [
                str(minute),
                f"{offset:.3f}",
                str(notes["publishes"]),
                str(notes["publishes_rejected"]),
                _value(notes.get("cycles")),
                f"{_value(notes.get('latency_ms_median'))}/{_value(notes.get('latency_ms_max'))}",
                _value(notes.get("overruns_total")),
                _value(notes.get("cold_start_in_last_cycle")),
                f"{notes['waiting']:,}",
                f"{notes['in_flight']:,}",
                str(notes["load_average"]),
                statuses or notes.get("error", "-"),
            ]
        )
    table = quality.format_table(header, rows, ">>>>>>>>>>><")
    return f"Per minute, beside the figures (overruns: since the start or the wipe)\n{table}"


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f} %"


def _value(value: object) -> str:
    return "-" if value is None else str(value)


def first_publish(live: LiveStack, start: float) -> tuple[float | None, int]:
    """Seconds from the start to the first publish the simulator accepted, and how many."""
    response = requests.get(
        f"{live.simulator_url}/sim/published", params={"after": "-1"}, timeout=60
    )
    response.raise_for_status()
    published = response.json()["published"]
    if not published:
        return None, 0
    return round(float(published[0]["received_at"]) - start, 3), len(published)


# --- main -------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], str]:
    echo = _echo
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    code = code_version()  # what the processes load now; the tree may change during the run
    live = start_stack(workdir, args, echo)
    processes_left: int | None = None
    try:
        goals = target_goals(live.settings)
        echo(f"Measuring {args.minutes} minutes of {args.minute_seconds:g} s; Ctrl-C stops.")
        measurement = measure(live, args, goals, echo)
        start = float(measurement.readings[0]["generated_at"])
        first_after, publishes = first_publish(live, start)
        load_at_end = [round(x, 2) for x in os.getloadavg()]
    finally:
        processes_left = live.stop()
    logs = workdir / "logs"
    header = {
        "code": code,
        "started": datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds"),
        "start_generated_at": start,
        "first_publish_after_seconds": first_after,
        "publishes_accepted": publishes,
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_at_end,
        "cores": os.cpu_count(),
    }
    figures = quality.run_report(measurement.readings, goals, wipe_at=args.wipe_at)
    text = "\n\n".join(
        [
            text_report(args, header, figures),
            notes_table(measurement),
            _log_summary(logs),
            f"Logs: {logs}\nProcesses left after stopping: {processes_left}",
        ]
    )
    report = {
        "config": {
            "targets": args.targets,
            "minutes": args.minutes,
            "nodes": args.nodes,
            "seed": args.seed,
            "minute_seconds": args.minute_seconds,
            "wipe_at": args.wipe_at,
            "refresh_period_seconds": live.settings.refresh_period_seconds,
        },
        **header,
        "goals": sorted(set(goals.values())),
        **quality.run_report_json(figures),
        "wipe": measurement.wipe,
        "reading_offsets_seconds": measurement.offsets,
        "notes": measurement.notes,
        "log_problems": log_problems(logs, LOG_PATTERNS),
        "logs": str(logs),
        "processes_left": processes_left,
        "readings": [trimmed(reading) for reading in measurement.readings],
    }
    return report, text


def _log_summary(logs: Path) -> str:
    problems = log_problems(logs, LOG_PATTERNS)
    if not problems:
        return (
            "Log problems: no WARNING, ERROR or Traceback line in the nodes, simulator, exporter."
        )
    lines = ["Log problems (WARNING, ERROR or Traceback lines):"]
    for name, found in problems.items():
        lines.append(f"  {name}: {found['lines']}, first: {found['first'][0][:160]}")
    return "\n".join(lines)


def _echo(line: str) -> None:
    # Flower's password of this run has no business in a report that is kept
    print(_FLOWER_PASSWORD.sub(r"\1…", line), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="  this process: %(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM unwinds like Ctrl-C: every process of the stack is stopped; and Ctrl-C works
    # when started in the background too, where the shell starts us with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="pacing-live-"))
    print(f"Logs: {workdir / 'logs'}", flush=True)
    try:
        report, text = run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; the stack was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"failed: {error}", file=sys.stderr)
        return 1
    print()
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # not indented: the readings hold every target (1,000 targets, 20 minutes: 2.5 MB)
        args.json.write_bytes(orjson.dumps(report))
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
