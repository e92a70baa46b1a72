"""Build the paper-style forgetting table (Li et al. 2024, Tables 2/5) as plain dataclasses.

Inputs are deliberately plain: item scores (``run, task, doc_id, subset, score``) and/or imported
task-level scores (``run, task, value``). Everything a renderer shows is computed here once, so the
terminal, Markdown, HTML, CSV, JSON and PNG views cannot disagree.

Two numbers per tuned row are easy to confuse and are kept apart on purpose:

* row scores (``RunRow``) use *all* of a run's items, exactly what the run scored;
* Δ (``Comparison``) uses only items and tasks both runs have, so it measures a change and not a
  change of test set. With complete, identical item sets the two agree (Δ = AVG − base AVG).

Items pair only when they are the same item (fingerprint or task config hash, see
:func:`cfbench.stats.align_items`). A task whose items do not match at all gets an
*unpaired* row: Δ of the two task means, no CI, no McNemar, no flips, and one note saying why.
Where only some items match, the paired statistics use the matching ones and a note counts the rest.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.report.contrast import ContrastResult, SeedGroup
from cfbench.signals import NoiseFloor, Signal
from cfbench.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    AggregateDelta,
    Coverage,
    LabelPrior,
    TaskDelta,
    TaskPoint,
    aggregate_deltas,
    align_items,
    avg_coverage,
    ci_excludes_zero,
    coverage_of,
    data_key,
    holm_adjust,
    label_prior,
    n_clusters,
    paired_task_delta,
    task_rng,
)

UNMAPPED_GROUP = "(unmapped)"
ITEM_COLUMNS = ("run", "task", "doc_id", "score")
TASK_SCORE_COLUMNS = ("run", "task", "value")


@dataclass(frozen=True)
class CategoryScore:
    """One cell of the summary table: a category (or AVG) score of one run and its coverage."""

    name: str
    score: float | None
    coverage: Coverage


@dataclass(frozen=True)
class RunRow:
    """A summary-table row: what one run scored, on everything it was evaluated on."""

    run: str
    categories: dict[str, CategoryScore]
    avg: CategoryScore
    tasks: dict[str, float]


@dataclass(frozen=True)
class TaskRow:
    """One task (or one sub-group of a task, ``group`` set) of a paired comparison.

    ``category`` is None for extras (reported, not in AVG). Unavailable statistics are None:
    ``n``/``ci``/``p_mcnemar`` for task-level imports, ``p_mcnemar``/flips for non-0/1 metrics, and
    everything but the names when the task is missing for either run.
    """

    task: str
    category: str | None
    group: str | None
    ref_score: float | None
    score: float | None
    delta: float | None
    ci: tuple[float, float] | None
    p_mcnemar: float | None
    forgotten: int | None
    gained: int | None
    n: int | None
    dropped_ref: int
    dropped_other: int
    item_level: bool
    significant: bool
    #: True when both runs have item scores but not for the same items: Δ is of task means only.
    unpaired: bool = False
    #: p of the test of this row's Δ (``test``: "McNemar" or "bootstrap") and its Holm-adjusted value
    #: within the comparison's task family; ``significant`` is ``p_adj < alpha``.
    p: float | None = None
    test: str | None = None
    p_adj: float | None = None
    #: Minimum detectable |Δ| at 80 % power for this row's n and discordance (its test's α).
    mde: float | None = None
    #: Either run's accuracy on this task is its label prior (:class:`cfbench.stats.LabelPrior`): Δ marked ‡.
    label_prior: bool = False
    #: How many tests the Holm family of ``p_adj`` holds (1: Holm adjusted nothing, see ``Comparison.singletons``).
    holm_m: int | None = None

    @property
    def missing(self) -> bool:
        return self.delta is None


@dataclass(frozen=True)
class Comparison:
    """Paired Δ of ``run`` against ``ref``: per task, per category, and AVG.

    ``kind`` is ``"base"`` for tuned-vs-base rows and ``"pair"`` for a w/–w/o pair (ref = w/o).
    """

    ref: str
    run: str
    kind: Literal["base", "pair"]
    tasks: list[TaskRow]
    categories: dict[str, AggregateDelta]
    avg: AggregateDelta
    #: One line per task whose items could not be (fully) paired, saying why.
    notes: list[str] = field(default_factory=list)
    #: Holm families of this comparison that hold one test, each with that test's row, e.g.
    #: ``("task rows", "boolq")``: Holm adjusts nothing there, and the report says so in one line.
    singletons: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.run} − {self.ref}"

    def task(self, task: str, group: str | None = None) -> TaskRow:
        """Look up one row; raises KeyError naming the task if absent."""
        for row in self.tasks:
            if row.task == task and row.group == group:
                return row
        raise KeyError(f"{task}/{group}" if group else task)


@dataclass(frozen=True)
class ReportSettings:
    """How the statistics were computed; printed in every format so numbers can be reproduced."""

    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE
    alpha: float = 0.05


@dataclass
class ComparisonReport:
    """Everything ``cfbench compare`` shows, in machine-readable form; renderers only format it."""

    base: str
    tuned: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]
    extras: tuple[str, ...]
    rows: list[RunRow]
    comparisons: list[Comparison]
    settings: ReportSettings = field(default_factory=ReportSettings)
    #: Tuned run label → learned/forgot signals attached by producers (:meth:`add_signals`).
    signals: dict[str, list[Signal]] = field(default_factory=dict)
    #: (run, task) → why that run's accuracy on that task measures the label prior (issue 19, item 5).
    label_prior: dict[tuple[str, str], LabelPrior] = field(default_factory=dict)
    #: Contrasts B − A on every signal (``compare --contrast``, :mod:`cfbench.report.contrast`).
    contrasts: list[ContrastResult] = field(default_factory=list)
    #: Seed groups (runs of one method): each signal's mean and between-seed SD (:mod:`cfbench.report.contrast`).
    groups: list[SeedGroup] = field(default_factory=list)
    #: The noise floor divergences were judged against (its change, values and own flips); None: no floor.
    noise_floor: NoiseFloor | None = None

    def flagged(self, cmp: Comparison, agg: AggregateDelta) -> int:
        """How many of an aggregate's present tasks are label-prior flagged in this comparison."""
        rows = {t.task: t for t in cmp.tasks if t.group is None}
        return sum(1 for t in agg.coverage.present if t in rows and rows[t].label_prior)

    def add_signals(self, run: str, signals: Sequence[Signal]) -> None:
        """Attach ``signals`` of tuned run ``run``; every format renders them, with no per-name code.

        Producers (item drift metrics, held-out perplexity drift, in-domain gain) call this; a
        signal's (name, scope) may appear once per run, so two producers cannot silently disagree.
        """
        if run not in self.tuned:
            raise CfbenchError(f"signals for run {run!r}, which is not a tuned run of this report {list(self.tuned)}")
        have = {(s.name, s.scope) for s in self.signals.get(run, [])}
        for s in signals:
            if not isinstance(s, Signal):
                raise CfbenchError(f"add_signals takes cfbench.signals.Signal records, not {type(s).__name__}")
            if s.kind not in ("learned", "forgot"):
                raise CfbenchError(f"signal {s.name!r} has kind {s.kind!r}; use 'learned' or 'forgot'")
            if (s.name, s.scope) in have:
                raise CfbenchError(f"run {run!r} already has signal {s.name!r} for scope {s.scope!r}")
            have.add((s.name, s.scope))
        self.signals.setdefault(run, []).extend(signals)

    @property
    def notes(self) -> list[str]:
        """Pairing notes of every comparison, each prefixed by the comparison it belongs to."""
        return [f"{c.label}: {n}" for c in self.comparisons for n in c.notes]

    def row(self, run: str) -> RunRow:
        for r in self.rows:
            if r.run == run:
                return r
        raise KeyError(run)

    def vs_base(self, run: str) -> Comparison:
        for c in self.comparisons:
            if c.kind == "base" and c.run == run:
                return c
        raise KeyError(run)

    @property
    def base_comparisons(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.kind == "base"]

    @property
    def pair_comparisons(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.kind == "pair"]

    def aggregate_significant(self, agg: AggregateDelta) -> bool:
        """The star the report gave the aggregate (:func:`_judge_aggregates`: its test, Holm-adjusted).

        An aggregate built outside a report (no judgement attached) falls back to its CI excluding 0.
        """
        return agg.significant if agg.significant is not None else ci_excludes_zero(agg.ci)


