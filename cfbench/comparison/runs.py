"""Which runs take part in a comparison: stored runs are looked up, checkpoints scored (cached) first.

What an argument means is decided by :mod:`cfbench.comparison.refs`; this module plans, announces and
scores the checkpoints among them (optionally over workers) and labels every run for the tables.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cfbench.backends.reuse import reuse_loads
from cfbench.comparison.refs import resolve_ref
from cfbench.engine import describe_plans, plan_evaluation, progress_mode, run_plan
from cfbench.errors import CfbenchError
from cfbench.scale.workers import score_plans
from cfbench.store import ResultStore, RunRecord


@dataclass
class RunRef:
    """A run taking part in a comparison, with the label it gets in tables."""

    label: str
    record: RunRecord
    evaluated_now: bool = False
    scored_items: int = 0
    store: ResultStore | None = None  # the run's own store when it is not the compared one (paper: runs)


def check_labels(labels: Sequence[str] | None, n_runs: int) -> None:
    """One non-blank label per run (``--labels ","`` gave rows with no name), checked before scoring."""
    if labels is None:
        return
    if len(labels) != n_runs:
        raise CfbenchError(f"--labels has {len(labels)} names for {n_runs} runs; give one label per run")
    blank = [i + 1 for i, x in enumerate(labels) if not str(x).strip()]
    if blank:
        raise CfbenchError(
            f"--labels {','.join(labels)!r}: label {', '.join(map(str, blank))} is empty; give every run a name, "
            "e.g. --labels base,tuned"
        )


def resolve_runs(
    specs: Sequence[str],
    store: ResultStore,
    *,
    labels: Sequence[str] | None = None,
    eval_kwargs: dict[str, Any] | None = None,
    runner: Any = None,
) -> list[RunRef]:
    """Stored runs are looked up; checkpoints are planned, announced, then scored (cached).

    What an argument means follows :mod:`cfbench.comparison.refs` (``run:NAME`` / ``ckpt:SPEC``; an argument
    that could be both is refused). All checkpoints are planned first, so a missing dataset or an
    unknown checkpoint fails before any model is loaded, and one line says how much will be scored.
    ``runner`` (:func:`cfbench.scale.workers.make_runner`: local worker processes or Ray) spreads
    every (checkpoint, task) job of every checkpoint over its workers; the run records are then
    written from the filled cache exactly as a one-process compare writes them.
    """
    check_labels(labels, len(specs))
    kwargs = dict(eval_kwargs or {})
    mode = progress_mode(kwargs.pop("progress", "auto"))
    run_opts = {k: kwargs.pop(k) for k in ("name", "method", "hparams", "tuned_from") if k in kwargs}
    resolved = [resolve_ref(spec, store) for spec in specs]
    plans = {
        i: plan_evaluation(ref.spec, results=store.root, **kwargs)
        for i, ref in enumerate(resolved)
        if ref.kind == "checkpoint"
    }
    if plans and mode != "off":
        print(f"[cfbench] {describe_plans(list(plans.values()))}", file=sys.stderr, flush=True)
        for plan in plans.values():
            print(f"[cfbench]   {plan.describe()}", file=sys.stderr, flush=True)
    scored_by_workers: dict[int, int] = {}
    if runner is not None and plans:
        counts = score_plans(list(plans.values()), kwargs, runner, progress=mode != "off")
        scored_by_workers = dict(zip(plans, counts, strict=True))
        plans = {i: plan_evaluation(resolved[i].spec, results=store.root, **kwargs) for i in plans}  # all cached now
    refs: list[RunRef] = []
    seen: dict[str, int] = {}
    with reuse_loads():  # adapters of one base (and the base) are scored on one load of it
        scored = {i: run_plan(plans[i], progress="off" if runner is not None else mode, **run_opts) for i in plans}
    for i, ref_ in enumerate(resolved):
        if i in plans:
            res = scored[i]
            n = scored_by_workers.get(i, res.scored_items)
            ref = RunRef(ref_.spec, store.find_run(res.run_id), evaluated_now=True, scored_items=n)
        else:
            assert ref_.record is not None
            # A paper run keeps its prefix in tables: the reader sees that its numbers are the paper's.
            label = f"paper:{ref_.record.name}" if ref_.record.source == "paper" else ref_.record.name
            ref = RunRef(label, ref_.record, store=ref_.store)
        ref.label = labels[i] if labels else ref.label
        if ref.label in seen:  # the same name twice (e.g. a checkpoint against itself) stays distinguishable
            seen[ref.label] += 1
            ref.label = f"{ref.label} #{seen[ref.label]}"
        else:
            seen[ref.label] = 1
        refs.append(ref)
    return refs


def floor_record(spec: str, store: ResultStore) -> RunRecord:
    """``--noise-floor``: a stored run (scoring the base another way is the user's explicit step)."""
    ref = resolve_ref(spec, store)
    if ref.kind != "run" or ref.record is None:
        raise CfbenchError(
            f"--noise-floor {spec!r} is not a stored run: score the base checkpoint another way first (e.g. "
            "`cfbench eval BASE --backend vllm`, `--dtype bfloat16` or `--model-args scoring_path=plain`) "
            "and pass that run's name"
        )
    return ref.record


def check_floor(floor: RunRecord, base: RunRecord) -> None:
    if floor.run_id == base.run_id:
        raise CfbenchError(
            f"--noise-floor {floor.name!r} is the base run itself: its floor would be exactly 0; pass a run of "
            "the base checkpoint scored another way (backend, dtype or scoring path)"
        )
    if floor.checkpoint_hash and base.checkpoint_hash and floor.checkpoint_hash != base.checkpoint_hash:
        raise CfbenchError(
            f"--noise-floor {floor.name!r} scored checkpoint {floor.checkpoint_name!r}, not the base "
            f"{base.checkpoint_name!r} (content hashes differ): the floor must be the base scored another way"
        )
