"""Import an OpenCompass summary CSV (``outputs/.../summary/summary_<time>.csv``) into the store.

OpenCompass's ``DefaultSummarizer`` writes ``dataset,version,metric,mode,<model1>,<model2>...``:
one row per (dataset abbreviation, metric), scores in percent with two decimals, ``-`` where a
model has no score, and ``<abbr>,-,-,-,-...`` for a configured dataset with no results at all.
Each model column becomes one run. The paper (Li et al. 2024) used OpenCompass, so its dataset
abbreviations map one-to-one onto the ``oc_*`` tasks of the ``paper`` suite (the same configs and
PPL rule; ``openbookqa`` and ``truthfulqa`` onto the lm-eval extras). OpenCompass's ``mmlu`` row is
the *unweighted* mean of the 57 subjects, as ``oc_mmlu``'s score (lm-eval's is size-weighted); its
``version`` column is the prompt hash.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from cfbench.errors import CfbenchError
from cfbench.importers._common import MMLU_GROUPS, ImportResult
from cfbench.store.schema import RunRecord, TaskScore
from cfbench.store.store import ResultStore

#: OpenCompass dataset abbreviation -> (cfbench task, subset): OpenCompass-rule numbers go to oc_* tasks.
OPENCOMPASS_DATASETS: dict[str, tuple[str, str | None]] = {
    "mmlu": ("oc_mmlu", None),
    "mmlu-stem": ("oc_mmlu", "stem"),
    "mmlu-humanities": ("oc_mmlu", "humanities"),
    "mmlu-social-science": ("oc_mmlu", "social_sciences"),
    "mmlu-other": ("oc_mmlu", "other"),
    "race-middle": ("oc_race_middle", None),
    "race-high": ("oc_race_high", None),
    "openbookqa_fact": ("oc_openbookqa_fact", None),
    "csl_dev": ("oc_csl_dev", None),
    "BoolQ": ("oc_boolq", None),
    "AX_b": ("oc_ax_b", None),
    "AX_g": ("oc_ax_g", None),
    "RTE": ("oc_rte", None),
    "COPA": ("oc_copa", None),
    "hellaswag": ("oc_hellaswag", None),
    "siqa": ("oc_siqa", None),
    "ARC-c": ("oc_arc_challenge", None),
    "openbookqa": ("openbookqa", None),
    "truthfulqa": ("truthfulqa_mc", None),
    "truthful_qa": ("truthfulqa_mc", None),
}
_SUBJECT_PREFIX = "lukaemon_mmlu_"
_SUBJECTS = {s for subjects in MMLU_GROUPS.values() for s in subjects}
_HEADER = ["dataset", "version", "metric", "mode"]


def _map_dataset(abbr: str) -> tuple[str, str | None] | None:
    if abbr in OPENCOMPASS_DATASETS:
        return OPENCOMPASS_DATASETS[abbr]
    if abbr.startswith(_SUBJECT_PREFIX) and abbr[len(_SUBJECT_PREFIX):] in _SUBJECTS:
        return "oc_mmlu", abbr[len(_SUBJECT_PREFIX):]
    return None


def _map_metric(task: str, subset: str | None, abbr: str, metric: str) -> str | None:
    """cfbench metric for an OpenCompass one, or None when they measure different things."""
    if task == "truthfulqa_mc":
        return metric if metric in ("mc1", "mc2") else None  # OpenCompass's truthful_qa is generative
    if metric == "accuracy":
        return "acc"
    if task == "oc_mmlu" and not abbr.startswith(_SUBJECT_PREFIX) and metric in ("naive_average", "weighted_average"):
        return "acc"  # group rows: the mean of the subjects' accuracy
    return None


def is_opencompass_csv(path: Path) -> bool:
    """True when the file's header is OpenCompass's summary header."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    return [h.strip() for h in header[:4]] == _HEADER


