"""Paired drift of every registered item metric: per task, per category, overall, against a noise floor.

Pipeline, the same for every metric (so a new metric needs no code here):

1. per run and task, stored item rows become per-choice scores (:mod:`cfbench.metrics.choices`);
2. two runs' items of a task pair exactly as accuracy's do (:func:`cfbench.stats.align_items`:
   same ``doc_id`` *and* same fingerprint, or same task config hash where a fingerprint is missing);
3. the metric gives one value per paired item; the task value is their mean, with a percentile
   bootstrap CI over items (:func:`~cfbench.stats.bootstrap_means`, seeded from the data by
   :func:`~cfbench.stats.task_rng`, so labels and run order never move a number);
4. categories are means of task values and the overall value is the mean of category values, with a
   stratified bootstrap — :func:`~cfbench.stats.aggregate_deltas`, exactly as accuracy Δ AVG;
5. judgement. A ``delta`` metric (signed) is significant when its bootstrap p against 0 is, as accuracy Δ is.
   A ``divergence`` is never negative, so its CI never contains 0 and "excludes 0" would mark every
   run: it is judged against the *noise floor*, the same statistic between the base and the base
   re-scored another way (another backend, dtype or scoring path). Significant iff the CI's lower
   bound is above the floor's CI upper bound (the floor's own sampling noise included; with no floor
   CI, above the floor's value). Without a floor a divergence is shown unjudged ("no floor"); a floor
   below :data:`cfbench.signals.NIL_FLOOR` (1e-6 nats) is *numerically nil* and judges nothing either
   (every divergence clears rounding, and "excludes 0" is no test for a divergence). Each of
   these statements has its bootstrap p; the scopes of one signal of one run are one Holm family, and
   the star uses the adjusted p (issue 19, multiplicity).

The result is :class:`cfbench.signals.Signal` records (``kind="forgot"``), one per (metric, scope),
which every report format renders generically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cfbench.data import default_sources
from cfbench.errors import CfbenchError
from cfbench.metrics.choices import ChoiceSource, choice_frame
from cfbench.metrics.registry import ChoiceBatch, ItemMetric, registered_metrics
from cfbench.signals import NIL_FLOOR, Signal
from cfbench.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    AggregateDelta,
    PairedScores,
    TaskPoint,
    aggregate_deltas,
    align_items,
    bootstrap_means,
    bootstrap_p,
    bootstrap_p_above,
    ci_excludes_zero,
    data_key,
    holm_adjust,
    percentile_ci,
    task_rng,
)
from cfbench.store.queries import run_items

if TYPE_CHECKING:
    from cfbench.store import ResultStore, RunRecord

#: Scope of the overall (AVG-style) signal.
OVERALL = "all"
#: Negative divergences down to this are float rounding of 0 (e.g. KL of equal distributions).
_ROUNDING = 1e-9

ChoiceFrames = Mapping[str, pd.DataFrame]  # task -> choice frame (cfbench.metrics.choices.CHOICE_COLUMNS)


@dataclass(frozen=True)
class DriftSettings:
    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE


@dataclass(frozen=True)
class TaskValues:
    """One metric on one task of one comparison: the mean over the paired items, with its bootstrap."""

    task: str
    n: int
    mean: float
    ci: tuple[float, float] | None
    replicates: np.ndarray | None  # (n_boot, 2): column 0 is 0, column 1 the resampled means
    #: The paired items' doc ids and per-item values behind ``mean``: a contrast of two tuned runs
    #: (:mod:`cfbench.comparison.contrasts`) reads the very values this signal was computed from.
    doc_ids: np.ndarray | None = field(default=None, compare=False, repr=False)
    values: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class PairDrift:
    """Every metric for one comparison (``run`` against ``ref``), per task and aggregated."""

    ref: str
    run: str
    tasks: dict[str, dict[str, TaskValues]] = field(default_factory=dict)  # metric -> task -> values
    notes: list[str] = field(default_factory=list)


@dataclass
class DriftResult:
    """Signals per tuned run label, and one line per thing left out (and why)."""

    signals: dict[str, list[Signal]]
    notes: list[str]
    pairs: dict[str, PairDrift]
    #: The floor's own overall value per divergence metric (empty without a floor).
    floor_values: dict[str, float] = field(default_factory=dict)


# -- per item ---------------------------------------------------------------------------------------
def item_values(metric: ItemMetric, base: Sequence[np.ndarray], tuned: Sequence[np.ndarray], gold: np.ndarray,
                *, task: str = "", doc_ids: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The metric's value for each aligned item; items are batched by their number of choices."""
    n = len(base)
    out = np.empty(n, dtype=np.float64)
    ks = np.array([len(c) for c in base], dtype=np.int64)
    for k in np.unique(ks):
        idx = np.flatnonzero(ks == k)
        batch = ChoiceBatch(np.stack([base[i] for i in idx]), np.stack([tuned[i] for i in idx]), gold[idx])
        got = np.asarray(metric.fn(batch), dtype=np.float64)
        if got.shape != (idx.size,):
            raise CfbenchError(
                f"metric {metric.name!r} returned shape {got.shape} for {idx.size} items; it must return one "
                "value per item"
            )
        out[idx] = got
    where = f" on task {task!r}" if task else ""
    bad = ~np.isfinite(out)
    if bad.any():
        doc = f" (doc_id {int(doc_ids[bad][0])})" if doc_ids is not None else ""
        raise CfbenchError(
            f"metric {metric.name!r} is not finite for {int(bad.sum())} item(s){where}{doc}: fix the metric"
        )
    if metric.kind == "divergence":
        if (out < -_ROUNDING).any():
            raise CfbenchError(
                f"metric {metric.name!r} is registered as a divergence but is negative{where} "
                f"(min {out.min():.3g}): register it with kind='delta' or fix it"
            )
        out = np.maximum(out, 0.0)
    return out


