"""Contrasts B − A between two tuned runs (or two methods' seeds) on every signal, and seed summaries.

"Did B forget less than A?" is a contrast. Reading it off two CIs against the base wastes the
pairing (both runs scored the same items) and ignores training noise, so it is computed directly:
every signal's per-item values of both arms (one run each, or one run per seed) go to
:func:`cfbench.replicates.paired_contrast` with one :class:`~cfbench.replicates.ResamplePlan` per
contrast, so every signal of a contrast (and a ratio of two of them, "per nat learned") shares the
seed draws. Categories and AVG are means of the task contrasts' replicates (the report's
aggregation rule: category = mean of its tasks, AVG = mean of categories), so they come from the
same item resamples per task. Multiplicity: the overall lines of one contrast (one per signal) are one
Holm family, each signal's categories and tasks another.

This module holds data and computes; renderers (:mod:`cfbench.report.render`) only format it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from cfbench.errors import CfbenchError
from cfbench.replicates import Contrast, ResamplePlan, paired_contrast, per_unit, run_level_contrast
from cfbench.stats import bootstrap_p, holm_adjust, percentile_ci, task_rng

#: Scope of a signal's overall line (AVG-style for per-task signals, the whole item set otherwise).
OVERALL = "all"
#: The learned signal whose gain divides the forgetting signals ("per nat learned").
GAIN_SIGNAL = "indomain_loss"


@dataclass(frozen=True)
class SignalSpec:
    """How a signal's per-item values read: units per task (``aggregate``) or one item set, and display.

    ``scale`` multiplies values for display (100 for accuracy points); ``count`` shows the value times the
    number of items (flip counts). ``vs_base``: the per-item value is already the run's change against the
    base (KL, flips, ...), so it can be read per nat learned.
    """

    name: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    kind: Literal["learned", "forgot"] = "forgot"
    aggregate: bool = False
    scale: float = 1.0
    count: bool = False
    vs_base: bool = True
    #: The verdict's words when B is better / worse; None: "forgot less/more" (or "learned more/less").
    verbs: tuple[str, str] | None = None


@dataclass
class ItemValues:
    """Per-item values of every signal, per run: ``values[signal][unit][run]`` is a Series indexed by item.

    A unit is a task (for ``aggregate`` signals) or :data:`OVERALL`. ``clusters[unit]`` maps an item to its
    cluster (e.g. a RACE article) where the task declares one.
    """

    specs: dict[str, SignalSpec] = field(default_factory=dict)
    values: dict[str, dict[str, dict[str, pd.Series]]] = field(default_factory=dict)
    clusters: dict[str, pd.Series] = field(default_factory=dict)

    def add(self, spec: SignalSpec, unit: str, run: str, series: pd.Series) -> None:
        self.specs.setdefault(spec.name, spec)
        self.values.setdefault(spec.name, {}).setdefault(unit, {})[run] = series


@dataclass(frozen=True)
class ContrastLine:
    """One signal at one scope of a contrast: B − A in the signal's display unit, with its test."""

    signal: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    kind: str
    scope: str
    estimate: float
    ci: tuple[float, float] | None
    p: float | None
    n: int
    mean_a: float
    mean_b: float
    seed_sd: tuple[float | None, float | None]
    level: str
    per_nat: bool = False
    p_adj: float | None = None
    significant: bool | None = None
    note: str | None = None
    verbs: tuple[str, str] | None = None


@dataclass
class ContrastResult:
    """B − A of every signal: ``a``/``b`` are labels (a run or a group), ``runs_*`` the runs behind them."""

    a: str
    b: str
    runs_a: tuple[str, ...]
    runs_b: tuple[str, ...]
    lines: list[ContrastLine]
    verdicts: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.b} − {self.a}"

    @property
    def level(self) -> str:
        return "items" if len(self.runs_a) == len(self.runs_b) == 1 else "seeds+items"

    def line(self, signal: str, scope: str = OVERALL, per_nat: bool = False) -> ContrastLine:
        for x in self.lines:
            if x.signal == signal and x.scope == scope and x.per_nat == per_nat:
                return x
        raise KeyError(f"{signal}@{scope}")


