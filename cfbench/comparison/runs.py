"""Which runs take part in a comparison: stored runs are looked up, checkpoints scored (cached) first.

What an argument means is decided by :mod:`cfbench.comparison.refs`; this module plans, announces and
scores the checkpoints among them (optionally over workers) and labels every run for the tables.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cfbench.backends import check_backend_options
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
    """``--noise-floor RUN``: a stored run of the base scored another way (the user's own step)."""
    try:
        ref = resolve_ref(spec, store)
    except CfbenchError as exc:
        raise CfbenchError(f"--noise-floor {spec!r}: {exc}; or name a floor recipe: dtype, dtype:NAME, plain") from exc
    if ref.kind != "run" or ref.record is None:
        raise CfbenchError(
            f"--noise-floor {spec!r} is not a stored run: pass `dtype` (compare re-scores the base in bfloat16), "
            "or score the base checkpoint another way first (e.g. `cfbench eval BASE --dtype bfloat16 --name "
            "base-bf16`, `--backend vllm`) and pass that run's name"
        )
    return ref.record


#: ``--noise-floor`` recipes (compare re-scores the base itself): ``dtype`` (bfloat16, or float32 for a
#: bfloat16 base), ``dtype:NAME``, and ``plain`` (the hf backend's plain scoring path: numerically nil, ~1e-11
#: nats, kept to check the tree path). Measured sizes and costs: docs/metrics.md.
FLOOR_RECIPES = ("dtype", "dtype:NAME", "plain")
FLOOR_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class FloorRecipe:
    """A floor compare scores itself: the base, its scoring changed by ``options`` (a change users meet)."""

    spec: str
    options: dict[str, Any]

    @property
    def change(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))


def floor_recipe(spec: str, backend_options: dict[str, Any] | None) -> FloorRecipe | None:
    """The recipe ``spec`` names (None: it names a stored run); a bad dtype is one line, before any work."""
    if spec == "plain":
        return FloorRecipe(spec, {"scoring_path": "plain"})
    if spec != "dtype" and not spec.startswith("dtype:"):
        return None
    base = (backend_options or {}).get("dtype") or "float32"
    want = spec.partition(":")[2] or ("float32" if base == "bfloat16" else "bfloat16")
    if want not in FLOOR_DTYPES:
        raise CfbenchError(f"--noise-floor {spec!r}: unknown dtype {want!r}; choose one of {', '.join(FLOOR_DTYPES)}")
    if want == base:
        raise CfbenchError(
            f"--noise-floor {spec!r} re-scores the base in its own dtype {base}: its floor would be exactly 0; "
            f"name another dtype, e.g. --noise-floor dtype:{'bfloat16' if base != 'bfloat16' else 'float32'}"
        )
    return FloorRecipe(spec, {"dtype": want})


def plan_floor(spec: str, base: str, store: ResultStore, eval_kwargs: dict[str, Any] | None) -> RunRecord | FloorRecipe:
    """``--noise-floor``, checked before anything is scored: a stored run, or a recipe whose base is a checkpoint
    and whose option the backend takes (``eval_kwargs``: compare's, for the backend and its options).

    A recipe name that is also a stored run's name is refused (as :mod:`cfbench.comparison.refs` refuses an
    argument with two meanings): ``run:NAME`` picks the run.
    """
    backend = (eval_kwargs or {}).get("backend") or "hf"
    options = dict((eval_kwargs or {}).get("backend_options") or {})
    recipe = floor_recipe(spec, options)
    if recipe is None:
        return floor_record(spec, store)
    try:
        check_backend_options(backend, {**options, **recipe.options})
    except CfbenchError as exc:
        raise CfbenchError(
            f"--noise-floor {spec}: the {backend} backend cannot re-score with {recipe.change} ({exc}); score the "
            "floor yourself (cfbench eval BASE ...) and pass its run name"
        ) from exc
    clash = store.match_run(spec)
    if clash is not None:
        raise CfbenchError(
            f"--noise-floor {spec!r} is ambiguous: it is a floor recipe and the stored run {clash.name!r}; write "
            f"run:{spec} for the stored run, or rename it"
        )
    if resolve_ref(base, store).kind != "checkpoint":
        raise CfbenchError(
            f"--noise-floor {spec} re-scores the base checkpoint, but the base {base!r} is a stored run: pass the "
            "base as a checkpoint (ckpt:SPEC), or score the floor yourself (cfbench eval BASE --dtype bfloat16 "
            "--name base-bf16) and pass --noise-floor base-bf16"
        )
    return recipe


def score_floor(
    floor: RunRecord | FloorRecipe | None,
    base: str,
    store: ResultStore,
    eval_kwargs: dict[str, Any],
    runner: Any = None,
) -> RunRecord | None:
    """The floor run: a stored one as is; a recipe's by scoring the base with its options (cached like any run)."""
    if floor is None or isinstance(floor, RunRecord):
        return floor
    spec = resolve_ref(base, store).spec
    kwargs = dict(eval_kwargs)
    kwargs["backend_options"] = {**(kwargs.get("backend_options") or {}), **floor.options}
    kwargs["name"] = f"{spec} ({floor.change})"  # e.g. "smollm2-135m (dtype=bfloat16)"
    return resolve_runs([f"ckpt:{spec}"], store, eval_kwargs=kwargs, runner=runner)[0].record


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


#: Backend settings that say nothing about the numbers (bookkeeping), left out of a floor's description.
_NOT_A_CHANGE = frozenset({"scoring_version"})


def floor_change(base: RunRecord, floor: RunRecord) -> str | None:
    """What the floor run changed in the base's scoring, from the two records: e.g. ``dtype bfloat16 (base
    float32)``. None where the records hold no settings to compare (imported runs)."""
    a = {"backend": base.backend, **(base.backend_settings or {})}
    b = {"backend": floor.backend, **(floor.backend_settings or {})}
    if not base.backend_settings or not floor.backend_settings:
        return None
    diff = [k for k in sorted(set(a) | set(b)) if k not in _NOT_A_CHANGE and a.get(k) != b.get(k)]
    return ", ".join(f"{k} {b.get(k)} (base {a.get(k)})" for k in diff) or "same settings"
