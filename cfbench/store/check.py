"""Verify the Parquet parts of a results store, and move unreadable ones aside.

A part can go bad outside cfbench's control (a disk filling up under another tool, a copy that
stopped half-way, a file dropped into the folder by hand). cfbench's own writes are atomic, so a bad
part is never half of a good one: moving it aside loses only that part's rows, which ``cfbench
eval`` re-scores on the next run (items are cached by key, runs can be re-created).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cfbench.fsutil import dead_tmp, remove_dead_tmp
from cfbench.store.parts import BadPart, part_problem, repair_hint
from cfbench.store.queries import ItemShortfall, item_shortfalls, select_run_items
from cfbench.store.schema import TABLES
from cfbench.store.store import ResultStore

QUARANTINE = "_quarantine"


def check_store(root: Path, tables: list[str] | None = None) -> list[BadPart]:
    """Every bad part of the store under ``root`` (all tables, or ``tables``)."""
    bad = []
    for name in tables or list(TABLES):
        folder = Path(root) / name
        if not folder.is_dir():
            continue
        schema = TABLES[name][0]
        for part in sorted(folder.glob("part-*.parquet")):
            problem = part_problem(part, schema)
            if problem:
                bad.append(BadPart(name, part, problem))
    return bad


def missing_items(root: Path) -> list[ItemShortfall]:
    """Every (run, task) whose score was computed from more items than the store still holds.

    A deleted items part leaves every remaining part readable, so :func:`check_store` cannot see it;
    the task score rows can, since each records its item count and cache key. Call it on a store
    whose parts are all readable (after :func:`check_store`, or :func:`move_aside`).
    """
    store = ResultStore(root)
    scores = store.task_scores()
    keyed = scores[scores["cache_key"].notna()] if not scores.empty else scores
    if keyed.empty:
        return []
    items = store.item_keys(sorted(set(keyed["cache_key"])))
    runs = store.runs()
    out: list[ItemShortfall] = []
    for run_id, run_scores in keyed.groupby("run_id"):
        record = store.match_run(str(run_id), runs)
        if record is None:  # scores without their run row: a run still being written
            continue
        mine = select_run_items(items[items["cache_key"].isin(set(run_scores["cache_key"]))], record)
        out += item_shortfalls(record, run_scores, mine)
    return out


def dead_temps(root: Path) -> list[Path]:
    """Temp files and folders in the store that writers killed mid-write left (their pid is gone)."""
    folders = [Path(root), *(Path(root) / name for name in TABLES)]
    return [p for folder in folders for p in dead_tmp(folder)]


def remove_dead_temps(root: Path) -> list[Path]:
    """Delete :func:`dead_temps` (a read-only store is refused, like every change to it)."""
    ResultStore(root).require_writable()
    return [p for folder in [Path(root), *(Path(root) / name for name in TABLES)] for p in remove_dead_tmp(folder)]


def move_aside(root: Path, bad: list[BadPart]) -> list[Path]:
    """Move bad parts to ``ROOT/_quarantine/TABLE/`` (never deleted: a person may want to look).

    A read-only store (the paper's reference runs) is refused: its parts are rebuilt, not moved.
    """
    ResultStore(root).require_writable()
    moved = []
    for b in bad:
        dest_dir = Path(root) / QUARANTINE / b.table
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / b.path.name
        shutil.move(str(b.path), dest)
        moved.append(dest)
    return moved


__all__ = ["QUARANTINE", "BadPart", "ItemShortfall", "check_store", "dead_temps", "missing_items", "move_aside",
           "part_problem", "remove_dead_temps", "repair_hint"]