def _task_values(task: str, metric: ItemMetric, doc_ids: np.ndarray, values: np.ndarray,
                 settings: DriftSettings) -> TaskValues:  # fmt: skip
    zeros = np.zeros_like(values)
    reps = ci = None
    if settings.n_boot > 0:
        key = data_key(PairedScores(doc_ids, zeros, values, np.full(values.size, None, object), 0, 0))
        reps = bootstrap_means(zeros, values, settings.n_boot, task_rng(settings.seed, key, task, metric.name))
        ci = percentile_ci(reps[:, 1], settings.confidence)
    return TaskValues(task, int(values.size), float(values.mean()), ci, reps, doc_ids, values)


# -- per comparison ---------------------------------------------------------------------------------
def _pairing_frame(frame: pd.DataFrame) -> pd.DataFrame:
    cols = {"doc_id": frame["doc_id"].astype(int), "score": 0.0}
    for c in ("item_hash", "task_hash", "subset"):
        if c in frame:
            cols[c] = frame[c]
    return pd.DataFrame(cols)


def pair_drift(
    ref_frames: ChoiceFrames,
    other_frames: ChoiceFrames,
    ref: str,
    run: str,
    tasks: Sequence[str],
    metrics: Sequence[ItemMetric],
    settings: DriftSettings,
) -> PairDrift:
    """Per-task values of every metric for ``run`` against ``ref`` on their paired items."""
    out = PairDrift(ref, run, {m.name: {} for m in metrics})
    for task in tasks:
        a, b = ref_frames.get(task), other_frames.get(task)
        if a is None or b is None or a.empty or b.empty:
            continue
        rules = (set(a["rule"]), set(b["rule"]))
        if len(rules[0] | rules[1]) > 1:
            out.notes.append(
                f"{task}: {run} and {ref} were scored by different rules ({' vs '.join(sorted(rules[0] | rules[1]))}); "
                "their choice distributions are not comparable, left out"
            )
            continue
        try:
            paired = align_items(_pairing_frame(a), _pairing_frame(b), task=task, names=(ref, run))
        except CfbenchError:
            out.notes.append(f"{task}: {run} and {ref} share no item with stored log-probs; left out")
            continue
        if paired.n == 0:  # accuracy's own note already says these runs scored different items
            continue
        a_by = a.set_index("doc_id")
        b_by = b.set_index("doc_id")
        ids = paired.doc_ids
        ca = list(a_by.loc[ids, "choices"])
        cb = list(b_by.loc[ids, "choices"])
        same_k = np.array([len(x) == len(y) for x, y in zip(ca, cb, strict=True)])
        if not same_k.all():
            out.notes.append(f"{task}: {int((~same_k).sum())} items have different choice counts in {run}; left out")
        if not same_k.any():
            continue
        keep = np.flatnonzero(same_k)
        ids = ids[keep]
        ca = [ca[i] for i in keep]
        cb = [cb[i] for i in keep]
        gold = a_by.loc[ids, "gold"].to_numpy(dtype=np.int64)
        for m in metrics:
            vals = item_values(m, ca, cb, gold, task=task, doc_ids=ids)
            out.tasks[m.name][task] = _task_values(task, m, ids, vals, settings)
    return out


