"""Import ``lm_eval --output_path OUT [--log_samples]`` results into the store.

lm-eval writes ``OUT/<model>/results_<date>.json`` (task and group scores, configs, model args)
and, with ``--log_samples``, one ``samples_<task>_<date>.jsonl`` per task with every document's
per-choice ``(loglikelihood, is_greedy)`` pairs stringified in ``filtered_resps``. Task names are
mapped onto cfbench's; tasks without an equivalent are skipped with a warning. Only metrics under
lm-eval's ``none`` filter are read (multiple-choice tasks have no other), and only ``acc`` and
``acc_norm``, the two that cfbench's log-likelihood scoring also computes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.importers._common import MMLU_GROUPS, MMLU_OFFSETS, ImportResult, short_hash
from cfbench.store.schema import RunRecord, TaskScore, item_fingerprint
from cfbench.store.store import ResultStore

#: lm-eval task -> (cfbench task, {lm-eval metric: cfbench metric}). lm-eval's ``race`` is RACE-high;
#: GLUE ``rte`` and SuperGLUE ``sglue_rte`` are the same RTE data.
LMEVAL_TASKS: dict[str, tuple[str, dict[str, str]]] = {
    "arc_challenge": ("arc_challenge", {}),
    "hellaswag": ("hellaswag", {}),
    "boolq": ("boolq", {}),
    "copa": ("copa", {}),
    "rte": ("rte", {}),
    "sglue_rte": ("rte", {}),
    "social_iqa": ("siqa", {}),
    "openbookqa": ("openbookqa", {}),
    "race": ("race_high", {}),
    "truthfulqa_mc1": ("truthfulqa_mc", {"acc": "mc1"}),
    "truthfulqa_mc2": ("truthfulqa_mc", {"acc": "mc2"}),
    "mmlu": ("mmlu", {}),
}
_KEPT_METRICS = ("acc", "acc_norm")
_MMLU_SUBJECT_TO_GROUP = {s: g for g, subjects in MMLU_GROUPS.items() for s in subjects}


def _map_task(name: str) -> tuple[str, str | None, dict[str, str]] | None:
    """``(cfbench task, subset, metric renames)`` for an lm-eval task or group name, else None."""
    if name in LMEVAL_TASKS:
        task, renames = LMEVAL_TASKS[name]
        return task, None, renames
    if name.startswith("mmlu_"):
        rest = name[len("mmlu_"):]
        if rest in MMLU_GROUPS or rest in _MMLU_SUBJECT_TO_GROUP:
            return "mmlu", rest, {}
    return None


def find_results_file(path: str | Path) -> Path:
    """The ``results_*.json`` for ``path``: the file itself, or the only one under a folder."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.glob("results_*.json")) or sorted(p.glob("*/results_*.json"))
        if len(found) == 1:
            return found[0]
        if not found:
            raise CfbenchError(f"no lm-eval results_*.json in {p}: pass the results file itself")
        listing = ", ".join(str(f) for f in found[:5])
        raise CfbenchError(f"{p} holds {len(found)} lm-eval results files ({listing}): pass one of them")
    raise CfbenchError(f"{p} does not exist: pass an lm-eval results_*.json file or its folder")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CfbenchError(f"can't read {path} as JSON ({exc}): pass lm-eval's results_*.json") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise CfbenchError(
            f"{path} is not an lm-eval results file (no 'results' object): pass the results_*.json "
            "that `lm_eval --output_path` wrote"
        )
    return data


