"""One pacing cycle, stage by stage, as plain functions (Celery only calls them).

``tasks/cycle.py`` wraps each stage in a task; the benchmark's single-process baseline and the
evaluation call the very same functions in a loop (:mod:`pacing.cycle.in_process`). Each stage
takes its clients and clock as arguments. The stages, in the order the tasks run them:

1. plan, ``pacing.refresh`` (:mod:`pacing.cycle.plan`): take or renew the lease and, leading,
   cut the enabled targets into shards (:mod:`pacing.cycle.split`, pure) parked in Redis;
2. presolve, ``pacing.presolve_operating_points`` beside the shards, when the leader is new or
   the targets changed (:mod:`pacing.cycle.presolve`);
3. shards, ``pacing.pace_shard`` × K (:mod:`pacing.cycle.shard`): statistics, state, ``pace()``,
   the shard's rows (:mod:`pacing.cycle.rows`, pure) parked in Redis;
4. publish, ``pacing.publish_cycle``: the shards joined (:mod:`pacing.cycle.merge`) and the
   body built full or as a delta (:mod:`pacing.cycle.payload`), both pure, then fenced, posted
   and the cycle's event written (:mod:`pacing.cycle.publish`);
5. audit, ``pacing.record_cycle`` (:mod:`pacing.cycle.audit`): the cycle's record, staged in
   Redis before the POST, written to the history database.

A module imports only those of earlier stages, except that the publish stages its audit record
with :mod:`pacing.cycle.audit`. Nothing is re-exported here: import each name from its module.
"""
