"""The live benchmark's measurements, on the stack of ``benchmarks/_live_stack.py``.

:func:`measure` takes a reading of the simulator's ``/sim/metrics`` at the start and one a minute
later each time, and beside each minute's quality figures (``pacing.quality``) the publishes,
the cycles of the ``cycle_events`` stream (:class:`CycleLog`), the queue and the load
(:func:`minute_notes`); it wipes Redis after the minute ``--wipe-at`` names.
:func:`first_publish` tells when the simulator accepted the first publish.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis
import requests

from benchmarks._live_stack import LiveStack, wipe_redis
from pacing import quality
from pacing.cluster.status import cluster_status

#: A reading is requested this long after its time, so that the simulator's step (0.1 s) at
#: that time is due when the request arrives and the reading's generated_at is that time.
READ_LAG_SECONDS = 0.02
#: The simulator answers 1,000 targets' metrics in a few ms; a machine busy with other test
#: runs may take seconds, and a benchmark should wait rather than fail.
READ_TIMEOUT_SECONDS = 60.0


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


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f} %"


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
