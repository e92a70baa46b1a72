"""The founding paper's published per-task numbers as read-only reference runs (``source: paper``).

Li et al. 2024 (arXiv 2406.04836) printed per-task accuracies for every run in its Tables 5–8
(OpenCompass, perplexity mode). ``tables-5-8.csv`` next to this module holds them exactly as printed
(percentages); :func:`paper_runs` turns each row into a :class:`~cfbench.store.RunRecord` with
task-level scores (fractions, no items: the paper published none, so ``compare`` shows them on its
unpaired task-level path, without CIs, and says so). :func:`write_paper_store` writes them as a
results store marked read-only; ``scripts/paper_results.py`` builds the repo's ``results/paper``
with it, and :func:`paper_store` builds the same store once into the cfbench cache so that a
pip-installed cfbench (which has the CSV as package data, not the repo's ``results/``) has them too.

Everything is derived from the CSV alone: run ids are hashes of the run names and ``created_at`` is
a fixed date plus the row number (so stores list the runs in the paper's order), which makes a
rebuild byte-identical for a given pyarrow version. Names are documented in docs/paper-results.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from cfbench._version import __version__
from cfbench.errors import CfbenchError
from cfbench.models.checkpoint import default_cache_dir
from cfbench.store import ResultStore, RunRecord, TaskScore
from cfbench.store.schema import RUNS_SCHEMA, SCHEMA_VERSION, TABLES, TASK_SCORES_SCHEMA
from cfbench.store.store import SCHEMA_FILE, run_row, score_rows, table_from_rows

CSV_PATH = Path(__file__).with_name("tables-5-8.csv")
PREFIX = "paper:"
PAPER = "Li et al. 2024, arXiv 2406.04836"
#: The read-only note written into the store's ``_schema.json``.
READ_ONLY_NOTE = f"the paper's published numbers ({PAPER}), rebuilt by scripts/paper_results.py"
#: Bump when the mapping from CSV rows to runs changes (it names the cached copy).
BUILD_VERSION = 2  # 2: task names are the oc_* tasks
#: June 2024, the month of arXiv 2406.*; row i is stamped this + i seconds so stores keep the CSV order.
_EPOCH = datetime(2024, 6, 1, tzinfo=timezone.utc)
_PART = "part-00000000000000000000-paper.parquet"

#: CSV column -> (cfbench task, subset): the ``oc_*`` tasks of the ``paper`` suite, which score as the paper
#: did (OpenCompass PPL configs). The ``mmlu`` column is the DK score of Tables 2/3 (OpenCompass's
#: unweighted mean over the 57 subjects); the four group columns are stored as its sub-group scores.
COLUMNS: dict[str, tuple[str, str | None]] = {
    "mmlu": ("oc_mmlu", None),
    "stem": ("oc_mmlu", "stem"),
    "humanities": ("oc_mmlu", "humanities"),
    "social_sciences": ("oc_mmlu", "social_sciences"),
    "other": ("oc_mmlu", "other"),
    "race_middle": ("oc_race_middle", None),
    "race_high": ("oc_race_high", None),
    "openbookqa_fact": ("oc_openbookqa_fact", None),
    "csl_dev": ("oc_csl_dev", None),
    "arc_c": ("oc_arc_challenge", None),
    "boolq": ("oc_boolq", None),
    "ax_b": ("oc_ax_b", None),
    "ax_g": ("oc_ax_g", None),
    "rte": ("oc_rte", None),
    "copa": ("oc_copa", None),
    "hellaswag": ("oc_hellaswag", None),
    "siqa": ("oc_siqa", None),
}
_MODELS = {"Llama2-7B": "llama2-7b", "TinyLlama-1.1B": "tinyllama-1.1b", "Llama2-13B": "llama2-13b"}
_DATASETS = {"ShareGPT": "sharegpt", "Open-Platypus": "platypus", "MetaMath": "metamath"}
_VARIANTS = {"": "", "Wise-FT": "wiseft", "Rehearsal": "rehearsal"}
_ROW = re.compile(r"^Alpaca->(?P<data>[\w-]+?)(?: (?P<variant>Wise-FT|Rehearsal))? \((?P<sam>w/o|w/) SAM\)$")
#: Appendix A.2's hyper-parameters (the paper's Alpaca stage, then the second stage without / with SAM).
_ALPACA_HPARAMS = {"optimizer": "adamw", "lr": 2e-5, "batch_size": 128}
_STAGE2_HPARAMS = {"lr": 5e-6, "batch_size": 128}


@dataclass(frozen=True)
class PaperRow:
    """One printed row of Tables 5–8 and the run name cfbench gives it."""

    table: int
    model: str
    row: str
    epochs: int
    values: dict[str, float]  # CSV column -> percentage as printed
    name: str
    method: str
    base: str
    table_2a: bool


def _name_row(model: str, row: str, epochs: int) -> tuple[str, str, str, bool]:
    """(run name, method, base run name, is a Table 2(a) row) for one CSV row; unknown shapes are refused."""
    if model not in _MODELS:
        raise CfbenchError(f"{CSV_PATH}: unknown model {model!r}: add it to cfbench.comparison.paper._MODELS")
    slug = _MODELS[model]
    if row == "Alpaca":
        return f"{slug}-alpaca", "adamw", model, slug == "llama2-7b"  # the Alpaca stage starts from the model
    m = _ROW.match(row)
    if m is None or m["data"] not in _DATASETS:
        raise CfbenchError(f"{CSV_PATH}: row {row!r} does not follow 'Alpaca->DATA [Wise-FT|Rehearsal] (w/o|w/ SAM)'")
    variant = _VARIANTS[m["variant"] or ""]
    sam = m["sam"] == "w/"
    parts = [slug, _DATASETS[m["data"]], *([variant] if variant else []), "w-sam" if sam else "wo-sam"]
    # The compute-matched comparison (Table 2) pairs 2 AdamW epochs with 1 SAM epoch; other counts get a suffix.
    if epochs != (1 if sam else 2):
        parts.append(f"{epochs}ep")
    method = ("sam" if sam else "adamw") + (f"+{variant}" if variant else "")
    table_2a = slug == "llama2-7b" and not variant and epochs == (1 if sam else 2)
    return "-".join(parts), method, f"{PREFIX}{slug}-alpaca", table_2a


@lru_cache(maxsize=1)
def paper_rows() -> tuple[PaperRow, ...]:
    """The CSV's rows, validated: every number column present and a percentage in [0, 100]."""
    with open(CSV_PATH, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("table", "model", "run", "epochs", *COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise CfbenchError(f"{CSV_PATH} lacks columns {missing}: restore it from /work/shared/paper")
        rows = []
        for line_no, rec in enumerate(reader, start=2):
            values = {}
            for col in COLUMNS:
                try:
                    v = float(rec[col])
                except (TypeError, ValueError):
                    raise CfbenchError(f"{CSV_PATH}:{line_no}: {col} = {rec[col]!r} is not a number") from None
                if not 0.0 <= v <= 100.0:
                    raise CfbenchError(f"{CSV_PATH}:{line_no}: {col} = {v} is not a percentage")
                values[col] = v
            name, method, base, t2a = _name_row(rec["model"], rec["run"], int(rec["epochs"]))
            rows.append(PaperRow(int(rec["table"]), rec["model"], rec["run"], int(rec["epochs"]), values,
                                 name, method, base, t2a))  # fmt: skip
    names = [r.name for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CfbenchError(
            f"{CSV_PATH}: rows map to the same run names {dup}: extend cfbench.comparison.paper._name_row"
        )
    return tuple(rows)


def paper_names() -> list[str]:
    """Every paper run name, in the CSV's order."""
    return [r.name for r in paper_rows()]


def _run_id(name: str) -> str:
    return hashlib.sha256(f"cfbench-paper/v{BUILD_VERSION}/{name}".encode()).hexdigest()[:32]


def paper_runs() -> list[tuple[Any, list[Any]]]:
    """``(RunRecord, [TaskScore, ...])`` per CSV row; scores are fractions (the printed % / 100)."""
    out = []
    for i, r in enumerate(paper_rows()):
        sam = r.method.startswith("sam")
        hparams: dict[str, Any] = (
            {**_ALPACA_HPARAMS, "epochs": r.epochs}
            if r.row == "Alpaca"
            else {**_STAGE2_HPARAMS, "optimizer": "sam" if sam else "adamw", "epochs": r.epochs}
        )
        run = RunRecord(
            name=r.name,
            checkpoint_name=f"{r.model} {r.row}, {r.epochs} epoch{'s' if r.epochs != 1 else ''}",
            source="paper",
            base=r.base,
            method=r.method,
            hparams=hparams,
            suite="paper",
            backend="opencompass-ppl",
            cfbench_version=__version__,
            extra={
                "paper": PAPER,
                "table": r.table,
                "model": r.model,
                "row": r.row,
                "epochs": r.epochs,
                "table_2a": r.table_2a,
                "printed_percent": r.values,
            },
            run_id=_run_id(r.name),
            created_at=_EPOCH + timedelta(seconds=i),
        )
        scores = [
            TaskScore(task=task, metric="acc", value=r.values[col] / 100.0, subset=subset)
            for col, (task, subset) in COLUMNS.items()
        ]
        out.append((run, scores))
    return out


def write_paper_store(root: Path) -> Path:
    """Write the paper runs as a read-only results store at ``root`` (which must not exist yet).

    Parts get fixed names and the rows are written in CSV order, so a rebuild is byte-identical.
    """
    import pyarrow.parquet as pq


    root = Path(root)
    if root.exists():
        raise CfbenchError(f"{root} already exists: remove it first (the paper store is rebuilt, never appended to)")
    runs, all_scores = [], []
    for run, scores in paper_runs():
        runs.append(run_row(run))
        all_scores += score_rows(run.run_id, scores)
    (root / "runs").mkdir(parents=True)
    (root / "task_scores").mkdir()
    pq.write_table(table_from_rows(RUNS_SCHEMA, runs, "paper run"), root / "runs" / _PART)
    pq.write_table(table_from_rows(TASK_SCORES_SCHEMA, all_scores, "paper score"), root / "task_scores" / _PART)
    info = {"schema_version": SCHEMA_VERSION, "tables": sorted(TABLES), "read_only": READ_ONLY_NOTE}
    (root / SCHEMA_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return root


def _csv_digest() -> str:
    return hashlib.sha256(CSV_PATH.read_bytes()).hexdigest()[:16]


@lru_cache(maxsize=1)
def paper_store() -> Any:
    """The read-only :class:`~cfbench.store.ResultStore` of the paper runs (built once into the cache).

    The cached copy is named by the CSV's hash and :data:`BUILD_VERSION`, so an edited CSV or a changed
    mapping gets a fresh copy; it is built in a temp folder and renamed into place (concurrent first
    calls are safe).
    """
    final = default_cache_dir() / "paper" / f"v{BUILD_VERSION}-{_csv_digest()}"
    if not (final / "_schema.json").is_file():
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-paper-"))
            try:
                write_paper_store(tmp / "store")
                try:
                    os.rename(tmp / "store", final)
                except OSError:
                    if not (final / "_schema.json").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            raise CfbenchError(
                f"cannot build the paper's reference runs in {final.parent} ({exc.strerror or exc}): "
                "set CFBENCH_CACHE to a writable folder"
            ) from exc
    return ResultStore(final)


def find_paper_run(name: str) -> Any:
    """The paper run ``name`` (a RunRecord), or one error line saying how to list the names."""
    import difflib

    store = paper_store()
    names = paper_names()
    if name in names:
        return store.find_run(name)
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(PREFIX + n for n in near)}? " if near else ""
    raise CfbenchError(
        f"no paper run named {name!r}: {hint}`cfbench runs --source paper` lists all {len(names)} "
        "(docs/paper-results.md explains the names)"
    )


def paper_frames(which: str = "all") -> tuple[Any, Any]:
    """(runs, task_scores) frames of the paper store: ``all`` runs, ``table2a`` rows only, or ``none``.

    Names carry the ``paper:`` prefix, so a row shown next to the user's own runs says where it comes
    from and can be pasted into ``cfbench compare`` as it is.
    """
    store = paper_store()
    runs = store.runs()
    if which == "none":
        runs = runs.iloc[0:0]
    elif which == "table2a":
        keep = {r.name for r in paper_rows() if r.table_2a}
        runs = runs[runs["name"].isin(keep)]
    elif which != "all":
        raise CfbenchError(f"paper runs {which!r}: choose all, table2a or none")
    runs = runs.reset_index(drop=True)
    runs["name"] = PREFIX + runs["name"]
    return runs, store.task_scores(run_ids=list(runs["run_id"]))
