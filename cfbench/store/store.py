"""The results store: three Parquet tables under one root folder, safe for concurrent writers.

Why no locks: every append writes one *new* part file under a temporary dot-name in the table's
folder and ``os.replace``-s it to its final ``part-*.parquet`` name. The rename is atomic, so a
reader sees either the whole part or nothing, and writers never touch each other's files. Readers
(and pandas/pyarrow discovery) skip names starting with ``.`` or ``_``, and temp names don't end
in ``.parquet``, so ``*.parquet`` globs (duckdb) skip them too. Because
:meth:`ResultStore.compact` briefly leaves a merged part next to the parts it replaces, readers
de-duplicate on each table's key columns; duplicates are identical by construction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cfbench.errors import CfbenchError
from cfbench.fsutil import check_room, remove_dead_tmp, tmp_prefix
from cfbench.store.parts import part_problem, repair_hint
from cfbench.store.schema import (
    ITEMS_SCHEMA,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    SOURCES,
    TABLES,
    TASK_SCORES_SCHEMA,
    RunRecord,
    TaskScore,
)

DEFAULT_ROOT = Path("results")
SCHEMA_FILE = "_schema.json"
_STALE_TMP_S = 3600.0
#: Free space a store must have before scoring starts: a full suite's items are a few MB.
MIN_FREE_BYTES = 16 * 1024 * 1024
_JSON_FIELDS = {"hparams": "hparams_json", "task_hashes": "task_hashes_json",
                "backend_settings": "backend_settings_json", "extra": "extra_json"}
_METRIC_COLUMNS = ("acc", "acc_norm", "mc1", "mc2")
_LIST_COLUMNS = ("logprobs", "n_tokens", "is_greedy")


def _int_mapper(arrow_type: pa.DataType) -> Any:
    """Read int64 as pandas' nullable Int64 so a null ``limit`` doesn't turn the column into floats."""
    return pd.Int64Dtype() if arrow_type == pa.int64() else None


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_int_mapper)


def _none_if_na(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class ResultStore:
    """Parquet results under ``root`` (``runs/``, ``task_scores/``, ``items/``, ``_schema.json``).

    Opening a store never creates anything; the folders appear on the first append. Reading an
    empty or missing store gives empty frames with the schema's columns.
    """

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise CfbenchError(f"--results {self.root} is a file, not a results folder: pass a folder path")
        self._check_schema_version()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    # ---------------------------------------------------------------- schema version

    def _check_schema_version(self) -> None:
        path = self.root / SCHEMA_FILE
        if not path.exists():
            return
        try:
            version = int(json.loads(path.read_text(encoding="utf-8"))["schema_version"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CfbenchError(
                f"{path} is unreadable ({exc}): restore it, or delete it and cfbench rewrites it "
                "on the next append"
            ) from exc
        if version > SCHEMA_VERSION:
            raise CfbenchError(
                f"results store {self.root} has schema version {version} but this cfbench reads up to "
                f"{SCHEMA_VERSION}: upgrade cfbench (pip install -U cfbench) or pass another --results DIR"
            )

    @property
    def read_only(self) -> str | None:
        """Why this store must not be changed (its ``_schema.json`` ``read_only`` note), or None.

        The paper's reference runs (cfbench.comparison.paper) are shipped as such a store: every write and
        every maintenance command that moves or deletes parts refuses it, so no command can alter
        the published numbers.
        """
        path = self.root / SCHEMA_FILE
        if not path.is_file():
            return None
        try:
            note = json.loads(path.read_text(encoding="utf-8")).get("read_only")
        except (OSError, ValueError, AttributeError):
            return None  # _check_schema_version reports an unreadable file
        return str(note) if note else None

    def require_writable(self) -> None:
        """Refuse (one line) to change a read-only store."""
        note = self.read_only
        if note:
            raise CfbenchError(
                f"results store {self.root} is read-only ({note}): pass another --results folder for your own runs"
            )

    def require_room(self) -> None:
        """Before scoring: refuse a read-only store, a folder that cannot be written or a full disk now, in
        one line, rather than after the model has scored everything (the writes come last)."""
        self.require_writable()
        check_room([self.root], MIN_FREE_BYTES, "--results")

    def _ensure_schema_file(self) -> None:
        self._check_schema_version()
        self.require_writable()
        path = self.root / SCHEMA_FILE
        if path.exists():
            return
        info = {"schema_version": SCHEMA_VERSION, "tables": sorted(TABLES)}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._atomic_write(path, lambda f: f.write(json.dumps(info, indent=2).encode() + b"\n"))
        except OSError as exc:
            raise self._unwritable(exc) from exc

    # ---------------------------------------------------------------- low-level I/O

    @staticmethod
    def _atomic_write(final: Path, write: Any) -> None:
        """Write via a temp file in the same folder, fsync, then rename into place.

        The temp name starts with ``.`` (pyarrow/pandas discovery skip it) and does not end in
        ``.parquet`` (so a ``*.parquet`` glob, as in duckdb, never matches a half-written file).
        """
        tmp = final.parent / f"{tmp_prefix('.tmp-')}{uuid.uuid4().hex}.partial"  # the pid: a dead writer's is found
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _write_part(self, name: str, table: pa.Table) -> Path:
        folder = self.root / name
        final = folder / f"part-{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._atomic_write(final, lambda f: pq.write_table(table, f))
        except OSError as exc:  # read-only mount, no permission, disk full: nothing half-written stays
            raise self._unwritable(exc) from exc
        return final

    def _unwritable(self, exc: OSError) -> CfbenchError:
        return CfbenchError(
            f"results store {self.root} is not writable ({exc.strerror or exc}): free space or fix permissions, "
            "or pass a writable --results folder"
        )

    def _parts(self, name: str) -> list[Path]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(folder.glob("part-*.parquet"))

    def _read(self, name: str, filter: ds.Expression | None = None,
              columns: Sequence[str] | None = None) -> pa.Table:
        """Read one table (a filtered slice when ``filter`` is given), de-duplicated on its keys."""
        schema, keys = TABLES[name]
        cols = list(columns) if columns is not None else schema.names
        read_cols = cols + [k for k in keys if k not in cols]
        for attempt in range(5):
            parts = self._parts(name)
            if not parts:
                return schema.empty_table().select(cols)
            self._verify_parts(name, parts)
            try:
                dataset = ds.dataset([str(p) for p in parts], schema=schema, format="parquet")
                table = dataset.to_table(filter=filter, columns=read_cols)
                break
            except (FileNotFoundError, OSError):
                # A concurrent compact() removed a part between listing and reading: list again.
                if attempt == 4 or all(p.exists() for p in parts):
                    self._verify_parts(name, parts)
                    raise
        return _dedupe(table, keys).select(cols)

    def _verify_parts(self, name: str, parts: Sequence[Path]) -> None:
        """Refuse to read a table with a corrupt, empty or foreign-schema part, naming it and the repair.

        Reading such a part either fails deep inside pyarrow or, for a foreign schema, silently
        yields null columns; both would turn into wrong or missing numbers further on.
        """
        schema = TABLES[name][0]
        for part in parts:
            # a part that is gone may be one a concurrent compact() just merged (the caller lists again);
            # a symlink whose target is gone is damage, named like any other bad part
            problem = part_problem(part, schema) if part.exists() or part.is_symlink() else None
            if problem:
                raise CfbenchError(f"results store part {part} is bad ({problem}): {repair_hint(self.root)}")

    # ---------------------------------------------------------------- writing

    def append_run(self, run: RunRecord, scores: Sequence[TaskScore],
                   items: pd.DataFrame | None = None) -> str:
        """Store one run, its task scores and (optionally) new item rows; returns the run id.

        Everything is validated before anything is written; then items, scores and finally the run
        row are written, so a run that is visible always has its scores and items.
        """
        self.require_writable()
        if run.source == "paper":
            raise CfbenchError(
                f"run {run.name!r} has source 'paper': the paper's runs ship with cfbench and are not stored "
                "again; refer to them as paper:NAME (`cfbench runs --source paper` lists the names)"
            )
        row = run_row(run)
        new_scores = score_rows(run.run_id, scores)
        runs_table = table_from_rows(RUNS_SCHEMA, [row], "run")
        scores_table = table_from_rows(TASK_SCORES_SCHEMA, new_scores, "task score")
        items_table = _items_table(items) if items is not None and len(items) else None
        existing = self._read("runs", ds.field("run_id") == run.run_id, ["run_id"])
        if existing.num_rows:
            raise CfbenchError(
                f"run id {run.run_id} is already in {self.root}: build a new RunRecord for a new run"
            )
        self._ensure_schema_file()
        if items_table is not None:
            self._write_part("items", items_table)
        if scores_table.num_rows:
            self._write_part("task_scores", scores_table)
        self._write_part("runs", runs_table)
        return run.run_id

    def append_items(self, df: pd.DataFrame) -> None:
        """Validate ``df`` against the items schema, cast it, and write it as one part.

        Missing nullable columns are filled with nulls; a missing required column, an unknown
        column, a null in a required column, a duplicate ``(cache_key, task, doc_id)``, or a value
        that doesn't cast is a :class:`CfbenchError` and nothing is written.
        """
        self.require_writable()
        if len(df) == 0:
            return
        table = _items_table(df)
        self._ensure_schema_file()
        self._write_part("items", table)

    def append_table(self, name: str, table: pa.Table) -> None:
        """Write ``table`` as one new part of table ``name`` (any of ``TABLES``), cast to its schema.

        Used by the diagnostics tables (cfbench.analysis), which have no record classes of their own.
        """
        self.require_writable()
        if name not in TABLES:
            raise CfbenchError(f"unknown results table {name!r}: use one of {', '.join(sorted(TABLES))}")
        if table.num_rows == 0:
            return
        schema = TABLES[name][0]
        try:
            table = table.select(schema.names).cast(schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
            raise CfbenchError(
                f"rows for table {name} do not match its schema ({exc}): see docs/results-schema.md"
            ) from None
        self._ensure_schema_file()
        self._write_part(name, table)

    def read_table(self, name: str, filter: ds.Expression | None = None) -> pd.DataFrame:
        """Every (de-duplicated) row of table ``name`` (those matching ``filter``, a pyarrow dataset
        expression, when given); empty with the schema's columns when absent."""
        if name not in TABLES:
            raise CfbenchError(f"unknown results table {name!r}: use one of {', '.join(sorted(TABLES))}")
        return _to_pandas(self._read(name, filter))

    # ---------------------------------------------------------------- reading

    def runs(self) -> pd.DataFrame:
        """All runs, oldest first."""
        df = _to_pandas(self._read("runs"))
        return df.sort_values(["created_at", "run_id"], kind="stable").reset_index(drop=True)

    def task_scores(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Task scores, all or those of ``run_ids``."""
        flt = None if run_ids is None else ds.field("run_id").isin(list(run_ids))
        return _to_pandas(self._read("task_scores", flt))

    def items(self, cache_keys: Iterable[str] | None = None, tasks: Iterable[str] | None = None,
              run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Item rows matching every given filter; only the matching row groups are decoded.

        ``run_ids`` selects the items a run wrote *and* the shared items its task scores were
        computed from (their ``cache_key``), since cached items keep the id of the run that made them.
        """
        flt: ds.Expression | None = None
        if cache_keys is not None:
            flt = _and(flt, ds.field("cache_key").isin(list(cache_keys)))
        if tasks is not None:
            flt = _and(flt, ds.field("task").isin(list(tasks)))
        if run_ids is not None:
            ids = list(run_ids)
            used = self._read("task_scores", ds.field("run_id").isin(ids), ["cache_key"])
            keys = sorted({k for k in used.column("cache_key").to_pylist() if k is not None})
            by_run = ds.field("run_id").isin(ids)
            flt = _and(flt, (by_run | ds.field("cache_key").isin(keys)) if keys else by_run)
        return _to_pandas(self._read("items", flt))

    def item_keys(self, cache_keys: Iterable[str]) -> pd.DataFrame:
        """``cache_key, task, doc_id`` of the items stored under ``cache_keys`` (no scores decoded)."""
        flt = ds.field("cache_key").isin(list(cache_keys))
        return _to_pandas(self._read("items", flt, ["cache_key", "task", "doc_id"]))

    def cached_doc_ids(self, cache_key: str) -> set[int]:
        """Doc ids already scored under ``cache_key``: the engine skips these."""
        table = self._read("items", ds.field("cache_key") == cache_key, ["doc_id"])
        return {int(x) for x in table.column("doc_id").to_pylist()}

    def match_run(self, name_or_id: str, runs: pd.DataFrame | None = None) -> RunRecord | None:
        """The run with this id, else the latest run with this name, else the one with this id prefix; or None.

        An id prefix (≥ 6 characters) that matches several runs is an error, never a guess.
        """
        runs = self.runs() if runs is None else runs
        if runs.empty:
            return None
        match = runs[runs["run_id"] == name_or_id]
        if match.empty:
            match = runs[runs["name"] == name_or_id]
        if match.empty and len(name_or_id) >= 6:
            match = runs[runs["run_id"].str.startswith(name_or_id)]
            if match["run_id"].nunique() > 1:
                raise CfbenchError(
                    f"run id prefix {name_or_id!r} matches {match['run_id'].nunique()} runs in "
                    f"{self.root}: give more characters of the id"
                )
        return None if match.empty else _record_from_row(match.iloc[-1].to_dict())

    def find_run(self, name_or_id: str) -> RunRecord:
        """:meth:`match_run`, or an error with the closest run names."""
        runs = self.runs()
        if runs.empty:
            raise CfbenchError(
                f"no runs in {self.root} yet: score a checkpoint with `cfbench eval` or add results "
                "with `cfbench import`, or point --results at another folder"
            )
        found = self.match_run(name_or_id, runs)
        if found is None:
            names = sorted(set(runs["name"]))
            near = difflib.get_close_matches(name_or_id, names, n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(near)}?" if near else f"known runs: {', '.join(names[:10])}"
            more = "" if near or len(names) <= 10 else f" (+{len(names) - 10} more)"
            raise CfbenchError(
                f"no run named {name_or_id!r} (or with that id) in {self.root}: {hint}{more}; "
                "`cfbench leaderboard` lists every run"
            )
        return found

    # ---------------------------------------------------------------- maintenance

    def compact(self) -> None:
        """Merge each table's parts into one file (fewer files, faster reads); safe while others write.

        The merged part is renamed in before the old parts are deleted, so a reader never misses a
        row (it may briefly see both, which de-duplication hides). Parts appended meanwhile are left
        alone. Also removes temp files that crashed writers left behind more than an hour ago.
        A read-only store (the paper's) is refused.
        """
        self.require_writable()
        for name, (schema, keys) in TABLES.items():
            self._remove_stale_tmp(name)
            parts = self._parts(name)
            if len(parts) < 2:
                continue
            self._verify_parts(name, parts)
            table = ds.dataset([str(p) for p in parts], schema=schema, format="parquet").to_table()
            self._write_part(name, _dedupe(table, keys))
            for p in parts:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _remove_stale_tmp(self, name: str) -> None:
        """Temp files of writers that are gone (their pid), and of older cfbench (no pid) after an hour."""
        folder = self.root / name
        if not folder.is_dir():
            return
        remove_dead_tmp(folder)
        now = time.time()
        for tmp in folder.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()


# -------------------------------------------------------------------- helpers


def _and(a: ds.Expression | None, b: ds.Expression) -> ds.Expression:
    return b if a is None else a & b


def _dedupe(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Keep the first row of each key (duplicates come from compaction or identical cached items)."""
    if table.num_rows < 2:
        return table
    key_df = table.select(list(keys)).to_pandas()
    keep = ~key_df.duplicated(keep="first").to_numpy()
    if keep.all():
        return table
    return table.filter(pa.array(keep))


def table_from_rows(schema: pa.Schema, rows: list[dict[str, Any]], what: str) -> pa.Table:
    for field in schema:
        if not field.nullable:
            for row in rows:
                if row.get(field.name) is None:
                    raise CfbenchError(f"{what} is missing required field {field.name!r}: set it")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise CfbenchError(f"{what} does not fit the results schema ({exc}): fix the field types") from exc


def run_row(run: RunRecord) -> dict[str, Any]:
    if not run.name:
        raise CfbenchError("run name is empty: give the run a name (e.g. --name sft-lr1e-5)")
    if run.source not in SOURCES:
        raise CfbenchError(f"run source {run.source!r} is unknown: use one of {', '.join(SOURCES)}")
    created = run.created_at
    if not isinstance(created, datetime):
        raise CfbenchError(f"run created_at must be a datetime, got {type(created).__name__}: pass one")
    if created.tzinfo is None:  # naive times are taken as UTC, the store's zone
        created = created.replace(tzinfo=timezone.utc)
    row = dataclasses.asdict(run)
    row["created_at"] = created
    for attr, column in _JSON_FIELDS.items():
        try:
            row[column] = json.dumps(row.pop(attr) or {}, sort_keys=True, default=str)
        except (TypeError, ValueError) as exc:
            raise CfbenchError(f"run field {attr!r} is not JSON-serialisable ({exc}): pass plain values") from exc
    return row


def score_rows(run_id: str, scores: Sequence[TaskScore]) -> list[dict[str, Any]]:
    rows, seen = [], set()
    for s in scores:
        key = (s.task, s.metric, s.subset)
        if key in seen:
            raise CfbenchError(f"task score {s.task}/{s.metric} (subset {s.subset}) given twice: pass it once")
        seen.add(key)
        value = float(s.value)
        if not (0.0 <= value <= 1.0):
            raise CfbenchError(
                f"score {s.task}/{s.metric} = {value} is outside [0, 1]: scores are stored as fractions "
                "(divide percentages by 100)"
            )
        row = dataclasses.asdict(s)
        row["value"] = value
        row["run_id"] = run_id
        rows.append(row)
    return rows


def _items_table(df: pd.DataFrame) -> pa.Table:
    names = ITEMS_SCHEMA.names
    unknown = [c for c in df.columns if c not in names]
    if unknown:
        raise CfbenchError(f"items frame has unknown columns {unknown}: the items columns are {names}")
    missing = [f.name for f in ITEMS_SCHEMA if not f.nullable and f.name not in df.columns]
    if missing:
        raise CfbenchError(f"items frame lacks required columns {missing}: add them")
    arrays = []
    for field in ITEMS_SCHEMA:
        if field.name not in df.columns:
            arrays.append(pa.nulls(len(df), type=field.type))
            continue
        try:
            arr = pa.array(df[field.name], type=field.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise CfbenchError(
                f"items column {field.name!r} does not cast to {field.type} ({exc}): fix its values"
            ) from exc
        if not field.nullable and arr.null_count:
            raise CfbenchError(f"items column {field.name!r} has {arr.null_count} null(s): it is required")
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=ITEMS_SCHEMA)
    dup = table.select(["cache_key", "task", "doc_id"]).to_pandas().duplicated()
    if dup.any():
        first = table.slice(int(dup.to_numpy().argmax()), 1).to_pylist()[0]
        raise CfbenchError(
            f"items frame repeats (cache_key, task, doc_id) = ({first['cache_key']}, {first['task']}, "
            f"{first['doc_id']}): each item once per frame"
        )
    _check_item_values(table)
    return table


def _check_item_values(table: pa.Table) -> None:
    for col in _METRIC_COLUMNS:
        values = [v for v in table.column(col).to_pylist() if v is not None and not math.isnan(v)]
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise CfbenchError(f"items column {col!r} has values outside [0, 1]: store fractions")
    lists = {c: table.column(c).to_pylist() for c in _LIST_COLUMNS}
    preds = table.column("pred").to_pylist()
    for i in range(table.num_rows):
        lengths = {len(lists[c][i]) for c in _LIST_COLUMNS if lists[c][i] is not None}
        if len(lengths) > 1:
            raise CfbenchError(
                f"items row {i}: logprobs/n_tokens/is_greedy have different lengths {sorted(lengths)}: "
                "give one entry per choice"
            )
        if lists["logprobs"][i] is not None and not 0 <= preds[i] < len(lists["logprobs"][i]):
            raise CfbenchError(f"items row {i}: pred {preds[i]} is not a choice index: fix pred")


def _record_from_row(row: dict[str, Any]) -> RunRecord:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(RunRecord):
        column = _JSON_FIELDS.get(f.name, f.name)
        value = _none_if_na(row.get(column))
        if f.name in _JSON_FIELDS:
            value = json.loads(value) if value else {}
        elif f.name == "created_at":
            value = pd.Timestamp(value).to_pydatetime().astimezone(timezone.utc)
        elif f.name in ("limit", "num_fewshot") and value is not None:
            value = int(value)
        kwargs[f.name] = value
    return RunRecord(**kwargs)
