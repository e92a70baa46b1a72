"""One Parquet part of a results-store table: is it readable, and what to tell a user when it is not.

The lowest piece of the store: :mod:`cfbench.store.store` checks parts before reading them and
:mod:`cfbench.store.check` scans and quarantines them, so both import this and neither the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_OK: dict[tuple[str, int, int], None] = {}  # parts already verified, by (path, size, mtime)


@dataclass(frozen=True)
class BadPart:
    table: str
    path: Path
    problem: str


def part_problem(path: Path, schema: pa.Schema) -> str | None:
    """Why ``path`` is not a readable part of a table with ``schema``; None when it is."""
    if path.is_symlink() and not path.exists():
        return f"a symlink to {os.readlink(path)}, which does not exist"
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


def repair_hint(root: Path) -> str:
    return f"run `cfbench store check --results {os.fspath(root)} --fix` to move bad parts aside"
