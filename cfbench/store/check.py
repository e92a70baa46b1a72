"""Verify the Parquet parts of a results store, and move unreadable ones aside.

A part can go bad outside cfbench's control (a disk filling up under another tool, a copy that
stopped half-way, a file dropped into the folder by hand). cfbench's own writes are atomic, so a bad
part is never half of a good one: moving it aside loses only that part's rows, which ``cfbench
eval`` re-scores on the next run (items are cached by key, runs can be re-created).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cfbench.store.schema import TABLES

QUARANTINE = "_quarantine"
_OK: dict[tuple[str, int, int], None] = {}  # parts already verified, by (path, size, mtime)


@dataclass(frozen=True)
class BadPart:
    table: str
    path: Path
    problem: str


def part_problem(path: Path, schema: pa.Schema) -> str | None:
    """Why ``path`` is not a readable part of a table with ``schema``; None when it is."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot stat ({exc.strerror})"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _OK:
        return None
    if st.st_size == 0:
        return "0-byte file"
    try:
        found = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        return f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})"
    for field in schema:
        if field.name not in found.names:
            if not field.nullable:
                return f"foreign schema: required column {field.name!r} is missing"
            continue
        have = found.field(field.name).type
        if have != field.type and not (pa.types.is_null(have)):
            return f"foreign schema: column {field.name!r} is {have}, expected {field.type}"
    _OK[key] = None
    return None


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


def move_aside(root: Path, bad: list[BadPart]) -> list[Path]:
    """Move bad parts to ``ROOT/_quarantine/TABLE/`` (never deleted: a person may want to look).

    A read-only store (the paper's reference runs) is refused: its parts are rebuilt, not moved.
    """
    from cfbench.store.store import ResultStore

    ResultStore(root).require_writable()
    moved = []
    for b in bad:
        dest_dir = Path(root) / QUARANTINE / b.table
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / b.path.name
        shutil.move(str(b.path), dest)
        moved.append(dest)
    return moved


def repair_hint(root: Path) -> str:
    return f"run `cfbench store check --results {os.fspath(root)} --fix` to move bad parts aside"