@dataclass(frozen=True)
class SeedRow:
    """One signal at one scope across a group's seeds: each seed's value, their mean and sample SD."""

    signal: str
    label: str
    unit: str
    scope: str
    values: tuple[float | None, ...]
    mean: float | None
    sd: float | None


@dataclass
class SeedGroup:
    """Runs that are seeds of one method (``--group``, or recognised from ``pair --seeds`` manifests)."""

    name: str
    runs: tuple[str, ...]
    rows: list[SeedRow] = field(default_factory=list)
    #: How the group was formed: "--group" or the manifest fields the runs share.
    source: str = "--group"

    @property
    def note(self) -> str | None:
        """A group of one seed says so instead of showing an SD of 0 or nothing."""
        if len(self.runs) > 1:
            return None
        return (
            f"group {self.name} has one seed ({self.runs[0]}): it cannot estimate seed noise; train more seeds "
            "(cfbench pair --seeds 0,1,2) for a between-seed SD"
        )


# -- statistics ---------------------------------------------------------------------------------------------
def _common(series: Sequence[pd.Series]) -> pd.Index:
    """The items every run scored, in a fixed (sorted) order."""
    index = series[0].index
    for s in series[1:]:
        index = index.intersection(s.index)
    return index.sort_values()


def unit_contrast(values: ItemValues, name: str, unit: str, runs_a: Sequence[str], runs_b: Sequence[str],
                  plan: ResamplePlan | None, confidence: float) -> Contrast | None:  # fmt: skip
    """B − A of one signal on one unit over the items all runs of both arms scored (None: no such item)."""
    per_run = values.values.get(name, {}).get(unit, {})
    if any(r not in per_run for r in (*runs_a, *runs_b)):
        return None
    index = _common([per_run[r] for r in (*runs_a, *runs_b)])
    sizes = [len(per_run[r]) for r in (*runs_a, *runs_b)]
    if len(index) < min(sizes) and len(runs_a) > 1 and len(runs_b) > 1:
        # seeds that scored different items (each its own held-out split) pair no items: run means,
        # seeds as replicates; an intersection of a few items would be a contrast of the wrong thing
        means = [[float(per_run[r].mean()) for r in runs] for runs in (runs_a, runs_b)]
        return run_level_contrast(means[0], means[1], plan, confidence=confidence, n_items=sum(sizes))
    if len(index) == 0:
        return None
    arm = [[per_run[r].reindex(index).to_numpy(float) for r in runs] for runs in (runs_a, runs_b)]
    clusters = values.clusters.get(unit)
    cl = clusters.reindex(index).to_numpy(object) if clusters is not None else None
    if cl is not None and pd.isna(cl).any():
        cl = None
    return paired_contrast(arm[0], arm[1], plan, confidence=confidence, clusters=cl)


def mean_contrast(parts: Sequence[Contrast], confidence: float) -> Contrast:
    """The mean of several contrasts (tasks → category → AVG), replicate by replicate.

    The parts share the plan's seed draws and resample their items independently (a stratified
    bootstrap); with seeds the interval is ``estimate ± t(df)·SE`` with the smallest part's df.
    """
    est = float(np.mean([c.estimate for c in parts]))
    common = dict(
        mean_a=float(np.mean([c.mean_a for c in parts])), mean_b=float(np.mean([c.mean_b for c in parts])),
        seed_sd=(None, None), n_items=sum(c.n_items for c in parts), k=parts[0].k, level=parts[0].level,
    )  # fmt: skip
    if any(c.reps_a is None or c.reps_b is None for c in parts):
        return Contrast(est, None, None, None, None, **common)
    reps_a = np.mean([c.reps_a for c in parts], axis=0)
    reps_b = np.mean([c.reps_b for c in parts], axis=0)
    diff = reps_b - reps_a
    if common["level"] == "items":
        return Contrast(est, percentile_ci(diff, confidence), bootstrap_p(diff), reps_a, reps_b, **common)
    df = min(c.df if c.df is not None else float("inf") for c in parts)
    se = float(np.std(diff, ddof=1))
    if se <= 0:
        return Contrast(est, (est, est), 1.0 if est == 0 else 0.0, reps_a, reps_b, df=df, **common)
    q = float(student_t.ppf((1 + confidence) / 2, df))
    p = float(2 * student_t.sf(abs(est) / se, df))
    return Contrast(est, (est - q * se, est + q * se), p, reps_a, reps_b, df=df, **common)


