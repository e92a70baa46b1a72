"""Read one data file into rows, and fingerprint it. Shared by the data-dir source."""

from __future__ import annotations

import csv
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from cfbench.errors import CfbenchError
from cfbench.fsutil import escapes

Row = dict[str, Any]
MMLU_CSV_COLUMNS = ("question", "A", "B", "C", "D", "answer")


def inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, refused in one line when ``rel`` would leave ``root`` (see :func:`escapes`)."""
    if escapes(rel):
        raise CfbenchError(
            f"{what}: path {rel!r} leaves {root}; a task's data paths must be relative and stay inside the "
            "data folder (no absolute path, no '..'): move the file into it and name it from there"
        )
    return root / rel


def read_rows(path: Path, fmt: str) -> list[Row]:
    """Rows of a jsonl / json (array or json-lines) / headerless MMLU csv / parquet / arrow folder."""
    try:
        if fmt == "jsonl":
            return _read_jsonl(path)
        if fmt == "json":
            text = path.read_text(encoding="utf-8")
            stripped = text.lstrip()
            if stripped.startswith("["):
                return list(json.loads(text))
            return _read_jsonl(path)  # FewCLUE's *.json files are JSON lines
        if fmt == "csv":
            with path.open(encoding="utf-8", newline="") as f:
                rows = []
                for lineno, rec in enumerate(csv.reader(f), 1):
                    if not rec:
                        continue
                    if len(rec) != len(MMLU_CSV_COLUMNS):
                        raise CfbenchError(
                            f"{path} line {lineno}: {len(rec)} columns, expected 6 (question,A,B,C,D,answer) "
                            "as in OpenCompass's mmlu csv files; fix that row"
                        )
                    rows.append(dict(zip(MMLU_CSV_COLUMNS, rec, strict=True)))
                return rows
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if fmt == "arrow_dir":
            import datasets

            ds = datasets.load_from_disk(str(path))
            return ds.to_list()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise CfbenchError(f"cannot parse {path} as {fmt}: {exc}; fix or remove the file") from exc
    raise CfbenchError(f"unsupported data file format {fmt!r} for {path}")


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CfbenchError(
                        f"{path} line {lineno}: invalid JSON ({exc.msg}); fix or remove that line"
                    ) from exc
    return rows


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_paths(paths: list[Path]) -> str:
    """Content hash over files (folders: every file inside), independent of where they live."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in files:
            st = q.stat()
            h.update(q.name.encode())
            h.update(_file_digest(str(q), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()[:16]