def _points(values: Mapping[str, TaskValues]) -> dict[str, TaskPoint]:
    return {t: TaskPoint(0.0, v.mean, v.replicates) for t, v in values.items()}


def _aggregates(
    values: Mapping[str, TaskValues],
    categories: Mapping[str, Sequence[str]],
    settings: DriftSettings,
    reference: Mapping[str, Sequence[str]] | None,
    reasons: Mapping[str, str] | None,
) -> tuple[dict[str, AggregateDelta], AggregateDelta]:
    return aggregate_deltas(
        categories, _points(values), confidence=settings.confidence, reference=reference, reasons=reasons
    )


def _floor_aggregates(
    floor: Mapping[str, TaskValues],
    tuned: Mapping[str, TaskValues],
    categories: Mapping[str, Sequence[str]],
    settings: DriftSettings,
) -> tuple[dict[str, AggregateDelta | None], AggregateDelta | None]:
    """The floor over exactly the tasks the tuned comparison has; None where the floor lacks one of them."""
    common = {t: v for t, v in floor.items() if t in tuned}
    cats, overall = aggregate_deltas(categories, _points(common), confidence=settings.confidence)
    out: dict[str, AggregateDelta | None] = {}
    for name, members in categories.items():
        need = [t for t in members if t in tuned]
        out[name] = cats[name] if need and all(t in floor for t in need) else None
    need_all = [t for members in categories.values() for t in members if t in tuned]
    whole = overall if need_all and all(t in floor for t in need_all) else None
    return out, whole


# -- judgement --------------------------------------------------------------------------------------
def _judge(metric: ItemMetric, ci: tuple[float, float] | None, floor: float | None,
           floor_ci: tuple[float, float] | None,
           reps: np.ndarray | None = None) -> tuple[bool | None, str | None, float | None]:  # fmt: skip
    """(significant, note, p): deltas against 0; divergences against the floor, or not judged without one.

    ``p`` (from the bootstrap ``reps`` of the value, where given) is the test of the same statement as
    the CI rule; :func:`_holm` then re-judges every scope of one signal on its Holm-adjusted p.
    """
    if ci is None:
        return None, "no CI (--n-boot 0): not judged", None
    if metric.kind == "delta":
        return ci_excludes_zero(ci), None, (bootstrap_p(reps) if reps is not None else None)
    if floor is None:
        return None, "no floor: a divergence is never below 0, so it is not judged without --noise-floor", None
    if abs(floor) < NIL_FLOOR:  # every divergence clears a rounding-sized floor: clearing it says nothing
        return None, (
            f"floor numerically nil ({floor:.2g} < {NIL_FLOOR:g} {metric.unit}): it stars nothing; re-score the base "
            "under a numeric change a user meets, e.g. --noise-floor dtype"
        ), None
    bar = floor_ci[1] if floor_ci is not None else floor
    return ci[0] > bar, None, (bootstrap_p_above(reps, bar) if reps is not None else None)