def _read_summary(path: Path, name: str | None) -> tuple[list[list[str]], list[str]]:
    """Parse and validate stage: the CSV's non-empty rows and its model columns.

    Refuses, before any row is interpreted, a file that is not OpenCompass's summary (wrong header,
    no model column) and a ``--name`` that would have to name several runs at once.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError) as exc:
        raise CfbenchError(f"can't read {path} ({exc}): pass OpenCompass's summary_*.csv") from exc
    if not rows or [h.strip() for h in rows[0][:4]] != _HEADER or len(rows[0]) < 5:
        raise CfbenchError(
            f"{path} is not an OpenCompass summary CSV (expected the header "
            "dataset,version,metric,mode,<model>...): pass outputs/<run>/summary/summary_<time>.csv"
        )
    models = [m.strip() for m in rows[0][4:]]
    if name is not None and len(models) > 1:
        raise CfbenchError(
            f"{path} has {len(models)} model columns ({', '.join(models)}): --name only applies to a "
            "single-model CSV; drop it to name the runs after the columns"
        )
    return rows, models


@dataclass
class _Summary:
    """The known scores of a summary CSV, per model column, and what was skipped on the way.

    Filled row by row by :func:`_parse_rows`; ``modes`` and ``versions`` come from whole-dataset
    rows only (a subject's version is not its task's prompt hash).
    """

    path: Path
    models: list[str]
    per_model: dict[str, dict[tuple[str, str, str | None], TaskScore]]
    modes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    skipped_metrics: list[str] = field(default_factory=list)
    known_rows: int = 0


def _cell_value(path: Path, lineno: int, model: str, cell: str) -> float:
    """A percentage cell as a fraction; anything else is refused with its line and column."""
    try:
        value = float(cell) / 100.0
    except ValueError as exc:
        raise CfbenchError(
            f"{path}:{lineno} column {model!r} holds {cell!r}, not a percentage or '-': fix the file"
        ) from exc
    if not 0.0 <= value <= 1.0:
        raise CfbenchError(f"{path}:{lineno} column {model!r} holds {cell}, not a percentage in [0, 100]")
    return value


def _add_cells(
    s: _Summary, lineno: int, abbr: str, cells: list[str], key: tuple[str, str, str | None], warnings: list[str]
) -> None:
    """One known row's score for every model column that has one.

    Two rows can map onto the same score (``truthfulqa`` and ``truthful_qa``): the first is kept,
    and a warning says so when the second disagrees.
    """
    task, cf_metric, subset = key
    for model, cell in zip(s.models, cells, strict=True):
        cell = cell.strip()
        if cell == "-":
            continue
        value = _cell_value(s.path, lineno, model, cell)
        if key in s.per_model[model]:
            kept = s.per_model[model][key].value
            if abs(kept - value) > 1e-9:
                warnings.append(f"{model}: {abbr} given twice ({100 * kept:.2f} and {cell}); kept the first")
            continue
        s.per_model[model][key] = TaskScore(task=task, metric=cf_metric, value=value, subset=subset)


def _parse_rows(path: Path, rows: list[list[str]], models: list[str], warnings: list[str]) -> _Summary:
    """Build-records stage: map each row's dataset and metric onto cfbench's and collect its cells.

    Unknown datasets and metrics cfbench does not compute are noted, not refused (the caller
    decides whether anything known is left); a row of the wrong width is refused outright.
    """
    s = _Summary(path, models, {m: {} for m in models})
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise CfbenchError(f"{path}:{lineno} has {len(row)} fields, the header {len(rows[0])}: fix the file")
        abbr, version, metric, mode = (c.strip() for c in row[:4])
        mapped = _map_dataset(abbr)
        if mapped is None:
            if abbr not in s.unknown:
                s.unknown.append(abbr)
            continue
        if metric == "-":  # configured but never evaluated
            continue
        task, subset = mapped
        cf_metric = _map_metric(task, subset, abbr, metric)
        if cf_metric is None:
            s.skipped_metrics.append(f"{abbr}/{metric}")
            continue
        s.known_rows += 1
        if subset is None:
            s.modes.setdefault(task, mode)
            if version != "-":
                s.versions.setdefault(task, version)
        _add_cells(s, lineno, abbr, row[4:], (task, cf_metric, subset), warnings)
    return s


def _check_known(s: _Summary, warnings: list[str]) -> None:
    """Refuse a CSV with no known row at all; otherwise warn about what was skipped."""
    if not s.known_rows:
        raise CfbenchError(
            f"{s.path} has no dataset cfbench knows (found: {', '.join(s.unknown) or 'none'}): cfbench reads "
            f"{', '.join(OPENCOMPASS_DATASETS)} and {_SUBJECT_PREFIX}<subject>"
        )
    if s.unknown:
        warnings.append(f"skipped OpenCompass datasets with no cfbench equivalent: {', '.join(s.unknown)}")
    if s.skipped_metrics:
        warnings.append(
            f"skipped metrics cfbench does not compute (only accuracy, and mc1/mc2 for truthfulqa): "
            f"{', '.join(s.skipped_metrics)}"
        )


def _store_runs(s: _Summary, store: ResultStore, name: str | None, warnings: list[str]) -> ImportResult:
    """Write stage: one run per model column that has a known score.

    Each run carries only the task hashes and modes of the tasks it has scores for; a CSV whose
    every column is empty is refused after the fact, since nothing was stored.
    """
    task_hashes = {t: f"opencompass:{v}" for t, v in s.versions.items()}
    result = ImportResult(warnings=warnings)
    for model in s.models:
        scores = list(s.per_model[model].values())
        if not scores:
            warnings.append(f"model column {model!r} has no known scores: no run stored for it")
            continue
        for sc in scores:
            sc.task_hash = task_hashes.get(sc.task)
        run = RunRecord(
            name=name or model,
            checkpoint_name=model,
            source="opencompass",
            task_hashes={t: h for t, h in task_hashes.items() if any(sc.task == t for sc in scores)},
            backend="opencompass",
            extra={"import": {"format": "opencompass", "file": str(s.path), "column": model},
                   "modes": {t: m for t, m in s.modes.items() if any(sc.task == t for sc in scores)},
                   "skipped_datasets": s.unknown},
        )
        result.run_ids.append(store.append_run(run, scores))
        result.names.append(run.name)
        result.n_scores += len(scores)
    if not result.run_ids:
        raise CfbenchError(f"{s.path}: no model column has a known score ('-' everywhere): nothing to import")
    return result


def import_opencompass(csv_path: str | Path, store: ResultStore, name: str | None = None) -> ImportResult:
    """Store each model column of an OpenCompass summary CSV as one run (percent -> fraction).

    ``name`` names the run when the CSV has one model column; otherwise runs are named after the
    columns. Unknown dataset abbreviations and metrics are skipped with a warning, as long as at
    least one row is known. Stages: read and validate, map rows onto scores, then write.
    """
    path = Path(csv_path)
    rows, models = _read_summary(path, name)
    warnings: list[str] = []
    summary = _parse_rows(path, rows, models, warnings)
    _check_known(summary, warnings)
    return _store_runs(summary, store, name, warnings)