def _model_args(config: dict[str, Any]) -> dict[str, Any]:
    raw = config.get("model_args")
    if isinstance(raw, dict):
        return dict(raw)
    out: dict[str, Any] = {}
    for part in str(raw or "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _float_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" when a stderr can't be computed
    return None if math.isnan(f) else f


def _task_hash(names: list[str], data: dict[str, Any]) -> str:
    """lm-eval's per-task sample hashes (``--log_samples``) or, failing those, its task configs."""
    hashes, configs = data.get("task_hashes") or {}, data.get("configs") or {}
    parts = []
    for n in sorted(names):
        if n in hashes:
            parts.append(str(hashes[n]))
        elif n in configs:
            parts.append(json.dumps(configs[n], sort_keys=True, default=str))
    return "lm-eval:" + short_hash(*parts) if parts else "lm-eval:" + short_hash(*sorted(names))


def _date_id(results_file: Path) -> str:
    return results_file.stem.rsplit("_", 1)[-1]


def _samples_file(results_file: Path, task: str) -> Path:
    return results_file.parent / f"samples_{task}_{_date_id(results_file)}.jsonl"


def _gold(target: str, continuations: list[str]) -> int | None:
    """Gold choice index: lm-eval logs ``str(target)``, an index for most tasks, the choice text for some."""
    t = target.strip()
    if re.fullmatch(r"\d+", t) and int(t) < len(continuations):
        return int(t)
    matches = [i for i, c in enumerate(continuations) if c.strip() == t]
    return matches[0] if len(matches) == 1 else None


def _sample_rows(path: Path, subset: str | None, warnings: list[str]) -> list[dict[str, Any]]:
    """Item rows (without keys) from one samples file; unusable lines are counted in a warning."""
    rows, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            if s.get("filter", "none") != "none":
                continue
            try:
                pairs = s["filtered_resps"]
                logprobs = [float(p[0]) for p in pairs]
                greedy = [str(p[1]) == "True" for p in pairs]
                args = s.get("arguments") or {}
                ordered = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))]
                conts = [str(a.get("arg_1", "")) for a in ordered]
                contexts = {str(a.get("arg_0", "")) for a in ordered}
            except (KeyError, TypeError, ValueError, IndexError):
                bad += 1
                continue
            gold = _gold(str(s.get("target", "")), conts)
            if gold is None or not logprobs:
                bad += 1
                continue
            doc_id = int(s["doc_id"])
            if subset is not None:
                doc_id += MMLU_OFFSETS[subset]
            # The same fingerprint cfbench's engine stores (one shared context, the scored
            # continuations, gold): equal only when lm-eval's prompt and data equal ours.
            fingerprint = item_fingerprint(contexts.pop(), conts, gold) if len(contexts) == 1 else None
            rows.append({
                "doc_id": doc_id, "subset": subset, "gold": gold, "item_hash": fingerprint,
                "pred": max(range(len(logprobs)), key=lambda i: (logprobs[i], -i)),
                "acc": _float_or_none(s.get("acc")), "acc_norm": _float_or_none(s.get("acc_norm")),
                "logprobs": logprobs, "is_greedy": greedy,
            })
    if bad:
        warnings.append(f"{path.name}: skipped {bad} sample(s) without per-choice log-likelihoods or a gold index")
    return rows


@dataclass(frozen=True)
class _LmevalResults:
    """One validated results file and what every later stage reads from it.

    Parsed once (file found, JSON checked, task names mapped and hashed) so the item, score and
    run stages below take one argument instead of re-deriving the same mapping each.
    """

    file: Path
    data: dict[str, Any]
    config: dict[str, Any]
    margs: dict[str, Any]
    mapped: dict[str, tuple[str, str | None, dict[str, str]]]
    unknown: list[str]
    by_task: dict[str, list[str]]
    task_hashes: dict[str, str]


def _map_tasks(
    results_file: Path, data: dict[str, Any], warnings: list[str]
) -> tuple[dict[str, tuple[str, str | None, dict[str, str]]], list[str]]:
    """lm-eval task names -> cfbench tasks, and the names cfbench has no equivalent for.

    Refuses a file with no known task at all (nothing would be stored, so the user must hear
    which tasks cfbench reads); unknown tasks next to known ones are only a warning.
    """
    mapped: dict[str, tuple[str, str | None, dict[str, str]]] = {}
    unknown: list[str] = []
    for lm_name in data["results"]:
        m = _map_task(lm_name)
        if m is None:
            unknown.append(lm_name)
        else:
            mapped[lm_name] = m
    if not mapped:
        raise CfbenchError(
            f"{results_file} has no task cfbench knows (found: {', '.join(sorted(unknown))}): cfbench "
            f"imports {', '.join(sorted(LMEVAL_TASKS))} and mmlu_<subject>"
        )
    if unknown:
        warnings.append(f"skipped lm-eval tasks with no cfbench equivalent: {', '.join(sorted(unknown))}")
    return mapped, unknown


