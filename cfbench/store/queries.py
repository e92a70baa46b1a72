"""Read-side queries over the store that more than one layer needs (items of a run as it scored them).

Storage only: no statistics, no rendering. :func:`run_items` lives here rather than in ``compare``
because the drift metrics (layer 5) read the same rows and may not import the comparison (layer 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.store.schema import RunRecord
from cfbench.store.store import ResultStore


@dataclass(frozen=True)
class ItemShortfall:
    """A run whose task score was computed from ``expected`` items of which only ``stored`` are left.

    Each task score row records how many items it was computed from (``n_items``) and under which
    cache key they are stored; a deleted or moved items part shows up as fewer rows than that.
    """

    run: str
    run_id: str
    source: str
    task: str
    stored: int
    expected: int
    cache_key: str

    def message(self, root: Path) -> str:
        """One line: what is missing, where, and the fix."""
        redo = (
            "rerun the `cfbench eval` that made it (same options; stored items are reused, only the missing "
            "ones are scored)"
            if self.source == "cfbench"
            else "import its results file again (`cfbench import`)"
        )
        return (
            f"results store {root}: run {self.run!r} ({self.run_id[:8]}) scored {self.expected} {self.task} items "
            f"but only {self.stored} are stored (cache key {self.cache_key[:16]}): an items part under "
            f"{Path(root) / 'items'} was deleted or moved; restore it (`cfbench store check --fix` puts bad parts "
            f"in {Path(root) / '_quarantine'}), or {redo}"
        )


def expected_items(scores: pd.DataFrame) -> dict[str, tuple[int, str]]:
    """task -> (items its score was computed from, their cache key), from one run's task score rows.

    Only whole-task rows (no subset) that name their items' cache key count: a task-level import
    (an OpenCompass summary) has no items to miss.
    """
    if scores.empty:
        return {}
    rows = scores[scores["subset"].isna() & scores["cache_key"].notna() & scores["n_items"].notna()]
    return {str(t): (int(g["n_items"].max()), str(g["cache_key"].iloc[0])) for t, g in rows.groupby("task")}


def select_run_items(items: pd.DataFrame, record: RunRecord) -> pd.DataFrame:
    """The rows of ``items`` that ``record`` covers: a ``--limit`` run exactly the documents it selected."""
    if items.empty:
        return items
    selection = (record.extra or {}).get("doc_ids") or {}
    if selection:  # a --limit run covers exactly these documents, even if the cache holds more
        keep = pd.Series(False, index=items.index)
        for task, ids in selection.items():
            keep |= (items["task"] == task) & items["doc_id"].isin(ids)
        items = items[keep]
    return items.drop_duplicates(["task", "doc_id"], keep="last")


def item_shortfalls(record: RunRecord, scores: pd.DataFrame, items: pd.DataFrame,
                    tasks: Sequence[str] | None = None) -> list[ItemShortfall]:  # fmt: skip
    """The tasks of ``record`` (those in ``tasks``) with fewer stored items than their score was computed from.

    ``items`` are the run's rows as :func:`select_run_items` gives them.
    """
    have = items.groupby("task")["doc_id"].nunique().to_dict() if not items.empty else {}
    out = []
    for task, (n, key) in expected_items(scores).items():
        if tasks is not None and task not in tasks:
            continue
        stored = int(have.get(task, 0))
        if stored < n:
            out.append(ItemShortfall(record.name, record.run_id, record.source, task, stored, n, key))
    return out


def run_items(store: ResultStore, record: RunRecord, tasks: Sequence[str]) -> pd.DataFrame:
    """All stored item columns of the items ``record`` scored on ``tasks``, one row per (task, doc_id).

    A run scored with ``--limit N`` contributes exactly the documents it selected, even when the
    shared item cache holds more. A task with fewer stored items than its score was computed from
    (an items part deleted or moved) is refused in one line: compared silently, its Δ, category and
    AVG would turn into n/a or rest on a subset.
    """
    items = select_run_items(store.items(run_ids=[record.run_id], tasks=list(tasks)), record)
    short = item_shortfalls(record, store.task_scores(run_ids=[record.run_id]), items, tasks)
    if short:
        raise CfbenchError(short[0].message(store.root))
    return items