def _signal(metric: ItemMetric, scope: str, value: float, ci: tuple[float, float] | None, n: int,
            floor: TaskValues | AggregateDelta | None, note: str | None = None,
            reps: np.ndarray | None = None) -> Signal:  # fmt: skip
    if metric.kind == "delta":  # judged against 0: a floor would only confuse the reading
        floor = None
    f_value = None if floor is None else (floor.mean if isinstance(floor, TaskValues) else floor.other_mean)
    f_ci = None if floor is None else floor.ci
    significant, why, p = _judge(metric, ci, f_value, f_ci, None if reps is None else reps[:, 1] - reps[:, 0])
    notes = "; ".join(x for x in (note, why) if x) or None
    return Signal(
        name=metric.name, kind="forgot", label=metric.label, value=float(value), unit=metric.unit, n=int(n),
        ci=ci, floor=f_value, significant=significant, better=metric.better, scope=scope, note=notes,
        floor_ci=f_ci, p=p,
    )  # fmt: skip


def _holm(signals: list[Signal], alpha: float, same: Mapping[str, str] | None = None) -> list[Signal]:
    """One family per signal of one run: its scopes (overall, categories, tasks). Stars use the adjusted p.

    ``same`` maps a scope whose value *is* one task's value (an aggregate of one task) to that task:
    one quantity, one test (as for accuracy), so it takes the task's p and star and is not counted
    in the family again. Without that, a one-task comparison tested its one value three times
    (overall, category, task) and judged it at α/3 while its accuracy Δ was judged at α.
    """
    same = {k: v for k, v in (same or {}).items() if any(s.scope == v and s.p is not None for s in signals)}
    tested = [i for i, s in enumerate(signals) if s.p is not None and s.scope not in same]
    out = list(signals)
    for i, a in zip(tested, holm_adjust([signals[i].p for i in tested]), strict=True):  # type: ignore[misc]
        out[i] = replace(signals[i], p_adj=a, significant=a < alpha, holm_m=len(tested))
    by_scope = {s.scope: s for s in out}
    for i, s in enumerate(out):
        if s.scope in same and s.p is not None:
            t = by_scope[same[s.scope]]
            out[i] = replace(s, p=t.p, p_adj=t.p_adj, significant=t.significant, holm_m=t.holm_m)
    return out