def _read_results(path: str | Path, warnings: list[str]) -> _LmevalResults:
    """Parse and validate stage: everything that can refuse the file before any record is built.

    Also groups lm-eval names by cfbench task (MMLU subjects all land on ``mmlu``) so each task
    gets one hash, and warns when MMLU parts came without lm-eval's overall ``mmlu`` group.
    """
    results_file = find_results_file(path)
    data = _load_json(results_file)
    config = data.get("config") or {}
    margs = _model_args(config)
    mapped, unknown = _map_tasks(results_file, data, warnings)
    by_task: dict[str, list[str]] = {}
    for lm_name, (task, _, _) in mapped.items():
        by_task.setdefault(task, []).append(lm_name)
    task_hashes = {task: _task_hash(names, data) for task, names in by_task.items()}
    if "mmlu" in by_task and "mmlu" not in mapped:
        warnings.append(
            "mmlu: the results have MMLU subjects/groups but not lm-eval's `mmlu` group, so only subset "
            "scores were stored (run lm-eval with --tasks mmlu for the overall score)"
        )
    return _LmevalResults(results_file, data, config, margs, mapped, unknown, by_task, task_hashes)


def _model_name(config: dict[str, Any]) -> str | None:
    """lm-eval's model type (``hf``, ``vllm``, ...), None when it wrote none."""
    return str(config.get("model", "")) or None


def _cache_keys(res: _LmevalResults) -> dict[str, str]:
    """Per task, the key the imported items are stored under.

    It digests the model identity (type, args, chat template and system prompt hashes) with the
    task hash, so the same results re-imported share a key and a different model never does.
    """
    identity = json.dumps({"model": _model_name(res.config), "model_args": res.config.get("model_args"),
                           "chat_template_sha": res.data.get("chat_template_sha"),
                           "system_instruction_sha": res.data.get("system_instruction_sha")},
                          sort_keys=True, default=str)
    return {task: "lm-eval:" + short_hash(identity, task, h) for task, h in res.task_hashes.items()}


def _item_rows(res: _LmevalResults, warnings: list[str]) -> dict[str, dict[int, dict[str, Any]]]:
    """Item rows per cfbench task and doc id, from whichever samples files lm-eval wrote.

    Tasks without a samples file (no ``--log_samples``) simply have no items. TruthfulQA's mc1 and
    mc2 are two lm-eval tasks over the same questions: they merge into one row per question.
    """
    items: dict[str, dict[int, dict[str, Any]]] = {}
    for lm_name, (task, subset, renames) in res.mapped.items():
        sfile = _samples_file(res.file, lm_name)
        if not sfile.exists():
            continue
        item_subset = subset if subset in _MMLU_SUBJECT_TO_GROUP else None
        for row in _sample_rows(sfile, item_subset, warnings):
            target = items.setdefault(task, {}).setdefault(row["doc_id"], {})
            if "acc" in renames:  # truthfulqa: one row per question holds both mc1 and mc2
                row[renames["acc"]] = row.pop("acc")
                if renames["acc"] == "mc2" and target:  # the mc1 choices/logprobs are kept
                    target["mc2"] = row["mc2"]
                    continue
            target.update(row)
    return items


def _items_frame(
    items: dict[str, dict[int, dict[str, Any]]], cache_keys: dict[str, str], task_hashes: dict[str, str]
) -> pd.DataFrame:
    """The item rows as the store's items table (cache key and task first, then the task hash)."""
    frames = []
    for task, rows in items.items():
        df = pd.DataFrame(list(rows.values()))
        df.insert(0, "task", task)
        df.insert(0, "cache_key", cache_keys[task])
        df["task_hash"] = task_hashes[task]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _scores(res: _LmevalResults, cache_keys: dict[str, str], item_tasks: set[str]) -> list[TaskScore]:
    """acc/acc_norm scores under lm-eval's ``none`` filter, the two cfbench's scoring also computes.

    Built after the items so a score points at its items' cache key only when items were stored;
    a file with no such score is refused, since importing it would store an empty run.
    """
    n_samples = res.data.get("n-samples") or {}
    scores: list[TaskScore] = []
    for lm_name, (task, subset, renames) in res.mapped.items():
        entry = res.data["results"][lm_name]
        n = (n_samples.get(lm_name) or {}).get("effective", entry.get("sample_len"))
        for key, value in entry.items():
            metric, sep, filt = key.partition(",")
            if not sep or filt != "none" or metric.endswith("_stderr") or metric not in _KEPT_METRICS:
                continue
            v = _float_or_none(value)
            if v is None:  # a NaN or non-number score: dropping the task silently would hide it
                raise CfbenchError(
                    f"{res.file}: task {lm_name}'s {metric} is {value!r}, not a number (lm-eval could not score "
                    "it): re-run that task, or remove it from the file; nothing was imported"
                )
            scores.append(TaskScore(
                task=task, metric=renames.get(metric, metric), value=v,
                n_items=None if n is None else int(n), stderr=_float_or_none(entry.get(f"{metric}_stderr,none")),
                task_hash=res.task_hashes[task], subset=subset,
                cache_key=cache_keys[task] if task in item_tasks else None,
            ))
    if not scores:
        raise CfbenchError(f"{res.file} has no acc/acc_norm scores for its tasks: nothing to import")
    return scores


