"""The evaluation engine: checkpoint + tasks → per-item scores in the results store.

Every item is cached under a key made of everything that can change its number: the checkpoint's
content hash, the task config hash, the data fingerprint, the few-shot count and the backend's
numeric settings. Items are appended to the store in chunks as they are scored, so a run killed at
any point resumes where it stopped, and a rerun scores nothing (the model is not even loaded).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import cfbench.scoring_version as scoring_version
from cfbench.backends import Backend, LoglikRequest, LoglikResult, backend_class, check_backend_options, make_backend
from cfbench.data import default_sources
from cfbench.errors import CfbenchError
from cfbench.models.checkpoint import MANIFEST, ResolvedCheckpoint, resolve_checkpoint
from cfbench.models.hashing import require_finite_weights, tokenizer_hash
from cfbench.progress import Progress
from cfbench.store import ResultStore, RunRecord, TaskScore
from cfbench.store.schema import item_fingerprint
from cfbench.tasks.opencompass import AGGREGATES, load_oc_requests
from cfbench.tasks.registry import Suite, get_task, load_suite
from cfbench.tasks.task import Instance, ItemScore, Task

# The cache key's backend part comes from each backend's ``key_settings(model_path, options)``
# (cfbench.backends.base.Backend): dtype, lengths, scoring path, package / server versions... Options
# that only change speed (batch size, workers, memory fraction) stay out of it. These are the
# options every backend reads the same way; ``backend_key`` adds the scoring-code version.
NUMERIC_OPTIONS = ("dtype", "max_length", "max_model_len")
CHUNK_SECONDS = 60.0  # flush scored items to the store at least this often
CHUNK_DOCS = int(os.environ.get("CFBENCH_CHUNK_DOCS", "2048"))  # cap on documents per store append
FIRST_CHUNK_DOCS = min(32, CHUNK_DOCS)


@dataclass
class TaskOutcome:
    task: str
    config_hash: str
    cache_key: str
    n_items: int
    n_scored: int  # items scored in this call (0 on a fully cached rerun)
    metrics: dict[str, float]
    primary_metric: str
    missing: str | None = None  # why the task could not be scored (data missing)


@dataclass
class EvalResult:
    run_id: str
    name: str
    checkpoint_hash: str
    outcomes: list[TaskOutcome]
    reused_run: bool
    seconds: float
    scored_items: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def backend_key(backend: str, options: dict[str, Any], model_path: str | Path) -> dict[str, Any]:
    """Everything on the backend side that changes numbers, without loading the model.

    The backend class's ``key_settings`` (see :class:`cfbench.backends.base.Backend`) plus
    :data:`cfbench.scoring_version.SCORING_VERSION`, so a change of cfbench's scoring code that moves
    per-item outputs never reuses items cached by the old code.
    """
    check_backend_options(backend, options)
    key = dict(backend_class(backend).key_settings(Path(model_path), dict(options)))
    key["backend"] = backend
    key["scoring_version"] = scoring_version.SCORING_VERSION  # read at call time (tests patch it)
    return key


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts``: the cache keys and run keys are built from it, so
    its output must never change for the same input (stored items are found by these keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_key(checkpoint_hash: str, task: Task, num_fewshot: int, bkey: dict[str, Any]) -> str:
    return digest("item-cache/v1", checkpoint_hash, task.cfg.config_hash, task.data_fingerprint, num_fewshot, bkey)


def score_requests(
    backend: Backend, requests: Sequence[LoglikRequest], progress: Callable[[int], None] | None = None
) -> list[LoglikResult]:
    """Send non-empty continuations to the backend; an empty continuation scores log p = 0 over 0 tokens."""
    idx = [i for i, r in enumerate(requests) if r.continuation]
    sent = backend.loglikelihood([requests[i] for i in idx], progress) if idx else []
    out: list[LoglikResult] = [LoglikResult(0.0, True, 0)] * len(requests)
    for i, res in zip(idx, sent, strict=True):
        out[i] = res
    return out


def items_frame(
    task: Task, ckey: str, scores: Sequence[ItemScore], instances: Sequence[Instance] | None = None
) -> pd.DataFrame:
    """Item rows in the store's ``items`` schema.

    ``instances`` (the rendered items that were scored) give each row its ``item_hash``, so a later
    ``compare`` pairs items only with the same prompt, choices and gold; without them it is null.
    """
    fingerprints = {inst.doc_id: _fingerprint(task, inst) for inst in instances or ()}
    rows = []
    for s in scores:
        rows.append(
            {
                "cache_key": ckey,
                "run_id": None,
                "task": task.name,
                "task_hash": task.cfg.config_hash,
                "doc_id": s.doc_id,
                "subset": s.subset,
                "gold": s.gold,
                "pred": s.pred,
                "acc": s.metrics.get("acc"),
                "acc_norm": s.metrics.get("acc_norm"),
                "mc1": s.metrics.get("mc1"),
                "mc2": s.metrics.get("mc2"),
                "logprobs": s.logprobs,
                "n_tokens": s.n_tokens,
                "is_greedy": s.is_greedy,
                "item_hash": fingerprints.get(s.doc_id),
            }
        )
    return pd.DataFrame(rows)


def _fingerprint(task: Task, inst: Instance) -> str:
    """The item as the model saw it. Under OpenCompass's PPL rule that is each label's whole text
    (empty context), so an ``oc_*`` item never pairs with an lm-eval item of the same prompt."""
    if task.cfg.scoring == "oc_ppl":
        return item_fingerprint("", [r.context + r.continuation for r in inst.requests], inst.gold)
    return item_fingerprint(inst.context, [task.cfg.target_delimiter + c for c in inst.choices], inst.gold)


class LazyBackend:
    """Loads the model only when the first uncached item needs scoring."""

    def __init__(self, name: str, path: Path, options: dict[str, Any]) -> None:
        self.name, self.path, self.options = name, path, options
        self._backend: Backend | None = None

    def get(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.name, self.path, **self.options)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


@dataclass
class TaskPlan:
    """One task of a planned evaluation: its rendered documents and which of them still need scoring."""

    task: Task
    num_fewshot: int
    cache_key: str
    limit: int | None
    instances: list[Instance]
    todo: list[Instance]

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def todo_requests(self) -> int:
        return sum(len(i.requests) for i in self.todo)


@dataclass
class EvalPlan:
    """Everything an evaluation will do, decided before any model is loaded.

    Planning resolves the checkpoint, locates and renders the data of *every* requested task (so a
    missing dataset or a broken template fails before minutes of model loading and scoring) and
    looks up which documents the store already holds.
    """

    checkpoint: Any  # cfbench.models.checkpoint.ResolvedCheckpoint
    suite: Any  # cfbench.tasks.registry.Suite
    explicit_tasks: bool
    backend: str
    options: dict[str, Any]
    bkey: dict[str, Any]
    limit: int | None
    task_limits: dict[str, int]
    results: Path
    tasks: list[TaskPlan]
    missing: list[TaskOutcome]
    num_fewshot: int | None = None  # the user's override (None: each task's own count)

    @property
    def n_docs(self) -> int:
        return sum(len(t.instances) for t in self.tasks)

    @property
    def n_todo(self) -> int:
        return sum(len(t.todo) for t in self.tasks)

    @property
    def todo_requests(self) -> int:
        return sum(t.todo_requests for t in self.tasks)

    def describe(self) -> str:
        """One line: ``NAME: T tasks, D documents (S to score now, the rest cached)``."""
        name = self.checkpoint.name
        head = f"{name}: {len(self.tasks)} task(s), {self.n_docs:,} documents"
        if self.missing:
            head += f" ({len(self.missing)} task(s) without data skipped: {', '.join(m.task for m in self.missing)})"
        if self.n_todo == 0:
            return f"{head}; all cached, nothing to score"
        return f"{head}; {self.n_todo:,} to score now ({self.todo_requests:,} requests), the rest cached"


def describe_plans(plans: Sequence[EvalPlan]) -> str:
    """The line printed before scoring starts: checkpoints × tasks × documents, and what is cached."""
    n_tasks = len({t.name for p in plans for t in p.tasks})
    docs = sum(p.n_docs for p in plans)
    todo = sum(p.n_todo for p in plans)
    reqs = sum(p.todo_requests for p in plans)
    head = f"scoring plan: {len(plans)} checkpoint(s) × {n_tasks} task(s) = {docs:,} documents"
    if todo == 0:
        return f"{head}; all cached, nothing to score"
    return f"{head}; {todo:,} to score now ({reqs:,} requests), {docs - todo:,} cached"


def plan_evaluation(
    checkpoint: str,
    *,
    tasks: Sequence[str] | None = None,
    suite: str | None = "paper",
    limit: int | None = None,
    task_limits: dict[str, int] | None = None,
    num_fewshot: int | None = None,
    backend: str = "hf",
    backend_options: dict[str, Any] | None = None,
    base: str | None = None,
    data_dir: str | Path | None = None,
    results: str | Path = "results",
    strict_data: bool | None = None,
) -> EvalPlan:
    """Validate the inputs and decide what :func:`run_plan` will score; loads no model.

    Tasks whose data cannot be found are skipped and reported (``missing``) when they come from a
    suite; explicitly named tasks (``tasks=``) must exist (``strict_data`` overrides).
    """
    task_limits = dict(task_limits or {})
    check_limits(limit, task_limits)
    check_num_fewshot(num_fewshot)
    tasks = check_task_names(tasks)
    checkpoint = checkpoint_spec(checkpoint)
    options = dict(backend_options or {})
    check_backend_options(backend, options)  # before the checkpoint is resolved (maybe downloaded)
    suite_obj = load_suite(suite or "paper")
    names = list(tasks) if tasks else suite_obj.tasks
    strict = bool(tasks) if strict_data is None else strict_data
    sources = default_sources(data_dir)
    store = ResultStore(Path(results))
    store.require_writable()  # before any model is loaded: a read-only store (the paper's) takes no runs
    ckpt = resolve_checkpoint(checkpoint, base=base)
    require_finite_weights(ckpt.path, ckpt.content_hash, ckpt.name)
    bkey = backend_key(backend, options, ckpt.path)
    planned, missing = plan_tasks(
        names, sources=sources, suite=suite_obj, store=store, ckpt=ckpt, options=options, bkey=bkey,
        strict=strict, limit=limit, task_limits=task_limits, num_fewshot=num_fewshot,
    )  # fmt: skip
    if any(tp.todo for tp in planned):  # scoring ahead: an unwritable or full store is refused now, not after it
        store.require_room()
    return EvalPlan(
        ckpt,
        suite_obj,
        bool(tasks),
        backend,
        options,
        bkey,
        limit,
        task_limits,
        Path(results),
        planned,
        missing,
        num_fewshot,
    )


def check_limits(limit: int | None, task_limits: dict[str, int]) -> None:
    """Refuse a zero or negative ``--limit`` / ``--task-limit`` before anything is resolved or loaded,
    naming the flag, since an empty selection would store a run that scored nothing."""
    for t, n in [("--limit", limit), *((f"--task-limit {k}", v) for k, v in task_limits.items())]:
        if n is not None and n <= 0:
            raise CfbenchError(f"{t} must be a positive number of documents, got {n}")


def check_num_fewshot(num_fewshot: int | None) -> None:
    """Refuse a negative ``--num-fewshot``: Python's ``pool[:-1]`` would take all but one example of the
    few-shot pool (a 297-shot prompt, left-truncated) and store the run as if it were asked for."""
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int)
                                    or num_fewshot < 0):  # fmt: skip
        raise CfbenchError(f"--num-fewshot must be 0 or more in-context examples, got {num_fewshot!r}")


def check_task_names(tasks: Sequence[str] | None) -> list[str] | None:
    """``tasks`` without blank names; None stays None (the suite). Given but naming no task
    (``--tasks ""`` or ``--tasks ,``) is refused: it used to fall back to the whole suite."""
    if tasks is None:
        return None
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [p.strip() for t in tasks for p in t.split(",") if p.strip()]
    if not names:
        raise CfbenchError(f"--tasks {','.join(tasks)!r} names no task: pass e.g. --tasks copa,boolq, or leave "
                           "--tasks out to run the suite")  # fmt: skip
    return names


def checkpoint_spec(checkpoint: str) -> str:
    """The checkpoint part of an ``eval`` argument: ``ckpt:`` is stripped, and a ``run:`` reference
    (a stored run, which has no weights to score) is refused with the commands that can show it."""
    if checkpoint.startswith("run:"):
        raise CfbenchError(
            f"{checkpoint!r} names a stored run, which eval cannot score: pass a checkpoint, or view the run "
            "with `cfbench compare` / `cfbench leaderboard`"
        )
    return checkpoint.removeprefix("ckpt:")


def plan_tasks(
    names: Sequence[str],
    *,
    sources: Any,
    suite: Suite,
    store: ResultStore,
    ckpt: ResolvedCheckpoint,
    options: dict[str, Any],
    bkey: dict[str, Any],
    strict: bool,
    limit: int | None,
    task_limits: dict[str, int],
    num_fewshot: int | None,
) -> tuple[list[TaskPlan], list[TaskOutcome]]:
    """Render every task's documents and look up which are cached, in ``names`` order.

    Rendering all tasks up front is what makes a missing dataset or a broken template fail before
    the model loads. Returns the planned tasks and the (non-strict) tasks skipped for missing data.
    """
    planned: list[TaskPlan] = []
    missing: list[TaskOutcome] = []
    oc_requests = None  # OpenCompass PPL requests depend on the tokenizer: loaded once, only if a task needs it
    for tname in names:
        task = get_task(tname, sources)
        if task.located() is None:
            missing.append(missing_outcome(task, tname, strict))
            continue
        k = suite.shots(tname, task.cfg.num_fewshot, num_fewshot)  # --num-fewshot > suite > task YAML
        ckey = cache_key(ckpt.content_hash, task, k, bkey)
        task_limit = task_limits.get(tname, limit)
        if task.cfg.scoring == "oc_ppl" and oc_requests is None:
            oc_requests = oc_requests_for(ckpt, options, bkey)
        instances = task.instances(limit=task_limit, num_fewshot=k, oc_requests=oc_requests)
        done = store.cached_doc_ids(ckey)
        todo = [inst for inst in instances if inst.doc_id not in done]
        planned.append(TaskPlan(task, k, ckey, task_limit, instances, todo))
    return planned, missing


def missing_outcome(task: Task, tname: str, strict: bool) -> TaskOutcome:
    """The outcome of a task whose data is not there: a suite run reports it and goes on, while an
    explicitly named (strict) task raises the one-line "how to supply it" error instead."""
    if strict:
        task.require()  # raises the one-line "how to supply it" error
    return TaskOutcome(
        tname, task.cfg.config_hash, "", 0, 0, {}, task.cfg.primary_metric, missing=f"no data for {tname}"
    )


def oc_requests_for(ckpt: ResolvedCheckpoint, options: dict[str, Any], bkey: dict[str, Any]) -> Any:
    """OpenCompass PPL requests for this checkpoint's tokenizer, truncated to the backend's length
    (the key's ``max_length`` or ``max_model_len``), since the rendered requests depend on both."""
    max_len = bkey.get("max_length") or bkey.get("max_model_len")
    return load_oc_requests(ckpt.path, bool(options.get("trust_remote_code", False)), int(max_len) if max_len else None)


def evaluate(
    checkpoint: str,
    *,
    tasks: Sequence[str] | None = None,
    suite: str | None = "paper",
    limit: int | None = None,
    task_limits: dict[str, int] | None = None,
    num_fewshot: int | None = None,
    backend: str = "hf",
    backend_options: dict[str, Any] | None = None,
    base: str | None = None,
    data_dir: str | Path | None = None,
    results: str | Path = "results",
    name: str | None = None,
    method: str | None = None,
    hparams: dict[str, Any] | None = None,
    tuned_from: str | None = None,
    strict_data: bool | None = None,
    progress: bool | str = True,
) -> EvalResult:
    """Score ``checkpoint`` on ``tasks`` (or ``suite``), reusing every cached item.

    ``progress``: ``"auto"``/True (a bar on a terminal, plain periodic lines elsewhere, and the plan
    line before scoring), ``"lines"``, ``"bar"``, or ``"off"``/False.
    """
    t0 = time.perf_counter()
    plan = plan_evaluation(
        checkpoint, tasks=tasks, suite=suite, limit=limit, task_limits=task_limits, num_fewshot=num_fewshot,
        backend=backend, backend_options=backend_options, base=base, data_dir=data_dir, results=results,
        strict_data=strict_data,
    )  # fmt: skip
    mode = progress_mode(progress)
    if mode != "off":
        print(f"[cfbench] {plan.describe()}", file=sys.stderr, flush=True)
    return run_plan(plan, name=name, method=method, hparams=hparams, tuned_from=tuned_from, progress=mode, t0=t0)


def progress_mode(progress: bool | str) -> str:
    """Normalise the ``progress`` argument: True → ``auto``, False → ``off``."""
    if progress is True:
        return "auto"
    if progress is False or progress is None:
        return "off"
    if progress not in ("auto", "bar", "lines", "off"):
        raise CfbenchError(f"progress must be auto, bar, lines or off, got {progress!r}")
    return str(progress)


def checkpoint_provenance(path: Path | str, spec: str | None = None) -> dict[str, Any]:
    """``method``, ``base`` and ``hparams`` from the cfbench manifest next to a checkpoint, else ``{}``.

    ``cfbench finetune`` / ``merge`` write ``cfbench_manifest.json`` into the checkpoint folder; without
    this, a run of one of cfbench's own fine-tunes was stored with no method or base, and the
    leaderboard could not tell an AdamW run from a SAM run. Explicit arguments to :func:`run_plan`
    win; a missing or unreadable manifest just means "unknown" (the run is still scored).
    """
    candidates = [Path(path)]
    if spec:
        candidates.append(Path(spec).expanduser())
    for cand in candidates:
        if not cand.exists():  # a built-in name or hub id: nothing next to it
            continue
        file = (cand if cand.is_dir() else cand.parent) / MANIFEST
        try:
            manifest = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or "cfbench_manifest" not in manifest:
            continue
        base = manifest.get("base")
        out: dict[str, Any] = {}
        if manifest.get("method"):
            out["method"] = str(manifest["method"])
        if isinstance(base, dict) and (base.get("name") or base.get("spec")):
            out["base"] = str(base.get("name") or base.get("spec"))
        if isinstance(manifest.get("hyperparameters"), dict):
            out["hparams"] = manifest["hyperparameters"]
        return out
    return {}


def run_plan(
    plan: EvalPlan,
    *,
    name: str | None = None,
    method: str | None = None,
    hparams: dict[str, Any] | None = None,
    tuned_from: str | None = None,
    progress: bool | str = "auto",
    t0: float | None = None,
) -> EvalResult:
    """Score what ``plan`` left to score (loading the model only if something is) and store the run."""
    t0 = time.perf_counter() if t0 is None else t0
    mode = progress_mode(progress)
    ckpt, store = plan.checkpoint, ResultStore(plan.results)
    outcomes, selections, scored_total = score_plan(plan, store, mode)
    order_outcomes(plan, outcomes)
    scored = [o for o in outcomes if o.missing is None]
    run_key = digest(
        "run/v1", ckpt.content_hash, sorted((o.task, o.cache_key) for o in scored), plan.limit, plan.task_limits, name
    )
    existing = _find_run_by_key(store, run_key)
    if existing is not None and scored_total == 0:
        return EvalResult(existing, name or ckpt.name, ckpt.content_hash, outcomes, True, time.perf_counter() - t0)

    run = run_record(
        plan, outcomes, run_key, selections, name=name, method=method, hparams=hparams, tuned_from=tuned_from
    )
    run_id = store.append_run(run, task_scores(scored))
    return EvalResult(run_id, run.name, ckpt.content_hash, outcomes, False, time.perf_counter() - t0, scored_total)


def score_plan(plan: EvalPlan, store: ResultStore, mode: str) -> tuple[list[TaskOutcome], dict[str, list[int]], int]:
    """Score every planned task's uncached documents and aggregate each task from the store.

    Returns the outcomes (missing tasks first, then the planned ones), the document ids of every
    ``--limit``-ed task (so the run records exactly which documents it covers) and the number of
    documents scored now. The model loads only when a task has something to score, and is closed
    whatever happens.
    """
    lazy = LazyBackend(plan.backend, plan.checkpoint.path, plan.options)
    outcomes: list[TaskOutcome] = list(plan.missing)
    selections: dict[str, list[int]] = {}  # with --limit: exactly which documents the run covers
    scored_total = 0
    bar = Progress(plan.checkpoint.name, plan.todo_requests, mode=mode if plan.todo_requests else "off")
    try:
        with bar:
            for tp in plan.tasks:
                if tp.todo:
                    bar.set_detail(f"{tp.name} ({len(tp.todo):,} docs)")
                    scored_total += score_task(tp.task, tp.todo, tp.cache_key, lazy, store, bar)
                outcome, wanted = task_outcome(tp, store, plan.results)
                if tp.limit is not None:
                    selections[tp.name] = sorted(wanted)
                outcomes.append(outcome)
    finally:
        lazy.close()
    return outcomes, selections, scored_total


def task_outcome(tp: TaskPlan, store: ResultStore, results: Path) -> tuple[TaskOutcome, set[Any]]:
    """A task's metrics from the store's items for exactly its planned documents (and those ids).

    Reading back from the store, rather than from what was just scored, makes a cached rerun and a
    fresh run aggregate the same rows; a short read means the store lost items and is refused.
    """
    items = store.items(cache_keys=[tp.cache_key])
    wanted = {inst.doc_id for inst in tp.instances}
    items = items[items["doc_id"].isin(wanted)].drop_duplicates(["doc_id"], keep="last")
    if len(items) != len(wanted):
        raise CfbenchError(
            f"{tp.name}: store has {len(items)} of {len(wanted)} items after scoring; the results dir "
            f"{results} may be corrupted — run `cfbench store compact` or use a fresh --results"
        )
    aggregate = AGGREGATES[tp.task.cfg.aggregate]  # item mean, or OpenCompass's mean of subsets
    metrics = {m: aggregate(items[m].to_numpy(), items["subset"].to_numpy()) for m in tp.task.cfg.metrics}
    outcome = TaskOutcome(
        tp.name,
        tp.task.cfg.config_hash,
        tp.cache_key,
        len(items),
        len(tp.todo),
        metrics,
        tp.task.cfg.primary_metric,
    )
    return outcome, wanted


def order_outcomes(plan: EvalPlan, outcomes: list[TaskOutcome]) -> None:
    """Sort ``outcomes`` in place into the suite's order (explicit --tasks: scored tasks first, then
    those without data), so tables and the run record list tasks the way the user asked for them."""
    scored_first = [*(tp.name for tp in plan.tasks), *(m.task for m in plan.missing)]
    names = scored_first if plan.explicit_tasks else plan.suite.tasks
    order = {t: i for i, t in enumerate(names)}
    outcomes.sort(key=lambda o: order.get(o.task, len(order)))


def run_record(
    plan: EvalPlan,
    outcomes: Sequence[TaskOutcome],
    run_key: str,
    selections: dict[str, list[int]],
    *,
    name: str | None,
    method: str | None,
    hparams: dict[str, Any] | None,
    tuned_from: str | None,
) -> RunRecord:
    """The run's row: what was scored, how, and where the checkpoint came from.

    Explicit ``method`` / ``hparams`` / ``tuned_from`` win over the checkpoint's manifest
    (:func:`checkpoint_provenance`); ``extra`` keeps what a later compare needs to pair runs
    (run key, cache keys, document selections, few-shot counts, tokenizer hash).
    """
    ckpt, suite_obj = plan.checkpoint, plan.suite
    scored = [o for o in outcomes if o.missing is None]
    made = checkpoint_provenance(ckpt.path, ckpt.spec)
    return RunRecord(
        name=name or ckpt.name,
        checkpoint_name=ckpt.name,
        source="cfbench",
        checkpoint_path=str(ckpt.path),
        checkpoint_hash=ckpt.content_hash,
        base=tuned_from or made.get("base"),
        method=method or made.get("method"),
        hparams=dict(hparams or made.get("hparams") or {}),
        suite=suite_obj.name if not plan.explicit_tasks else "custom",
        suite_hash=suite_obj.suite_hash() if not plan.explicit_tasks else digest([o.config_hash for o in scored]),
        task_hashes={o.task: o.config_hash for o in scored},
        backend=plan.backend,
        backend_settings=plan.bkey,
        dtype=str(plan.bkey["dtype"]),
        limit=plan.limit,
        num_fewshot=plan.num_fewshot,
        extra={
            "run_key": run_key,
            "cache_keys": {o.task: o.cache_key for o in scored},
            "missing": [o.task for o in outcomes if o.missing],
            "spec": ckpt.spec,
            "doc_ids": selections,
            "task_limits": plan.task_limits,
            "fewshot": {tp.name: tp.num_fewshot for tp in plan.tasks},
            "tokenizer_hash": tokenizer_hash(ckpt.path),
        },
    )


def task_scores(scored: Sequence[TaskOutcome]) -> list[TaskScore]:
    """One score row per (task, metric) of the scored tasks: the store's ``scores`` table."""
    return [
        TaskScore(task=o.task, metric=m, value=v, n_items=o.n_items, task_hash=o.config_hash, cache_key=o.cache_key)
        for o in scored
        for m, v in o.metrics.items()
    ]


def _find_run_by_key(store: Any, run_key: str) -> str | None:
    runs = store.runs()
    if runs.empty:
        return None
    for _, row in runs.sort_values("created_at", ascending=False).iterrows():
        try:
            if json.loads(row["extra_json"] or "{}").get("run_key") == run_key:
                return str(row["run_id"])
        except (TypeError, json.JSONDecodeError):
            continue
    return None


def score_task(task: Task, todo: list[Instance], ckey: str, lazy: LazyBackend, store: Any, bar: Progress) -> int:
    """Score ``todo`` in chunks, appending each chunk to the store as soon as it is done."""
    backend = lazy.get()
    start, done, size = 0, 0, FIRST_CHUNK_DOCS
    while start < len(todo):
        # Small first chunks lose little to a kill; chunks grow while they stay short, so the
        # backend still gets big batches to sort by length.
        chunk = todo[start : start + size]
        t_chunk = time.perf_counter()
        reqs = [r for inst in chunk for r in inst.requests]
        results = score_requests(backend, reqs, bar.advance)
        scores, pos = [], 0
        for inst in chunk:
            k = len(inst.requests)
            scores.append(task.score(inst, results[pos : pos + k]))
            pos += k
        store.append_items(items_frame(task, ckey, scores, chunk))
        done += len(chunk)
        start += len(chunk)
        if time.perf_counter() - t_chunk < CHUNK_SECONDS / 2:
            size = min(size * 2, CHUNK_DOCS)
    return done