def drift_signals(
    frames: Mapping[str, ChoiceFrames],
    base: str,
    tuned: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    extras: Sequence[str] = (),
    *,
    floor: str | None = None,
    metrics: Sequence[ItemMetric] | None = None,
    settings: DriftSettings | None = None,
    reference: Mapping[str, Sequence[str]] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> DriftResult:
    """Signals of every metric for each tuned run against ``base``, judged against ``floor`` if given.

    ``frames`` maps run label → task → choice frame (``floor`` is a label in it too). Scopes: the
    overall value (:data:`OVERALL`, AVG-style), every category with a value, every task (extras
    included; they are not part of any aggregate, as for accuracy).
    """
    settings = settings or DriftSettings()
    metrics = list(registered_metrics() if metrics is None else metrics)
    tasks = [*(t for m in categories.values() for t in m), *extras]
    notes: list[str] = []
    floor_pair: PairDrift | None = None
    floor_values: dict[str, float] = {}
    if floor is not None:
        floor_pair = pair_drift(frames.get(base, {}), frames.get(floor, {}), base, floor, tasks, metrics, settings)
        notes += [f"noise floor: {n}" for n in floor_pair.notes]
        floor_values = _floor_values(floor_pair, metrics, categories, settings, reference, reasons)
    signals: dict[str, list[Signal]] = {}
    pairs: dict[str, PairDrift] = {}
    for run in tuned:
        pd_ = pair_drift(frames.get(base, {}), frames.get(run, {}), base, run, tasks, metrics, settings)
        pairs[run] = pd_
        notes += [f"drift {run}: {n}" for n in pd_.notes]
        out: list[Signal] = []
        for m in metrics:
            if pd_.tasks[m.name]:
                out += _metric_signals(m, pd_.tasks[m.name], floor_pair, categories, settings, reference, reasons)
        if not out:
            notes.append(f"drift {run}: no task with per-choice log-probs paired with {base}; no drift metrics")
        signals[run] = out
    return DriftResult(signals, list(dict.fromkeys(notes)), pairs, floor_values)


def _floor_values(
    floor_pair: PairDrift,
    metrics: Sequence[ItemMetric],
    categories: Mapping[str, Sequence[str]],
    settings: DriftSettings,
    reference: Mapping[str, Sequence[str]] | None,
    reasons: Mapping[str, str] | None,
) -> dict[str, float]:
    """The floor's own overall value of every divergence (AVG-style, over every task it pairs): what the
    report prints as "the floor", and what decides whether it is numerically nil."""
    out: dict[str, float] = {}
    for m in metrics:
        if m.kind != "divergence" or not floor_pair.tasks[m.name]:
            continue
        overall = _aggregates(floor_pair.tasks[m.name], categories, settings, reference, reasons)[1]
        if overall.other_mean is not None:
            out[m.name] = float(overall.other_mean)
    return out


def _metric_signals(
    m: ItemMetric,
    per_task: Mapping[str, TaskValues],
    floor_pair: PairDrift | None,
    categories: Mapping[str, Sequence[str]],
    settings: DriftSettings,
    reference: Mapping[str, Sequence[str]] | None,
    reasons: Mapping[str, str] | None,
) -> list[Signal]:
    """One metric of one run at every scope (overall, categories, tasks), each against its floor; Holm-judged."""
    mine: list[Signal] = []
    fl = floor_pair.tasks[m.name] if floor_pair is not None else {}
    cats, overall = _aggregates(per_task, categories, settings, reference, reasons)
    f_cats, f_all = _floor_aggregates(fl, per_task, categories, settings) if floor_pair else ({}, None)
    lacking = floor_pair is not None and m.kind == "divergence"
    same: dict[str, str] = {}  # scopes whose value is one task's value: they take that task's test
    for scope, agg, f_agg in [(OVERALL, overall, f_all), *((c, a, f_cats.get(c)) for c, a in cats.items())]:
        if agg.other_mean is None:
            continue
        if len(agg.coverage.present) == 1:
            same[scope] = agg.coverage.present[0]
        n = sum(per_task[t].n for t in agg.coverage.present)
        note = f"partial: {agg.coverage.label}" if agg.coverage.partial else None
        if lacking and f_agg is None:
            note = "; ".join(x for x in (note, "the floor run lacks some of these tasks") if x)
        mine.append(_signal(m, scope, agg.other_mean, agg.ci, n, f_agg, note, agg.replicates))
    for task, v in per_task.items():
        f_task = fl.get(task)
        note = "the floor run has no paired items here" if lacking and f_task is None else None
        mine.append(_signal(m, task, v.mean, v.ci, v.n, f_task, note, v.replicates))
    return _holm(mine, 1 - settings.confidence, same)


# -- I/O: from the store -----------------------------------------------------------------------------
def load_choice_frames(
    store: ResultStore,
    records: Mapping[str, RunRecord],
    tasks: Sequence[str],
    *,
    items: Mapping[str, pd.DataFrame] | None = None,
    data_dir: Any = None,
) -> tuple[dict[str, dict[str, pd.DataFrame]], list[str]]:
    """Choice frames per run label and task, read from the store, plus notes on what was left out.

    ``items`` (label → raw item rows, already restricted to what each run selected) avoids reading
    the store twice when the caller has them; otherwise :func:`cfbench.store.queries.run_items` reads them.
    """
    source = ChoiceSource(default_sources(data_dir) if data_dir else None)
    frames: dict[str, dict[str, pd.DataFrame]] = {}
    notes: list[str] = []
    for label, rec in records.items():
        raw = items[label] if items is not None and label in items else run_items(store, rec, tasks)
        frames[label] = {}
        if raw.empty or "logprobs" not in raw:
            continue
        for task, grp in raw.groupby("task", sort=False):
            shots = (rec.extra or {}).get("fewshot", {}).get(str(task), rec.num_fewshot)  # per-task count if recorded
            rule = source.rule(str(task), rec.source, shots)
            if isinstance(rule, str):
                notes.append(f"drift: {task} left out: {rule}")
                continue
            frame, skipped = choice_frame(grp, rule)
            if skipped:
                why = ", ".join(f"{k} ({v})" for k, v in sorted(skipped.items()))
                notes.append(f"drift: {label} {task}: {sum(skipped.values())} item(s) without choice scores: {why}")
            frames[label][str(task)] = frame
    return frames, list(dict.fromkeys(notes))