def _line(spec: SignalSpec, scope: str, c: Contrast, per_nat: bool = False) -> ContrastLine:
    """A contrast in the signal's display unit (×scale, or a count: × the items)."""
    k = c.n_items if spec.count else spec.scale
    ci = None if c.ci is None else (k * c.ci[0], k * c.ci[1])
    sd = tuple(None if s is None else k * s for s in c.seed_sd)
    label, unit = (f"{spec.label} per nat learned", f"{spec.unit} per nat") if per_nat else (spec.label, spec.unit)
    return ContrastLine(spec.name, label, unit, spec.better, spec.kind, scope, k * c.estimate, ci, c.p, c.n_items,
                        k * c.mean_a, k * c.mean_b, sd, c.level, per_nat, note=c.note, verbs=spec.verbs)  # type: ignore[arg-type]  # fmt: skip


def _scoped(values: ItemValues, spec: SignalSpec, runs_a: Sequence[str], runs_b: Sequence[str],
            plan: ResamplePlan | None, categories: Mapping[str, Sequence[str]],
            confidence: float) -> list[tuple[str, Contrast]]:  # fmt: skip
    """(scope, contrast) of one signal: overall, categories and tasks (per-task signals), or its one item set."""
    units = values.values.get(spec.name, {})
    got = {u: c for u in units if (c := unit_contrast(values, spec.name, u, runs_a, runs_b, plan, confidence))}
    if not spec.aggregate:
        return [(u, c) for u, c in got.items()]
    means = {t: _run_means(values, spec.name, t, runs_a, runs_b) for t in got}
    cats, cat_means = {}, {}
    for name, members in categories.items():
        present = [t for t in members if t in got]
        if present:
            cat_means[name] = tuple(np.mean([means[t][i] for t in present], axis=0) for i in (0, 1))
            cats[name] = _seed_sd(mean_contrast([got[t] for t in present], confidence), cat_means[name])
    out = []
    if cats:
        avg_means = tuple(np.mean([m[i] for m in cat_means.values()], axis=0) for i in (0, 1))
        out = [(OVERALL, _seed_sd(mean_contrast(list(cats.values()), confidence), avg_means))]
    return out + list(cats.items()) + list(got.items())


