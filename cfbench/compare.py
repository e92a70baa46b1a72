"""``compare`` and ``regress``: turn stored (or freshly scored) runs into the forgetting report.

Each argument is either a checkpoint (scored through the engine's cache, so a repeat call scores
nothing) or the name/id of a run already in the store (native or imported); :mod:`cfbench.refs`
decides which, and refuses an argument that could be both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.report.table import ComparisonReport, build_report
from cfbench.store import ResultStore, RunRecord
from cfbench.tasks.registry import Suite, get_task_config, load_suite


@dataclass
class RunRef:
    """A run taking part in a comparison, with the label it gets in tables."""

    label: str
    record: RunRecord
    evaluated_now: bool = False
    scored_items: int = 0
    store: ResultStore | None = None  # the run's own store when it is not the compared one (paper: runs)


def resolve_runs(
    specs: Sequence[str],
    store: ResultStore,
    *,
    labels: Sequence[str] | None = None,
    eval_kwargs: dict[str, Any] | None = None,
    runner: Any = None,
) -> list[RunRef]:
    """Stored runs are looked up; checkpoints are planned, announced, then scored (cached).

    What an argument means follows :mod:`cfbench.refs` (``run:NAME`` / ``ckpt:SPEC``; an argument
    that could be both is refused). All checkpoints are planned first, so a missing dataset or an
    unknown checkpoint fails before any model is loaded, and one line says how much will be scored.
    ``runner`` (:func:`cfbench.scale.workers.make_runner`: local worker processes or Ray) spreads
    every (checkpoint, task) job of every checkpoint over its workers; the run records are then
    written from the filled cache exactly as a one-process compare writes them.
    """
    import sys

    from cfbench.engine import describe_plans, plan_evaluation, progress_mode, run_plan
    from cfbench.refs import resolve_ref

    if labels is not None and len(labels) != len(specs):
        raise CfbenchError(f"--labels has {len(labels)} names for {len(specs)} runs; give one label per run")
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
        from cfbench.scale.workers import score_plans

        counts = score_plans(list(plans.values()), kwargs, runner, progress=mode != "off")
        scored_by_workers = dict(zip(plans, counts, strict=True))
        plans = {i: plan_evaluation(resolved[i].spec, results=store.root, **kwargs) for i in plans}  # all cached now
    refs: list[RunRef] = []
    seen: dict[str, int] = {}
    for i, ref_ in enumerate(resolved):
        if i in plans:
            res = run_plan(plans[i], progress="off" if runner is not None else mode, **run_opts)
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


def _primary_metric(task: str) -> str:
    try:
        return get_task_config(task).primary_metric
    except CfbenchError:
        return "acc"


def _metric_present(task: str, has: Any) -> str | None:
    """The task's primary metric, else ``acc`` (what imported summaries report), if the run has it."""
    for m in dict.fromkeys((_primary_metric(task), "acc")):
        if has(m):
            return m
    return None


def run_items(store: ResultStore, record: RunRecord, tasks: Sequence[str]) -> pd.DataFrame:
    """All stored item columns of the items ``record`` scored on ``tasks``, one row per (task, doc_id).

    A run scored with ``--limit N`` contributes exactly the documents it selected, even when the
    shared item cache holds more.
    """
    items = store.items(run_ids=[record.run_id], tasks=list(tasks))
    if items.empty:
        return items
    selection = (record.extra or {}).get("doc_ids") or {}
    if selection:  # a --limit run covers exactly these documents, even if the cache holds more
        keep = pd.Series(False, index=items.index)
        for task, ids in selection.items():
            keep |= (items["task"] == task) & items["doc_id"].isin(ids)
        items = items[keep]
    return items.drop_duplicates(["task", "doc_id"], keep="last")


