"""The pacing history database: models, migrations helpers and the repository functions.

Import from here; the submodules are implementation detail::

    from pacing.history import create_history_engine, record_cycle, CycleRecord

Every function takes an :class:`~sqlalchemy.engine.Engine` and plain values and runs in its own
transaction, so a Celery task can call it and retry it as a whole; an unreachable database
raises :class:`pacing.errors.HistoryUnavailable`. The submodules, in the order of the flow:
``records`` (the values), ``engine`` (connection set-up and error handling), ``writing`` (a
cycle, a leadership change), ``targets`` (target configuration), ``reading`` (the queries) and
``maintenance`` (the purge).
"""

from pacing.history.engine import (
    create_history_engine,
    is_unavailable_error,
    safe_url,
    unavailable,
)
from pacing.history.maintenance import purge_history
from pacing.history.reading import (
    channel_totals,
    cycle_starts,
    last_cycles,
    leadership_changes,
    target_history,
)
from pacing.history.records import (
    ChannelPoint,
    ChannelTotal,
    CycleRecord,
    CycleSummary,
    DecisionColumns,
    DecisionRow,
    HistoryPoint,
    LeadershipChange,
)
from pacing.history.targets import (
    list_targets,
    set_targets_enabled,
    targets_version,
    upsert_targets,
)
from pacing.history.writing import record_cycle, record_leadership_change

__all__ = [
    "ChannelPoint",
    "ChannelTotal",
    "CycleRecord",
    "CycleSummary",
    "DecisionColumns",
    "DecisionRow",
    "HistoryPoint",
    "LeadershipChange",
    "channel_totals",
    "create_history_engine",
    "cycle_starts",
    "is_unavailable_error",
    "last_cycles",
    "leadership_changes",
    "list_targets",
    "purge_history",
    "record_cycle",
    "record_leadership_change",
    "safe_url",
    "set_targets_enabled",
    "target_history",
    "targets_version",
    "unavailable",
    "upsert_targets",
]
