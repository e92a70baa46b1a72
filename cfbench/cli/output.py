"""``--format``: one meaning on every command that prints results.

* ``table`` — the human view (the default): what the command has always printed;
* ``json`` — one strict JSON document on stdout (no NaN or Infinity: a missing or non-finite number is
  ``null``), so ``json.loads`` / ``jq`` read it;
* ``csv`` — tidy rows with a header line, one observation per row.

In the machine formats stdout holds only the document; notes ("wrote …", "N items scored now") go to
stderr. Commands with more human views (``compare``: markdown, html; ``leaderboard``: markdown, html,
parquet) add them to these three.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cfbench.csvsafe import lf_rows, safe_cell


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


Format = Annotated[OutputFormat, typer.Option("--format", help="table (for people), json or csv (for tools).")]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (and pandas' NA) replaced by None, containers walked."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is not None and type(value).__name__ in ("NAType", "NaTType"):
        return None
    if hasattr(value, "item") and callable(value.item) and type(value).__module__ == "numpy":
        return finite(value.item())  # numpy scalars
    if hasattr(value, "isoformat"):
        return value.isoformat()  # datetimes, pandas Timestamps
    return value


def to_json(obj: Any, *, indent: int = 2, ensure_ascii: bool = True) -> str:
    """Strict JSON (``allow_nan=False`` after :func:`finite`)."""
    return json.dumps(finite(obj), indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV with a header (``columns``, else the keys of the rows in first-seen order).

    Missing and non-finite numbers are empty cells; lists are joined with ``;``. Header and text cells
    that a spreadsheet would evaluate get a leading ``'`` (:mod:`cfbench.csvsafe`).
    """
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\r\n")
    writer.writerow({c: safe_cell(c) for c in cols})
    for row in rows:
        clean = finite(dict(row))
        writer.writerow({k: safe_cell(";".join(map(str, v)) if isinstance(v, list) else v) for k, v in clean.items()})
    return lf_rows(buf.getvalue())


def emit(text: str, out: Path | None = None) -> None:
    """``text`` to stdout (newline-terminated), or atomically to ``out``."""
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
    else:
        write_atomic(out, text)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a reader never sees half a file (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def note(text: str, fmt: OutputFormat) -> None:
    """A line for people: on stdout with the table (as always), on stderr beside a machine format."""
    typer.echo(text, err=fmt is not OutputFormat.table)