def detect_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(w/o, w/) label pairs such as ("w/o SAM", "w/ SAM") or ("7B w/o SAM", "7B w/ SAM")."""
    pairs = []
    for label in labels:
        if re.search(r"\bw/o\b", label):
            partner = re.sub(r"\bw/o\b", "w/", label, count=1)
            if partner in labels and partner != label:
                pairs.append((label, partner))
    return pairs


def _check_columns(frame: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CfbenchError(
            f"{what} lack column(s) {', '.join(missing)} (have: {', '.join(map(str, frame.columns))}); "
            f"pass a DataFrame with columns {', '.join(required)}"
        )


def _check_unit_interval(values: pd.Series, frame: pd.DataFrame, what: str, hint: str) -> None:
    bad = values.isna() | (values < 0) | (values > 1)
    if bad.any():
        row = frame[bad].iloc[0]
        raise CfbenchError(
            f"{what} for run '{row['run']}' task '{row['task']}' is {values[bad].iloc[0]!r}, not a "
            f"fraction in [0, 1] ({int(bad.sum())} such row(s)); {hint}"
        )


def _index_items(items: pd.DataFrame | None) -> dict[tuple[str, str], pd.DataFrame]:
    if items is None or items.empty:
        return {}
    _check_columns(items, ITEM_COLUMNS, "item scores")
    scores = pd.to_numeric(items["score"], errors="coerce")
    _check_unit_interval(scores, items, "item score", "select a metric in [0, 1] per task (acc, or mc2 for TruthfulQA)")
    items = items.assign(score=scores)
    return {(str(r), str(t)): g for (r, t), g in items.groupby(["run", "task"], sort=False)}


def _index_task_scores(
    task_scores: pd.DataFrame | None,
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str, str], float]]:
    """Task values keyed (run, task), plus sub-group values keyed (run, task, subset).

    An optional ``subset`` column carries imported partial scores (e.g. OpenCompass ``mmlu-stem`` as
    task "mmlu", subset "stem"); rows with a null subset are the task's own score.
    """
    if task_scores is None or task_scores.empty:
        return {}, {}
    _check_columns(task_scores, TASK_SCORE_COLUMNS, "task scores")
    values = pd.to_numeric(task_scores["value"], errors="coerce")
    _check_unit_interval(
        values, task_scores, "task score", "OpenCompass reports percentages: divide by 100 when importing"
    )
    subsets = (
        task_scores["subset"].astype(object).where(task_scores["subset"].notna(), None)
        if "subset" in task_scores.columns
        else pd.Series([None] * len(task_scores), index=task_scores.index, dtype=object)
    )
    keyed = pd.DataFrame({"run": task_scores["run"], "task": task_scores["task"], "subset": subsets})
    dup = keyed.duplicated(["run", "task", "subset"])
    if dup.any():
        row = keyed[dup].iloc[0]
        where = f" subset '{row['subset']}'" if row["subset"] is not None else ""
        raise CfbenchError(
            f"task scores list run '{row['run']}' task '{row['task']}'{where} more than once; keep one value "
            "per (run, task), i.e. one primary metric"
        )
    main: dict[tuple[str, str], float] = {}
    parts: dict[tuple[str, str, str], float] = {}
    for r, t, sub, v in zip(keyed["run"], keyed["task"], keyed["subset"], values, strict=True):
        if sub is None:
            main[str(r), str(t)] = float(v)
        else:
            parts[str(r), str(t), str(sub)] = float(v)
    return main, parts


class _Data:
    """Item and task-level scores indexed by (run, task); items win where both exist."""

    def __init__(
        self, items: pd.DataFrame | None, task_scores: pd.DataFrame | None, subset_mean: Collection[str] = ()
    ) -> None:
        self.items = _index_items(items)
        self.values, self.subset_values = _index_task_scores(task_scores)
        self.runs = {r for r, _ in self.items} | {r for r, _ in self.values}
        #: Tasks scored as the unweighted mean of their subsets' means (OpenCompass's mmlu), not of items.
        self.subset_mean = frozenset(subset_mean)

    def label_priors(self, confidence: float) -> dict[tuple[str, str], LabelPrior]:
        """Label-prior flags of every (run, task) whose items carry ``gold`` (and ``pred`` for the one-choice rule)."""
        out: dict[tuple[str, str], LabelPrior] = {}
        for key, frame in self.items.items():
            if "gold" not in frame or frame["gold"].isna().any():
                continue
            pred = frame["pred"] if "pred" in frame and not frame["pred"].isna().any() else None
            flag = label_prior(pred, frame["gold"].to_numpy(), frame["score"].to_numpy(), confidence)
            if flag is not None:
                out[key] = flag
        return out

    def has(self, run: str, task: str) -> bool:
        return (run, task) in self.items or (run, task) in self.values

    def score(self, run: str, task: str) -> float | None:
        if (run, task) in self.items:
            frame = self.items[run, task]
            if task in self.subset_mean and "subset" in frame:
                return float(frame.groupby("subset", dropna=False)["score"].mean().mean())
            return float(frame["score"].mean())
        return self.values.get((run, task))


def category_scores(
    tasks: Mapping[str, float],
    categories: Mapping[str, Sequence[str]],
    reference: Mapping[str, Sequence[str]] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> tuple[dict[str, CategoryScore], CategoryScore]:
    """Category scores (mean of available tasks) and AVG (mean of scored categories) with coverage.

    The one place these numbers are computed: ``compare`` rows and the leaderboard both call it, so
    they cannot disagree. Coverage is judged against ``reference`` where given (see :class:`Coverage`).
    """
    cats: dict[str, CategoryScore] = {}
    for name, members in categories.items():
        cov = coverage_of(members, tasks, (reference or {}).get(name), reasons)
        present = [t for t in members if t in tasks]
        score = float(np.mean([tasks[t] for t in present])) if present else None
        cats[name] = CategoryScore(name, score, cov)
    cat_scores = [c.score for c in cats.values() if c.score is not None]
    avg_cov = avg_coverage({n: c.coverage for n, c in cats.items()}, len(cat_scores))
    return cats, CategoryScore("AVG", float(np.mean(cat_scores)) if cat_scores else None, avg_cov)


def _run_row(
    data: _Data,
    run: str,
    categories: Mapping[str, Sequence[str]],
    extras: Sequence[str],
    reference: Mapping[str, Sequence[str]] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> RunRow:
    tasks = {
        t: s for t in [*(t for m in categories.values() for t in m), *extras] if (s := data.score(run, t)) is not None
    }
    cats, avg = category_scores(tasks, categories, reference, reasons)
    return RunRow(run, cats, avg, tasks)


def _group_order(mapping: Mapping[str, str]) -> list[str]:
    return list(dict.fromkeys(mapping.values()))


def _item_row(task: str, category: str | None, group: str | None, d: TaskDelta) -> TaskRow:
    """A row with the test of its own Δ (``d.p``); the star is set once the family is known (:func:`_judge_tasks`)."""
    return TaskRow(
        task, category, group, d.ref_mean, d.other_mean, d.delta, d.ci, d.p_mcnemar, d.forgotten, d.gained,
        d.n, d.dropped_ref, d.dropped_other, item_level=True, significant=False, p=d.p, test=d.test, mde=d.mde,
    )  # fmt: skip


def _judge_tasks(rows: list[TaskRow], alpha: float, stars: bool = True) -> list[TaskRow]:
    """Holm over one family: every tested task and sub-group row of one comparison.

    One comparison runs a dozen task tests; at raw α the chance of at least one false star under the
    global null is ~1 − 0.95^13 ≈ 0.49. Holm bounds it by α whatever the dependence between tasks.
    ``stars=False`` (``--n-boot 0``: "no CIs, no stars" everywhere) keeps the p values but stars no
    row, so a task row never claims what its category, AVG and the gate do not test.
    """
    tested = [i for i, r in enumerate(rows) if r.p is not None]
    adj = holm_adjust([rows[i].p for i in tested])  # type: ignore[misc]
    out = list(rows)
    for i, a in zip(tested, adj, strict=True):
        out[i] = replace(rows[i], p_adj=a, significant=stars and a < alpha, holm_m=len(tested))
    return out


def _only_mover(agg: AggregateDelta, top: Mapping[str, TaskRow]) -> TaskRow | None:
    """The one task whose Δ the aggregate's Δ is a fixed multiple of, or None.

    That is the case when the aggregate has one task, or when every other task of it is unchanged on
    every paired item (Δ 0 with CI [0, 0]: no replicate moves). The aggregate is then that task's Δ
    rescaled, so it is the same hypothesis and takes that task's test.
    """
    if not agg.coverage.present or any(t not in top for t in agg.coverage.present):
        return None
    rows = [top[t] for t in agg.coverage.present]
    moving = [r for r in rows if not (r.delta == 0 and r.ci == (0.0, 0.0))]
    if len(rows) == 1:
        return rows[0]
    return moving[0] if len(moving) == 1 else None


def _judge_aggregates(
    cats: dict[str, AggregateDelta], avg: AggregateDelta, rows: list[TaskRow], alpha: float, stars: bool = True
) -> tuple[dict[str, AggregateDelta], AggregateDelta, list[str]]:
    """One rule per quantity: an aggregate that *is* one task's Δ (:func:`_only_mover`) takes that task's
    test and star; the others (bootstrap p) are one Holm family, categories and AVG together, whose
    members' names come back third. ``stars=False`` (``--n-boot 0``) stars none of them."""
    top = {r.task: r for r in rows if r.group is None}
    aggs = [*cats.values(), avg]
    judged: dict[str, AggregateDelta] = {}
    family: list[AggregateDelta] = []
    for agg in aggs:
        if agg.delta is None:
            judged[agg.name] = replace(agg, significant=False)
        elif (t := _only_mover(agg, top)) is not None:
            mde = t.mde if len(agg.coverage.present) == 1 else agg.mde
            judged[agg.name] = replace(
                agg, p=t.p, test=t.test, p_adj=t.p_adj, significant=t.significant, mde=mde, holm_m=t.holm_m
            )
        elif agg.p is None:
            judged[agg.name] = replace(agg, significant=False)
        else:
            family.append(agg)
    for agg, a in zip(family, holm_adjust([a.p for a in family]), strict=True):  # type: ignore[misc]
        judged[agg.name] = replace(agg, p_adj=a, significant=stars and a < alpha, holm_m=len(family))
    return {n: judged[n] for n in cats}, judged[avg.name], [a.name for a in family]


