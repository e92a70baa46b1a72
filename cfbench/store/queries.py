"""Read-side queries over the store that more than one layer needs (items of a run as it scored them).

Storage only: no statistics, no rendering. :func:`run_items` lives here rather than in ``compare``
because the drift metrics (layer 5) read the same rows and may not import the comparison (layer 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cfbench.store.schema import RunRecord
from cfbench.store.store import ResultStore


def run_items(store: ResultStore, record: RunRecord, tasks: Sequence[str]) -> pd.DataFrame:
    """All stored item columns of the items ``record`` scored on ``tasks``, one row per (task, doc_id).

    A run scored with ``--limit N`` contributes exactly the documents it selected, even when the
    shared item cache holds more.
    """
    items = store.items(run_ids=[record.run_id], tasks=list(tasks))
    if items.empty:
        return items
    selection = (record.extra or {}).get("doc_ids") or {}
    if selection:  # a --limit run covers exactly these documents, even if the cache holds more
        keep = pd.Series(False, index=items.index)
        for task, ids in selection.items():
            keep |= (items["task"] == task) & items["doc_id"].isin(ids)
        items = items[keep]
    return items.drop_duplicates(["task", "doc_id"], keep="last")