def _run_means(values: ItemValues, name: str, unit: str, runs_a: Sequence[str],
               runs_b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each run's item mean on the items every run of the contrast scored (the arrays a contrast reads)."""
    per_run = values.values[name][unit]
    index = _common([per_run[r] for r in (*runs_a, *runs_b)])
    return tuple(np.array([per_run[r].reindex(index).mean() for r in runs]) for runs in (runs_a, runs_b))  # type: ignore[return-value]


def _seed_sd(c: Contrast, means: tuple[np.ndarray, np.ndarray]) -> Contrast:
    """An aggregate's between-seed SD: the SD over each arm's runs of their aggregate values (None: one run)."""
    sd = tuple(float(np.std(m, ddof=1)) if m.size > 1 else None for m in means)
    return replace(c, seed_sd=sd)


def _negated(c: Contrast) -> Contrast:
    """The same contrast with the sign flipped (in-domain loss change → in-domain gain)."""
    neg = None if c.ci is None else (-c.ci[1], -c.ci[0])
    reps_a = None if c.reps_a is None else -c.reps_a
    reps_b = None if c.reps_b is None else -c.reps_b
    return replace(c, estimate=-c.estimate, ci=neg, mean_a=-c.mean_a, mean_b=-c.mean_b, reps_a=reps_a, reps_b=reps_b)


def _per_nat(specs: Sequence[SignalSpec], found: Mapping[str, Contrast], confidence: float,
             notes: list[str]) -> list[ContrastLine]:  # fmt: skip
    """Each forgetting signal divided by the in-domain gain (loss decrease), from the same seed draws."""
    if GAIN_SIGNAL not in found:
        return []
    gain = _negated(found[GAIN_SIGNAL])
    out = []
    for spec in specs:
        if spec.kind != "forgot" or not spec.vs_base or spec.name not in found:
            continue
        try:
            out.append(_line(spec, OVERALL, per_unit(found[spec.name], gain, confidence=confidence), per_nat=True))
        except CfbenchError as exc:
            notes.append(f"per nat learned: {exc}")
            return out
    return out


def _holm(lines: list[ContrastLine], alpha: float) -> list[ContrastLine]:
    """Holm families of one contrast: its overall lines (one per signal, the verdicts, per nat learned
    included) are one family; each signal's other scopes (categories, tasks) are another, as the
    drift signals' scopes of one run are. Stars use the adjusted p."""
    families: dict[str | None, list[int]] = {}
    for i, x in enumerate(lines):
        if x.p is not None:
            families.setdefault(None if x.scope == OVERALL else x.signal, []).append(i)
    out = list(lines)
    for members in families.values():
        for i, a in zip(members, holm_adjust([lines[i].p for i in members]), strict=True):  # type: ignore[misc]
            out[i] = replace(lines[i], p_adj=a, significant=a < alpha)
    return out


def fmt_value(x: float) -> str:
    """Four significant digits with a real minus sign, as the verdicts print them."""
    text = f"{x:+.4g}" if x != 0 else "0"
    return text.replace("-", "−")


def verdict(b: str, a: str, x: ContrastLine) -> str:
    """``w/ SAM forgot less than w/o SAM: KL −0.047 [−0.061, −0.033] nats (p 0.001, Holm 0.004)``.

    Direction from the signal's ``better``; the verdict follows the Holm-adjusted p (as the stars do),
    so a raw CI that excludes 0 without surviving Holm reads "no detectable difference after Holm".
    """
    ci = "" if x.ci is None else f" [{fmt_value(x.ci[0])}, {fmt_value(x.ci[1])}]"
    value = f"{x.label} {fmt_value(x.estimate)}{ci}" + ("" if x.unit in ("", "share") else f" {x.unit}")
    if x.significant is None:
        why = x.note or "no CI (--n-boot 0)"
        return f"{b} vs {a}: not judged ({why}): {value}"
    if x.p is not None and x.p_adj is not None:  # the test behind the verdict: the star follows Holm, not the CI
        value += f" (p {x.p:.3f}, Holm {x.p_adj:.3f})"
    if not x.significant:
        # a raw CI clear of 0 that Holm does not star is said so, not read as "the same"
        after = " after Holm" if x.ci is not None and (x.ci[0] > 0 or x.ci[1] < 0) else ""
        return f"{b} vs {a}: no detectable difference{after}: {value}"
    b_better = x.estimate < 0 if x.better == "lower" else x.estimate > 0
    if x.verbs is not None:
        phrase = x.verbs[0] if b_better else x.verbs[1]
    elif x.kind == "learned":
        phrase = "learned more" if b_better else "learned less"
    else:
        phrase = "forgot less" if b_better else "forgot more"
    return f"{b} {phrase} than {a}: {value}"


def build_contrast(
    values: ItemValues,
    a: str,
    runs_a: Sequence[str],
    b: str,
    runs_b: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    *,
    n_boot: int,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> ContrastResult:
    """B − A of every signal in ``values``, per scope, with verdicts; refused when the arms share no item.

    One :class:`ResamplePlan` serves the whole contrast (seeded from ``seed`` and the arm sizes, never
    from labels), so every signal and every per-nat ratio shares its seed draws.
    """
    plan = None
    if n_boot > 0:
        plan = ResamplePlan(len(runs_a), len(runs_b), n_boot, task_rng(seed, "contrast", str(len(runs_a)),
                                                                         str(len(runs_b))))  # fmt: skip
    lines: list[ContrastLine] = []
    notes: list[str] = []
    overall: dict[str, Contrast] = {}
    specs = list(values.specs.values())
    for spec in specs:
        for scope, c in _scoped(values, spec, runs_a, runs_b, plan, categories, confidence):
            lines.append(_line(spec, scope, c))
            if scope == OVERALL:
                overall[spec.name] = c
    if not lines:
        raise CfbenchError(
            f"contrast {b} − {a}: the runs share no scored item on any signal; contrast runs scored on the same "
            "tasks and documents"
        )
    lines += _per_nat(specs, overall, confidence, notes)
    lines = _holm(lines, alpha)
    verdicts = [verdict(b, a, x) for x in lines if x.scope == OVERALL]
    return ContrastResult(a, b, tuple(runs_a), tuple(runs_b), lines, verdicts, notes)