def _singletons(rows: list[TaskRow], aggregates: list[str]) -> list[tuple[str, str]]:
    """The families that hold one test, with its row: a comparison of one task (``--tasks boolq``), or
    categories of single tasks whose AVG alone is tested by bootstrap. Holm is then the identity, so
    the star is at raw α; the report says that in one line instead of implying a correction."""
    tested = [r for r in rows if r.p_adj is not None]
    out = []
    if len(tested) == 1:
        r = tested[0]
        out.append(("task rows", f"{r.task} ↳ {r.group}" if r.group else r.task))
    if len(aggregates) == 1:
        out.append(("categories + AVG", aggregates[0]))
    return out


def _value_row(
    task: str, category: str | None, group: str | None, ref: float | None, run: float | None, unpaired: bool = False
) -> TaskRow:
    """A row without paired item data: Δ if both values exist, never a CI, p or flip count."""
    delta = run - ref if ref is not None and run is not None else None
    return TaskRow(
        task, category, group, ref, run, delta, ci=None, p_mcnemar=None, forgotten=None, gained=None, n=None,
        dropped_ref=0, dropped_other=0, item_level=False, significant=False, unpaired=unpaired,
    )  # fmt: skip


def _compare(
    data: _Data,
    ref: str,
    run: str,
    kind: Literal["base", "pair"],
    categories: Mapping[str, Sequence[str]],
    extras: Sequence[str],
    subgroups: Mapping[str, Mapping[str, str]],
    settings: ReportSettings,
    reference: Mapping[str, Sequence[str]] | None = None,
    reasons: Mapping[str, str] | None = None,
    flags: Collection[tuple[str, str]] = frozenset(),
) -> Comparison:
    rows: list[TaskRow] = []
    notes: list[str] = []
    points: dict[str, TaskPoint] = {}
    task_category = [(t, c) for c, m in categories.items() for t in m] + [(t, None) for t in extras]
    boot = {"n_boot": settings.n_boot, "confidence": settings.confidence, "alpha": settings.alpha}

    for task, category in task_category:
        groups = _group_order(subgroups.get(task, {}))
        if (ref, task) in data.items and (run, task) in data.items:
            paired = align_items(data.items[ref, task], data.items[run, task], task=task, names=(ref, run))
            common = paired.n + paired.mismatched
            if paired.unpairable:
                notes.append(
                    f"{task}: runs score different items (prompt or data differ: 0/{common} fingerprints "
                    "match); Δ is unpaired task-level, no CI"
                )
                row = _value_row(task, category, None, data.score(ref, task), data.score(run, task), unpaired=True)
                rows.append(row)
                points[task] = TaskPoint(row.ref_score, row.score, None)  # type: ignore[arg-type]
                continue
            if paired.mismatched:
                notes.append(
                    f"{task}: {paired.mismatched}/{common} common items differ between the runs (prompt or data); "
                    f"paired statistics use the {paired.n} matching items only"
                )
            key = data_key(paired)  # seeds from the data, never from labels
            naive = task in data.subset_mean  # OpenCompass's mmlu: mean of subject means
            d = paired_task_delta(paired, rng=task_rng(settings.seed, key, task), subset_mean=naive, **boot)
            if paired.clusters is not None and n_clusters(paired) < 2:
                why = "no CI or test; score more of its documents for one"
                notes.append(f"{task}: its {paired.n} paired items share one cluster (cluster_by): {why}")
            rows.append(_item_row(task, category, None, d))
            points[task] = TaskPoint(d.ref_mean, d.other_mean, d.replicates)
            if task in subgroups:
                mapping = subgroups[task]
                labels = np.array([mapping.get(s, UNMAPPED_GROUP) for s in paired.subsets], dtype=object)
                for group in [*groups, UNMAPPED_GROUP]:
                    mask = labels == group
                    if mask.any():
                        rng = task_rng(settings.seed, key, task, group)
                        g = paired_task_delta(paired.select(mask), rng=rng, subset_mean=naive, **boot)
                        rows.append(_item_row(task, category, group, g))
        elif data.has(ref, task) and data.has(run, task):
            row = _value_row(task, category, None, data.score(ref, task), data.score(run, task))
            rows.append(row)
            points[task] = TaskPoint(row.ref_score, row.score, None)  # type: ignore[arg-type]
            for group in groups:
                ref_g = data.subset_values.get((ref, task, group))
                run_g = data.subset_values.get((run, task, group))
                if ref_g is not None and run_g is not None:
                    rows.append(_value_row(task, category, group, ref_g, run_g))
        else:
            rows.append(_value_row(task, category, None, data.score(ref, task), data.score(run, task)))
    cats, avg = aggregate_deltas(
        categories, points, confidence=settings.confidence, reference=reference, reasons=reasons
    )
    stars = settings.n_boot > 0  # --n-boot 0: no CIs and no stars, on every row and in every format
    rows = _judge_tasks(rows, settings.alpha, stars)
    rows = [replace(r, label_prior=True) if {(ref, r.task), (run, r.task)} & flags else r for r in rows]
    cats, avg, family = _judge_aggregates(cats, avg, rows, settings.alpha, stars)
    return Comparison(ref, run, kind, rows, cats, avg, notes, _singletons(rows, family) if stars else [])


