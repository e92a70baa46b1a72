"""The results store (layer 2): runs, task scores and per-item results as Parquet tables, storage only.

May import tasks, data, models and the core; never report, metrics or comparison.

The results store: runs, task scores and per-item results as Parquet tables.

``ResultStore(root)`` appends and reads (storage only: the leaderboard pivot is :mod:`cfbench.report.leaderboard`).
The on-disk layout is documented in ``docs/results-schema.md``.
"""

from __future__ import annotations

from cfbench.store.schema import (
    ITEMS_SCHEMA,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    TASK_SCORES_SCHEMA,
    RunRecord,
    TaskScore,
)
from cfbench.store.store import DEFAULT_ROOT, ResultStore

__all__ = [
    "DEFAULT_ROOT",
    "ITEMS_SCHEMA",
    "RUNS_SCHEMA",
    "SCHEMA_VERSION",
    "TASK_SCORES_SCHEMA",
    "ResultStore",
    "RunRecord",
    "TaskScore",
]