def gather(
    store: ResultStore,
    refs: Sequence[RunRef],
    tasks: Sequence[str],
    used: dict[str, set[str]] | None = None,
    raw: dict[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Item rows (``run, task, doc_id, subset, score, item_hash, task_hash``) and task-level rows
    (``run, task, value, subset``).

    A run scored with ``--limit N`` contributes exactly the documents it selected, even when the
    shared item cache holds more. ``item_hash`` (the item's fingerprint, null for items stored before
    it existed) and ``task_hash`` decide which items may be paired (:func:`cfbench.stats.align_items`).
    ``raw`` (if given) receives each run's full item rows by label (:func:`run_items`), for the drift metrics.
    """
    item_frames, score_frames = [], []
    wanted = set(tasks)
    used = used if used is not None else {}
    home = store
    for ref in refs:
        rid = ref.record.run_id
        store = ref.store or home
        items = run_items(store, ref.record, list(wanted))
        if raw is not None:
            raw[ref.label] = items
        if not items.empty:
            for task, grp in items.groupby("task"):
                metric = _metric_present(str(task), lambda m, g=grp: m in g and not g[m].isna().all())
                if metric is None:
                    continue
                used.setdefault(str(task), set()).add(metric)
                item_frames.append(
                    pd.DataFrame(
                        {
                            "run": ref.label,
                            "task": task,
                            "doc_id": grp["doc_id"].astype(int),
                            "subset": grp["subset"],
                            "score": grp[metric].astype(float),
                            "item_hash": grp["item_hash"].astype(object) if "item_hash" in grp else None,
                            "task_hash": grp["task_hash"].astype(object) if "task_hash" in grp else None,
                        }
                    )
                )
        scores = store.task_scores(run_ids=[rid])
        if not scores.empty:
            scores = scores[scores["task"].isin(wanted)]
            parts = []
            item_tasks = set(items["task"]) if not items.empty else set()
            for task, grp in scores.groupby("task"):
                metric = _metric_present(str(task), lambda m, g=grp: bool((g["metric"] == m).any()))
                if metric is None:
                    continue
                if task not in item_tasks:  # item-level rows win in the report; count only what is used
                    used.setdefault(str(task), set()).add(metric)
                parts.append(grp[grp["metric"] == metric])
            scores = pd.concat(parts) if parts else scores.iloc[0:0]
            if len(scores):
                cols = {"run": ref.label, "task": scores["task"], "value": scores["value"].astype(float)}
                if "subset" in scores:
                    cols["subset"] = scores["subset"]
                score_frames.append(pd.DataFrame(cols))
    items_df = pd.concat(item_frames, ignore_index=True) if item_frames else None
    scores_df = pd.concat(score_frames, ignore_index=True) if score_frames else None
    return items_df, scores_df  # type: ignore[return-value]


def _subgroups(suite: Suite) -> dict[str, dict[str, str]]:
    out = {}
    for t in suite.tasks:
        groups = get_task_config(t).subset_groups
        if groups:
            out[t] = dict(groups)
    return out


def _reference_coverage(suite: Suite) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """The paper's task lists for categories that carry the paper's names, and why tasks are missing.

    A suite reusing the paper's category names (``offline``) promises the paper's categories, so
    its coverage is judged against paper.yaml: a dropped task or an empty category is partial, not
    complete. Reasons: a task outside the suite is "not in suite X" (plus "no data offline" when its
    data cannot be found here); a suite task a run lacks is "no scores".
    """
    if suite.reference == suite.name:
        paper = suite
    else:
        try:
            paper = load_suite(suite.reference)
        except CfbenchError:
            return {}, {}
    reference = {name: tuple(paper.categories[name]) for name in suite.categories if name in paper.categories}
    reasons: dict[str, str] = {}
    in_suite = set(suite.tasks)
    for task in (t for members in reference.values() for t in members):
        if task in in_suite:
            reasons[task] = "no scores"
            continue
        why = f"not in suite {suite.name}"
        try:
            from cfbench.tasks.registry import get_task

            if get_task(task).located() is None:
                why += ": no data offline"
        except CfbenchError:
            why += ": no task config"
        reasons[task] = why
    return reference, reasons


def _refuse_other_rules(store: ResultStore, refs: Sequence[RunRef], items: Any, scores: Any, suite: Suite) -> None:
    """A run with no score on the suite but scores on its twin suite's tasks was scored by the other
    rules (``paper``: OpenCompass ``oc_*`` tasks; ``lmeval``/``offline``: lm-eval ones): say so, and
    which suite to use, instead of "no scores". The two are never mixed in one report."""
    have = set()
    for frame in (items, scores):
        if frame is not None:
            have |= set(frame["run"])
    wanted = set(suite.tasks)
    for ref in refs:
        if ref.label in have:
            continue
        stored = (ref.store or store).task_scores(run_ids=[ref.record.run_id])
        tasks = set((ref.record.task_hashes or {}).keys()) | (set(stored["task"]) if not stored.empty else set())
        twins = {t.removeprefix("oc_") for t in wanted} | {f"oc_{t}" for t in wanted}
        if tasks & (twins - wanted):
            other = "lmeval" if suite.name == "paper" else "paper"
            rule = "lm-eval" if other == "lmeval" else "OpenCompass"
            raise CfbenchError(
                f"run '{ref.label}' has no scores on suite {suite.name}: it was scored with {rule} rules "
                f"(e.g. {sorted(tasks & twins)[0]}), which never mix with this suite's; compare with --suite {other}"
            )


@dataclass
class CompareResult:
    report: ComparisonReport
    runs: list[RunRef]
    suite: Suite
    notes: list[str] = field(default_factory=list)


def compare(
    base: str,
    tuned: Sequence[str],
    *,
    suite: str = "paper",
    results: str | Path = "results",
    labels: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    confidence: float = 0.95,
    eval_kwargs: dict[str, Any] | None = None,
    noise_floor: str | None = None,
    runner: Any = None,
) -> CompareResult:
    """Score what is not yet stored and build the paper-style report of ``tuned`` against ``base``.

    Besides accuracy, every registered item metric (:mod:`cfbench.metrics`) is attached to the report
    as :class:`cfbench.signals.Signal` records per tuned run; ``noise_floor`` names a stored run of
    the base checkpoint scored another way, against which divergences are judged. ``runner``: spread
    the scoring over workers (see :func:`resolve_runs`); None scores in this process.
    """
    if not tuned:
        raise CfbenchError("compare needs a base and at least one tuned checkpoint or run")
    suite_obj = load_suite(suite)
    store = ResultStore(Path(results))
    floor_record = _floor_record(noise_floor, store) if noise_floor is not None else None  # before any scoring
    refs = resolve_runs(
        [base, *tuned], store, labels=labels, eval_kwargs={"suite": suite, **(eval_kwargs or {})}, runner=runner
    )
    used: dict[str, set[str]] = {}
    raw: dict[str, pd.DataFrame] = {}
    items, scores = gather(store, refs, suite_obj.tasks, used, raw)
    reference, reasons = _reference_coverage(suite_obj)
    if items is None and scores is None:
        raise CfbenchError(f"none of the runs has scores for suite {suite!r}; score them with `cfbench eval` first")
    _refuse_other_rules(store, refs, items, scores, suite_obj)
    report = build_report(
        refs[0].label,
        [r.label for r in refs[1:]],
        suite_obj.categories,
        items=items,
        task_scores=scores,
        extras=suite_obj.extras,
        subgroups=_subgroups(suite_obj),
        pairs=pairs,
        n_boot=n_boot,
        seed=seed,
        alpha=alpha,
        confidence=confidence,
        reference_categories=reference,
        missing_reasons=reasons,
        subset_mean_tasks=[t for t in suite_obj.tasks if get_task_config(t).aggregate == "subset_mean"],
    )
    drift_notes = _attach_drift(
        report, store, refs, suite_obj, raw, floor_record,
        n_boot=n_boot, seed=seed, confidence=confidence, data_dir=(eval_kwargs or {}).get("data_dir"),
        reference=reference, reasons=reasons,
    )  # fmt: skip
    drift_notes += _attach_indomain(report, store, refs, n_boot=n_boot, seed=seed, confidence=confidence)
    notes = report.notes + [
        f"{task}: runs were scored with different metrics ({', '.join(sorted(ms))}); its Δ mixes them"
        for task, ms in sorted(used.items())
        if len(ms) > 1
    ]
    tokenizers = {r.label: (r.record.extra or {}).get("tokenizer_hash") for r in refs}
    if len({h for h in tokenizers.values() if h}) > 1:
        notes.append(
            "the checkpoints use different tokenizers ("
            + ", ".join(f"{k}: {v[:8]}" for k, v in tokenizers.items() if v)
            + "); their log-likelihoods are over different token sequences"
        )
    limits = {r.record.limit for r in refs}
    if len(limits) > 1:
        notes.append(
            f"runs were scored with different --limit values {sorted(map(str, limits))}; "
            "Δ uses only the items both runs share"
        )
    return CompareResult(report, refs, suite_obj, notes + drift_notes)


def _floor_record(spec: str, store: ResultStore) -> RunRecord:
    """``--noise-floor``: a stored run (scoring the base another way is the user's explicit step)."""
    from cfbench.refs import resolve_ref

    ref = resolve_ref(spec, store)
    if ref.kind != "run" or ref.record is None:
        raise CfbenchError(
            f"--noise-floor {spec!r} is not a stored run: score the base checkpoint another way first (e.g. "
            "`cfbench eval BASE --backend vllm`, `--dtype bfloat16` or `--model-args scoring_path=plain`) "
            "and pass that run's name"
        )
    return ref.record


def _check_floor(floor: RunRecord, base: RunRecord) -> None:
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


def _attach_drift(
    report: ComparisonReport,
    store: ResultStore,
    refs: Sequence[RunRef],
    suite: Suite,
    raw: dict[str, pd.DataFrame],
    floor: RunRecord | None,
    *,
    n_boot: int,
    seed: int,
    confidence: float,
    data_dir: Any,
    reference: dict[str, tuple[str, ...]],
    reasons: dict[str, str],
) -> list[str]:
    """Compute every registered item metric from the stored items and attach them as signals."""
    from cfbench.metrics.drift import DriftSettings, drift_signals, load_choice_frames

    records = {r.label: r.record for r in refs}
    floor_label = None
    notes: list[str] = []
    if floor is not None:
        _check_floor(floor, refs[0].record)
        floor_label = f"noise floor {floor.name}"
        while floor_label in records:
            floor_label += "'"
        records[floor_label] = floor
    frames, notes = load_choice_frames(store, records, suite.tasks, items=raw, data_dir=data_dir)
    if floor is not None:
        base_keys = (refs[0].record.extra or {}).get("cache_keys") or {}
        floor_keys = (floor.extra or {}).get("cache_keys") or {}
        same = sorted(t for t in frames[floor_label] if t in base_keys and base_keys[t] == floor_keys.get(t))
        for t in same:  # the very items the base scored: a floor of exactly 0 would judge nothing
            del frames[floor_label][t]
        if same:
            notes.append(
                f"noise floor: {floor.name} holds the base's own scored items for {', '.join(same)} (scored the same "
                "way); no floor there"
            )
    result = drift_signals(
        frames, refs[0].label, [r.label for r in refs[1:]], suite.categories, suite.extras, floor=floor_label,
        settings=DriftSettings(n_boot, seed, confidence), reference=reference, reasons=reasons,
    )  # fmt: skip
    for run, sigs in result.signals.items():
        if sigs:
            report.add_signals(run, sigs)
    return list(dict.fromkeys(notes + result.notes))


def _attach_indomain(
    report: ComparisonReport, store: ResultStore, refs: Sequence[RunRef], *, n_boot: int, seed: int, confidence: float
) -> list[str]:
    """Attach the in-domain gain (:mod:`cfbench.train.indomain`) of every tuned run whose checkpoint and
    the base's were both scored on a held-out split after a fine-tune; returns notes for pairs that
    were skipped and why. Runs without such rows simply get no in-domain signals."""
    rows = store.read_table("indomain")  # cfbench.train.indomain.TABLE, read before importing torch code
    base_hash = refs[0].record.checkpoint_hash
    if rows.empty or not base_hash:
        return []
    from cfbench.train.indomain import indomain_gain

    base_splits = set(rows.loc[rows["checkpoint_hash"] == base_hash, "split_hash"])
    notes: list[str] = []
    for ref in refs[1:]:
        h = ref.record.checkpoint_hash
        splits = sorted(base_splits & set(rows.loc[rows["checkpoint_hash"] == h, "split_hash"])) if h else []
        for split in splits:
            try:
                sigs = indomain_gain(store, base_hash, h, split, n_boot=n_boot, seed=seed, confidence=confidence)
            except CfbenchError as exc:
                notes.append(f"in-domain gain of {ref.label}: not shown ({exc})")
                continue
            if len(splits) > 1:  # one scope per split, named by its data and hash
                data = str(rows.loc[rows["split_hash"] == split, "data"].iloc[0])
                sigs = [replace(s, scope=f"{data}@{split[:8]}") for s in sigs]
            report.add_signals(ref.label, sigs)
    return notes


# ---- nightly regression gate ----


@dataclass
class Budget:
    category: str
    points: float


@dataclass
class GateLine:
    category: str
    delta_points: float | None
    ci_points: tuple[float, float] | None
    budget: float
    significant: bool
    failed: bool
    reason: str


def _budget_value(flag: str, spec: str, val: str, unit: str, example: str) -> float:
    """A gate budget's number: finite and ≥ 0 (nan compares False with every value and inf allows
    any, so either would pass every gate). ``unit``: "points" or "" (the metric's own unit)."""
    of_unit = f" of {unit}" if unit else ""
    try:
        v = float(val)
    except ValueError as exc:
        raise CfbenchError(f"{flag} {spec!r}: {val!r} is not a number{of_unit}") from exc
    if not math.isfinite(v):
        raise CfbenchError(f"{flag} {spec!r}: the budget must be a finite number{of_unit}, e.g. {example}")
    if v < 0:
        raise CfbenchError(f"{flag} {spec!r}: the budget must be ≥ 0{' ' + unit if unit else ''}")
    return v


def parse_budgets(specs: Sequence[str], suite: Suite) -> list[Budget]:
    """``CATEGORY=POINTS`` (POINTS ≥ 0, in accuracy points ×100); AVG is allowed too."""
    allowed = {*suite.categories, "AVG"}
    out = []
    for spec in specs:
        cat, sep, val = spec.partition("=")
        if not sep:
            raise CfbenchError(f"--max-drop {spec!r} is not CATEGORY=POINTS; write e.g. --max-drop DK=1.5")
        if cat not in allowed:
            raise CfbenchError(
                f"--max-drop category {cat!r} is not in suite {suite.name}: use one of {sorted(allowed)}"
            )
        out.append(Budget(cat, _budget_value("--max-drop", spec, val, "points", f"{cat}=1.5")))
    if not out:
        raise CfbenchError("give at least one --max-drop CATEGORY=POINTS budget")
    return out


def gate(report: ComparisonReport, budgets: Sequence[Budget], significance: float) -> list[GateLine]:
    """A category fails when it dropped more than its budget AND the drop is significant.

    Significance: the paired bootstrap (1 − significance) CI of the Δ lies entirely below zero. When
    the baseline has no item-level scores (imported summary) no CI exists and the budget alone decides.
    """
    cmp = report.base_comparisons[0]
    lines = []
    for b in budgets:
        agg = cmp.avg if b.category == "AVG" else cmp.categories[b.category]
        if agg.delta is None:
            lines.append(
                GateLine(
                    b.category,
                    None,
                    None,
                    b.points,
                    False,
                    True,
                    "not scored for both runs (missing data): cannot clear the gate",
                )
            )
            continue
        d = 100 * agg.delta
        ci = (100 * agg.ci[0], 100 * agg.ci[1]) if agg.ci else None
        significant = ci is None or ci[1] < 0
        over = -d > b.points
        failed = over and significant
        if failed:
            reason = f"dropped {-d:.2f} > {b.points:.2f} points" + (
                ", CI below 0" if ci else " (no CI: task-level baseline)"
            )
        elif over:
            reason = f"dropped {-d:.2f} > {b.points:.2f} points but not significant (CI {ci[0]:.2f}..{ci[1]:.2f})"  # type: ignore[index]
        else:
            reason = f"within budget ({d:+.2f} points)"
        if agg.coverage.partial:
            reason += f"; partial: {agg.coverage.label}"
        lines.append(GateLine(b.category, d, ci, b.points, significant, failed, reason))
    return lines


@dataclass
class DriftBudget:
    """``[SCOPE:]METRIC=VALUE``: the most a registered item metric may move, in its own unit."""

    scope: str  # "all", a category or a task
    metric: str
    value: float

    @property
    def label(self) -> str:
        return self.metric if self.scope == "all" else f"{self.scope}:{self.metric}"


@dataclass
class DriftGateLine:
    budget: DriftBudget
    value: float | None
    ci: tuple[float, float] | None
    unit: str
    failed: bool
    reason: str


def parse_drift_budgets(specs: Sequence[str], suite: Suite) -> list[DriftBudget]:
    """``METRIC=VALUE`` (overall) or ``SCOPE:METRIC=VALUE`` (SCOPE a category, AVG or a task of the suite).

    VALUE is finite and ≥ 0, in the metric's unit: for a divergence the largest allowed value, for a
    signed metric (``better=higher``, e.g. gold_margin) the largest allowed drop.
    """
    from cfbench.metrics import get_metric, registered_metrics

    scopes = {*suite.categories, *suite.tasks}
    out = []
    for spec in specs:
        key, sep, val = spec.partition("=")
        if not sep:
            raise CfbenchError(f"--max-drift {spec!r} is not [SCOPE:]METRIC=VALUE; write e.g. --max-drift kl=0.01")
        scope, colon, name = key.rpartition(":")
        scope = scope if colon else "all"
        scope = "all" if scope == "AVG" else scope
        if name not in {m.name for m in registered_metrics()}:
            get_metric(name)  # raises, naming the registered metrics
        if scope != "all" and scope not in scopes:
            raise CfbenchError(
                f"--max-drift scope {scope!r} is not a category or task of suite {suite.name}: use one of "
                f"{sorted({*suite.categories, 'AVG'})} or a task name, e.g. DK:{name}=0.01"
            )
        out.append(DriftBudget(scope, name, _budget_value("--max-drift", spec, val, "", f"{name}=0.01")))
    return out


def drift_gate(report: ComparisonReport, candidate: str, budgets: Sequence[DriftBudget]) -> list[DriftGateLine]:
    """A drift budget fails when the whole CI is past it, so noise alone cannot fail a nightly run.

    Lower-is-better metrics (divergences): fail iff the CI lower bound exceeds the budget. Higher-is-
    better metrics (signed, e.g. gold_margin): fail iff the CI upper bound is below −budget (a drop
    larger than the budget, with the CI). Without a CI (``--n-boot 0``) the value itself decides; a
    metric that could not be computed fails, as a missing category does for ``--max-drop``.
    """
    from cfbench.metrics import get_metric

    lines = []
    signals = report.signals.get(candidate, [])
    for b in budgets:
        metric = get_metric(b.metric)
        s = next((x for x in signals if x.name == b.metric and x.scope == b.scope), None)
        if s is None:
            lines.append(DriftGateLine(b, None, None, metric.unit, True, "not computed (no paired stored log-probs)"))
            continue
        lo, hi = s.ci if s.ci is not None else (s.value, s.value)
        how = "CI" if s.ci is not None else "value (no CI)"
        if metric.better == "lower":
            failed = lo > b.value
            reason = f"{how} lower bound {lo:.4g} > {b.value:.4g}" if failed else f"within budget ({s.value:.4g})"
        else:
            failed = hi < -b.value
            reason = (f"dropped: {how} upper bound {hi:.4g} < −{b.value:.4g}" if failed
                      else f"within budget ({s.value:+.4g})")  # fmt: skip
        reason += "".join(f"; {part}" for part in (s.note or "").split("; ") if part.startswith("partial"))
        lines.append(DriftGateLine(b, s.value, s.ci, s.unit, failed, reason))
    return lines


def drift_gate_markdown(lines: Sequence[DriftGateLine]) -> str:
    out = ["| drift | value | CI | budget | result |", "|---|---:|---|---:|---|"]
    for x in lines:
        v = "-" if x.value is None else f"{x.value:.4g}"
        ci = "-" if x.ci is None else f"[{x.ci[0]:.4g}, {x.ci[1]:.4g}]"
        mark = "❌ " if x.failed else "✅ "
        out.append(f"| {x.budget.label} | {v} | {ci} | {x.budget.value:.4g} {x.unit} | {mark}{x.reason} |")
    return "\n".join(out) + "\n"


def gate_markdown(
    baseline: str,
    candidate: str,
    lines: Sequence[GateLine],
    significance: float,
    drift_lines: Sequence[DriftGateLine] = (),
) -> str:
    ok = not any(x.failed for x in [*lines, *drift_lines])
    out = [
        f"### cfbench regression gate: {'PASS' if ok else 'FAIL'}",
        "",
        f"baseline `{baseline}` → candidate `{candidate}` (significance {significance})",
        "",
        "| category | Δ (points) | CI | budget | result |",
        "|---|---:|---|---:|---|",
    ]
    for x in lines:
        d = "-" if x.delta_points is None else f"{x.delta_points:+.2f}"
        ci = "-" if x.ci_points is None else f"[{x.ci_points[0]:+.2f}, {x.ci_points[1]:+.2f}]"
        out.append(f"| {x.category} | {d} | {ci} | {x.budget:.2f} | {'❌ ' if x.failed else '✅ '}{x.reason} |")
    if not lines:
        out = out[:-2]
    if drift_lines:
        out += ["", drift_gate_markdown(drift_lines).rstrip("\n")]
    return "\n".join(out) + "\n"
