"""The pacing history database: models, migrations helpers and the repository functions.

Import from here; the submodules are implementation detail::

    from pacing.history import create_history_engine, record_cycle, CycleRecord
"""

from pacing.history.repository import (
    ChannelPoint,
    ChannelTotal,
    CycleRecord,
    CycleSummary,
    DecisionColumns,
    DecisionRow,
    HistoryPoint,
    LeadershipChange,
    channel_totals,
    create_history_engine,
    last_cycles,
    leadership_changes,
    list_targets,
    purge_history,
    record_cycle,
    record_leadership_change,
    safe_url,
    set_targets_enabled,
    target_history,
    upsert_targets,
)

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
    "last_cycles",
    "leadership_changes",
    "list_targets",
    "purge_history",
    "record_cycle",
    "record_leadership_change",
    "safe_url",
    "set_targets_enabled",
    "target_history",
    "upsert_targets",
]
