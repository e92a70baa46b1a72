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


def import_opencompass(csv_path: str | Path, store: ResultStore, name: str | None = None) -> ImportResult:
    """Store each model column of an OpenCompass summary CSV as one run (percent -> fraction).

    ``name`` names the run when the CSV has one model column; otherwise runs are named after the
    columns. Unknown dataset abbreviations and metrics are skipped with a warning, as long as at
    least one row is known.
    """
    path = Path(csv_path)
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

    warnings: list[str] = []
    unknown: list[str] = []
    skipped_metrics: list[str] = []
    known_rows = 0
    per_model: dict[str, dict[tuple[str, str, str | None], TaskScore]] = {m: {} for m in models}
    modes: dict[str, str] = {}
    versions: dict[str, str] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise CfbenchError(f"{path}:{lineno} has {len(row)} fields, the header {len(rows[0])}: fix the file")
        abbr, version, metric, mode = (c.strip() for c in row[:4])
        mapped = _map_dataset(abbr)
        if mapped is None:
            if abbr not in unknown:
                unknown.append(abbr)
            continue
        if metric == "-":  # configured but never evaluated
            continue
        task, subset = mapped
        cf_metric = _map_metric(task, subset, abbr, metric)
        if cf_metric is None:
            skipped_metrics.append(f"{abbr}/{metric}")
            continue
        known_rows += 1
        if subset is None:
            modes.setdefault(task, mode)
            if version != "-":
                versions.setdefault(task, version)
        for model, cell in zip(models, row[4:], strict=True):
            cell = cell.strip()
            if cell == "-":
                continue
            try:
                value = float(cell) / 100.0
            except ValueError as exc:
                raise CfbenchError(
                    f"{path}:{lineno} column {model!r} holds {cell!r}, not a percentage or '-': fix the file"
                ) from exc
            if not 0.0 <= value <= 1.0:
                raise CfbenchError(f"{path}:{lineno} column {model!r} holds {cell}, not a percentage in [0, 100]")
            key = (task, cf_metric, subset)
            if key in per_model[model]:
                kept = per_model[model][key].value
                if abs(kept - value) > 1e-9:
                    warnings.append(f"{model}: {abbr} given twice ({100 * kept:.2f} and {cell}); kept the first")
                continue
            per_model[model][key] = TaskScore(task=task, metric=cf_metric, value=value, subset=subset)

    if not known_rows:
        raise CfbenchError(
            f"{path} has no dataset cfbench knows (found: {', '.join(unknown) or 'none'}): cfbench reads "
            f"{', '.join(OPENCOMPASS_DATASETS)} and {_SUBJECT_PREFIX}<subject>"
        )
    if unknown:
        warnings.append(f"skipped OpenCompass datasets with no cfbench equivalent: {', '.join(unknown)}")
    if skipped_metrics:
        warnings.append(
            f"skipped metrics cfbench does not compute (only accuracy, and mc1/mc2 for truthfulqa): "
            f"{', '.join(skipped_metrics)}"
        )

    task_hashes = {t: f"opencompass:{v}" for t, v in versions.items()}
    result = ImportResult(warnings=warnings)
    for model in models:
        scores = list(per_model[model].values())
        if not scores:
            warnings.append(f"model column {model!r} has no known scores: no run stored for it")
            continue
        for s in scores:
            s.task_hash = task_hashes.get(s.task)
        run = RunRecord(
            name=name or model,
            checkpoint_name=model,
            source="opencompass",
            task_hashes={t: h for t, h in task_hashes.items() if any(s.task == t for s in scores)},
            backend="opencompass",
            extra={"import": {"format": "opencompass", "file": str(path), "column": model},
                   "modes": {t: m for t, m in modes.items() if any(s.task == t for s in scores)},
                   "skipped_datasets": unknown},
        )
        result.run_ids.append(store.append_run(run, scores))
        result.names.append(run.name)
        result.n_scores += len(scores)
    if not result.run_ids:
        raise CfbenchError(f"{path}: no model column has a known score ('-' everywhere): nothing to import")
    return result