def build_report(
    base: str,
    tuned: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    *,
    items: pd.DataFrame | None = None,
    task_scores: pd.DataFrame | None = None,
    extras: Sequence[str] = (),
    subgroups: Mapping[str, Mapping[str, str]] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    alpha: float = 0.05,
    reference_categories: Mapping[str, Sequence[str]] | None = None,
    missing_reasons: Mapping[str, str] | None = None,
    subset_mean_tasks: Collection[str] = (),
) -> ComparisonReport:
    """Compute the whole comparison of ``tuned`` runs against ``base``.

    ``items`` (item-level) and ``task_scores`` (task-level imports) may both be given; for a
    (run, task) present in both, items win. ``subgroups`` maps task → subset → group for extra
    display rows (e.g. ``{"mmlu": MMLU_SUBGROUPS}``): computed from item subsets, or, for task-level
    imports, taken from ``task_scores`` rows whose optional ``subset`` column names a group.
    ``pairs`` are (w/o, w/) run labels whose direct Δ is also reported; None detects them from labels
    like "w/o SAM" / "w/ SAM", ``[]`` disables. ``reference_categories`` (category → expected
    tasks, e.g. the paper's) makes coverage count tasks the suite lacks as missing, with
    ``missing_reasons`` (task → why) shown next to them. ``subset_mean_tasks`` are scored from items
    as the unweighted mean of their subsets' means (OpenCompass's ``mmlu``, task config
    ``aggregate: subset_mean``), their sub-group rows likewise.
    """
    if not tuned:
        raise CfbenchError("no tuned run to compare; pass at least one run besides the base")
    if n_boot < 0:
        raise CfbenchError(f"n_boot is {n_boot}; use a positive number of bootstrap replicates (0 disables CIs)")
    if not 0 < confidence < 1:
        raise CfbenchError(f"confidence is {confidence}; pass a level in (0, 1) such as 0.95")
    if not 0 < alpha < 1:
        raise CfbenchError(f"alpha is {alpha}; pass a significance level in (0, 1) such as 0.05")
    tuned = tuple(tuned)
    if base in tuned or len(set(tuned)) != len(tuned):
        raise CfbenchError(f"run labels must be distinct (base '{base}', tuned {list(tuned)}); rename the runs")
    cats = {name: tuple(members) for name, members in categories.items()}
    seen = [t for m in cats.values() for t in m]
    dup_tasks = sorted({t for t in seen if seen.count(t) > 1} | (set(seen) & set(extras)))
    if dup_tasks:
        raise CfbenchError(
            f"task(s) {', '.join(dup_tasks)} appear in more than one category/extras; list each task once"
        )

    data = _Data(items, task_scores, subset_mean_tasks)
    if not data.runs:
        raise CfbenchError("no scores given; pass item scores (items=) or task-level scores (task_scores=)")
    for run in (base, *tuned):
        if run not in data.runs:
            raise CfbenchError(
                f"run '{run}' has no scores (runs with scores: {', '.join(sorted(data.runs))}); "
                "check the run label or evaluate that run first"
            )

    settings = ReportSettings(n_boot=n_boot, seed=seed, confidence=confidence, alpha=alpha)
    subgroups = dict(subgroups or {})
    extras = tuple(t for t in extras)
    ref_cats = {k: tuple(v) for k, v in (reference_categories or {}).items()}
    why = dict(missing_reasons or {})
    rows = [_run_row(data, run, cats, extras, ref_cats, why) for run in (base, *tuned)]
    flags = frozenset(priors := data.label_priors(confidence))
    comparisons = [
        _compare(data, base, run, "base", cats, extras, subgroups, settings, ref_cats, why, flags) for run in tuned
    ]
    for without, with_ in detect_pairs(tuned) if pairs is None else pairs:
        for label in (without, with_):
            if label not in tuned:
                raise CfbenchError(
                    f"pair run '{label}' is not among the tuned runs {list(tuned)}; pass it as a tuned run"
                )
        comparisons.append(
            _compare(data, without, with_, "pair", cats, extras, subgroups, settings, ref_cats, why, flags)
        )
    return ComparisonReport(base, tuned, cats, extras, rows, comparisons, settings, label_prior=priors)
