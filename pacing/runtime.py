"""Garbage-collector settings of the service's long-running processes.

CPython's cyclic collector walks every container object it tracks. A pacing process holds a few
hundred thousand long-lived ones (Celery, kombu, SQLAlchemy, numpy and scipy modules; the
simulator's world) and allocates tens of thousands of short-lived ones per shard (the decoded
statistics rows, the feedback objects), so with the default thresholds (700, 10, 10) a cycle
paid for many full collections that walked the whole heap, with the cycle's own large lists and
dicts on top: measured in one process running the whole cycle, 3.9 ms of collection per cycle at
10,000 targets but 176 ms at 100,000 (10 % of the cycle), a cost that grows with the square of
the targets. After :func:`settle_heap` it was 1.3 ms and 34 ms.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLDS", "settle_heap"]

#: A young-generation collection every 10,000 net allocations instead of 700: most of a shard's
#: objects die before they are ever traversed, and few reach the old generations; the older
#: generations are collected every 20 collections of the younger one instead of 10.
GC_THRESHOLDS: Final = (10_000, 20, 20)


def settle_heap() -> None:
    """Collect once, move every object alive now out of the collector's reach for good, and
    collect less often from here on.

    Call it once the process has loaded what it keeps for its lifetime (a worker after start-up
    and again in each pool process after the fork, the simulator after building its world), and
    only in a process of its own: frozen objects are never collected, so a test process that
    freezes its fixtures would keep any of them that later became cyclic garbage. Freezing
    before a fork also keeps the pool processes from writing to (and so copying) the memory
    pages they share with their parent.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
