"""A whole cycle in one process, without a broker: the stages of :mod:`pacing.cycle` called one
after another, as the Celery tasks call them (the benchmark's single-process baseline and the
virtual-time evaluation's service).
"""

from __future__ import annotations

from collections.abc import Callable

from pacing.cycle.audit import forget_audit, write_audit
from pacing.cycle.plan import plan_cycle
from pacing.cycle.presolve import goals_to_presolve, presolve_operating_points
from pacing.cycle.publish import publish_cycle
from pacing.cycle.shard import run_shard
from pacing.history import CycleRecord
from pacing.services import Services


def run_cycle_in_process(
    services: Services,
    *,
    node: str,
    before_stage: Callable[[str], None] | None = None,
    audit: bool = True,
) -> CycleRecord | None:
    """One whole cycle in this process, with the very functions the Celery tasks call.

    The benchmark's single-process baseline and the virtual-time evaluation's cycle: the same
    fetch, pacing, merge, fenced publish and audit write, one shard after another, without a
    broker. None when ``node`` does not lead or a cycle is still in flight.
    ``before_stage("shards")`` and ``before_stage("publish")`` are called as the stages start
    (the evaluation moves its clock there). ``audit=False`` drops the staged audit record
    instead of writing it (pacing never reads the history back).
    """
    plan = plan_cycle(services, node=node)
    if plan.context is None:
        return None
    if goals := goals_to_presolve(services, plan):  # pacing.refresh sends it as a task
        presolve_operating_points(services, goals)
    seq = plan.context.seq
    if before_stage is not None:
        before_stage("shards")
    results = [
        run_shard(services, seq=seq, shard=index, rows=digest).to_json()
        for index, digest in enumerate(plan.digests)
    ]
    if before_stage is not None:
        before_stage("publish")
    record = publish_cycle(services, results, plan.context)
    if audit:
        write_audit(services, record.seq)
    else:
        forget_audit(services, record.seq)
    return record