def _backend_settings(res: _LmevalResults) -> dict[str, Any]:
    """lm-eval's settings that change numbers, kept on the run so reports can show how it was scored."""
    config, data = res.config, res.data
    return {k: config.get(k) for k in ("model", "model_args", "batch_size", "device", "gen_kwargs")
            if config.get(k) is not None} | {
        k: data.get(k) for k in ("chat_template_sha", "system_instruction_sha", "fewshot_as_multiturn")
        if data.get(k) is not None}


def _run_extra(res: _LmevalResults, n_shot: dict[str, Any], mixed_shots: bool) -> dict[str, Any]:
    """Provenance of the import (file, lm-eval version, date, skipped tasks) for the run's ``extra``."""
    date = res.data.get("date")
    return {
        "import": {"format": "lm-eval", "file": str(res.file)},
        "lm_eval_version": res.data.get("lm_eval_version"),
        "evaluated_at": datetime.fromtimestamp(float(date), timezone.utc).isoformat()
        if isinstance(date, (int, float)) else None,
        "git_hash": res.data.get("git_hash"),
        "n_shot": n_shot if mixed_shots else {},
        "limit": res.config.get("limit"),
        "lm_eval_tasks": {t: sorted(ns) for t, ns in res.by_task.items()},
        "skipped_tasks": sorted(res.unknown),
    }


def _run_record(res: _LmevalResults, name: str | None) -> RunRecord:
    """The run: named after lm-eval's model unless ``name`` is given, checkpoint from the model args.

    ``num_fewshot`` is set only when every task used the same shot count (else ``extra["n_shot"]``
    holds each task's), and ``limit`` only when lm-eval's was a whole number of documents.
    """
    config, data, margs = res.config, res.data, res.margs
    model = _model_name(config)
    checkpoint_path = margs.get("peft") or margs.get("pretrained") or margs.get("model") or margs.get("path")
    checkpoint_name = str(data.get("model_name") or checkpoint_path or model or res.file.stem)
    n_shot = {lm: data.get("n-shot", {}).get(lm) for lm in res.mapped if lm in data.get("n-shot", {})}
    shots = {int(v) for v in n_shot.values() if v is not None}
    limit = config.get("limit")
    return RunRecord(
        name=name or checkpoint_name,
        checkpoint_name=checkpoint_name,
        source="lm-eval",
        checkpoint_path=None if checkpoint_path is None else str(checkpoint_path),
        checkpoint_hash=config.get("model_sha") or None,
        base=str(margs["pretrained"]) if "peft" in margs and "pretrained" in margs else None,
        task_hashes=res.task_hashes,
        backend=f"lm-eval/{model}" if model else "lm-eval",
        backend_settings=_backend_settings(res),
        dtype=str(config.get("model_dtype") or margs.get("dtype") or "") or None,
        limit=int(limit) if isinstance(limit, (int, float)) and float(limit).is_integer() else None,
        num_fewshot=next(iter(shots)) if len(shots) == 1 else None,  # else see extra["n_shot"]
        extra=_run_extra(res, n_shot, len(shots) > 1),
    )


def import_lmeval(path: str | Path, name: str | None, store: ResultStore) -> ImportResult:
    """Store one lm-eval results file (and its samples files, when present) as one run.

    ``name`` defaults to lm-eval's model name. MMLU subjects and groups become ``subset`` scores of
    ``mmlu``; the ``mmlu`` score itself comes from lm-eval's group row (size-weighted). Stages: parse
    and validate, build items, scores and the run record, then one write, so a refused file
    stores nothing.
    """
    warnings: list[str] = []
    res = _read_results(path, warnings)
    cache_keys = _cache_keys(res)
    items = _item_rows(res, warnings)
    items_df = _items_frame(items, cache_keys, res.task_hashes)
    scores = _scores(res, cache_keys, set(items))
    run = _run_record(res, name)
    run_id = store.append_run(run, scores, items_df.assign(run_id=run.run_id) if len(items_df) else None)
    return ImportResult(run_ids=[run_id], names=[run.name], n_scores=len(scores),
                        n_items=len(items_df), warnings=warnings)
