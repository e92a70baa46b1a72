"""The nightly regression gate: budgets on accuracy Δ and on drift signals, checked against a report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfbench.comparison.boot import budget_value as _budget_value
from cfbench.comparison.boot import check_n_boot
from cfbench.comparison.contrast_gate import (
    ContrastGateLine,
    contrast_gate,
    contrast_gate_markdown,
    parse_contrast_budgets,
)
from cfbench.comparison.pipeline import compare
from cfbench.errors import CfbenchError
from cfbench.metrics import get_metric, registered_metrics
from cfbench.report.contrast import ContrastResult, ItemValues, build_contrast
from cfbench.report.table import ComparisonReport
from cfbench.tasks.registry import Suite, load_suite


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
    #: Set when the budget is below the row's minimum detectable effect (80 % power): says what n would do.
    warning: str | None = None
    mde_points: float | None = None


def mde_warning(budget: float, mde_points: float | None, n: int) -> str | None:
    """A budget below the MDE makes a gate that (at 80 % power) cannot catch a drop of the budget's size.

    The MDE scales as 1/√n, so ``n · (MDE / budget)²`` items would bring it down to the budget.
    """
    if mde_points is None or budget >= mde_points or n <= 0:
        return None
    if budget <= 0:
        return f"budget 0 is below the MDE {mde_points:.2f} points (80% power): no n detects a drop of 0"
    need = math.ceil(n * (mde_points / budget) ** 2)
    return (
        f"budget {budget:.2f} is below the MDE {mde_points:.2f} points (80% power for n={n}): a drop of the "
        f"budget's size is mostly missed; about n={need} items would detect it"
    )


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

    Significance: the report's own star for that row (:meth:`ComparisonReport.aggregate_significant`:
    the test of that quantity, Holm-adjusted, at the report's alpha), so the gate and the table never
    disagree; a category of one task is judged by that task's test. When the baseline has no
    item-level scores (imported summary), or with ``--n-boot 0`` (no CIs, no stars), no test is used
    and the budget alone decides; the reason says which.
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
        # --n-boot 0 means "no CIs, no stars": the gate then has no test and the budget alone decides.
        tested = agg.p is not None and report.settings.n_boot > 0
        significant = report.aggregate_significant(agg) if tested else True
        over = -d > b.points
        failed = over and significant
        p_text = f"{agg.test} p {agg.p:.3g}, Holm {agg.p_adj:.3g}" if tested and agg.p_adj is not None else ""
        if failed:
            no_ci = " (no CI: --n-boot 0)" if report.settings.n_boot == 0 else " (no CI: task-level baseline)"
            reason = f"dropped {-d:.2f} > {b.points:.2f} points" + (f", significant ({p_text})" if tested else no_ci)
        elif over:
            ci_text = f"CI {ci[0]:.2f}..{ci[1]:.2f}; " if ci else ""
            reason = f"dropped {-d:.2f} > {b.points:.2f} points but not significant ({ci_text}{p_text})"
        else:
            reason = f"within budget ({d:+.2f} points)"
        if agg.coverage.partial:
            reason += f"; partial: {agg.coverage.label}"
        mde = 100 * agg.mde if agg.mde is not None else None
        n = sum(t.n or 0 for t in cmp.tasks if t.group is None and t.task in agg.coverage.present)
        warning = mde_warning(b.points, mde, n)
        lines.append(GateLine(b.category, d, ci, b.points, significant, failed, reason, warning, mde))
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
        warn = f"; ⚠ {x.warning}" if x.warning else ""
        out.append(f"| {x.category} | {d} | {ci} | {x.budget:.2f} | {'❌ ' if x.failed else '✅ '}{x.reason}{warn} |")
    if not lines:
        out = out[:-2]
    if drift_lines:
        out += ["", drift_gate_markdown(drift_lines).rstrip("\n")]
    return "\n".join(out) + "\n"


@dataclass
class GateResult:
    """A ``cfbench regress`` verdict: every budget's line, and the report it was judged on."""

    baseline: str
    candidate: str
    significance: float
    lines: list[GateLine]
    drift_lines: list[DriftGateLine]
    report: ComparisonReport
    #: ``--previous``/``--max-worse``: the contrast candidate − previous and its budgets' lines.
    contrast: ContrastResult | None = None
    contrast_lines: list[ContrastGateLine] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(x.failed for x in [*self.lines, *self.drift_lines, *self.contrast_lines])

    def markdown(self) -> str:
        text = gate_markdown(self.baseline, self.candidate, self.lines, self.significance, self.drift_lines)
        if self.contrast is None:
            return text
        if self.failed and "PASS" in text.splitlines()[0]:
            text = text.replace("PASS", "FAIL", 1)
        return text + "\n" + contrast_gate_markdown(self.contrast, self.contrast_lines)

    def tidy_rows(self) -> list[dict[str, Any]]:
        """One row per budget: ``kind`` accuracy (Δ in points) or drift (the metric's own unit)."""
        rows: list[dict[str, Any]] = []
        for x in self.lines:
            lo, hi = x.ci_points if x.ci_points is not None else (None, None)
            rows.append({"kind": "accuracy", "scope": x.category, "metric": "delta", "value": x.delta_points,
                         "ci_low": lo, "ci_high": hi, "budget": x.budget, "unit": "points",
                         "significant": x.significant, "failed": x.failed, "reason": x.reason,
                         "mde": x.mde_points, "warning": x.warning})  # fmt: skip
        for d in self.drift_lines:
            lo, hi = d.ci if d.ci is not None else (None, None)
            rows.append({"kind": "drift", "scope": d.budget.scope, "metric": d.budget.metric, "value": d.value,
                         "ci_low": lo, "ci_high": hi, "budget": d.budget.value, "unit": d.unit,
                         "significant": None, "failed": d.failed, "reason": d.reason,
                         "mde": None, "warning": None})  # fmt: skip
        for c in self.contrast_lines:
            x = c.line
            lo, hi = x.ci if x is not None and x.ci is not None else (None, None)
            rows.append({"kind": "contrast", "scope": c.budget.scope, "metric": c.budget.signal,
                         "value": None if x is None else x.estimate, "ci_low": lo, "ci_high": hi,
                         "budget": c.budget.value, "unit": None if x is None else x.unit,
                         "significant": None if x is None else x.significant, "failed": c.failed,
                         "reason": c.reason, "mde": None, "warning": None})  # fmt: skip
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"result": "FAIL" if self.failed else "PASS", "baseline": self.baseline, "candidate": self.candidate,
                "significance": self.significance, "budgets": self.tidy_rows()}  # fmt: skip


def regress(
    baseline: str,
    candidate: str,
    *,
    max_drop: Sequence[str] = (),
    max_drift: Sequence[str] = (),
    significance: float = 0.05,
    suite: str = "paper",
    results: str | Path = "results",
    n_boot: int = 2000,
    eval_kwargs: dict[str, Any] | None = None,
    previous: Sequence[str] = (),
    candidate_seeds: Sequence[str] = (),
    max_worse: Sequence[str] = (),
) -> GateResult:
    """The nightly gate: compare ``candidate`` with ``baseline`` and check every budget.

    ``max_drop``: ``CATEGORY=POINTS`` (:func:`parse_budgets`), ``max_drift``: ``[SCOPE:]METRIC=VALUE``
    (:func:`parse_drift_budgets`); every argument is checked before anything is scored. ``previous``
    (the last accepted candidate, or its seeds) with ``max_worse`` (``[SCOPE:]SIGNAL=VALUE``,
    :mod:`cfbench.comparison.contrast_gate`) gates the contrast candidate − previous; ``candidate_seeds``
    are more seeds of the candidate (a two-level CI).
    """
    if bool(previous) != bool(max_worse):
        raise CfbenchError(
            "--max-worse budgets need --previous RUN (the last accepted candidate), and --previous needs at least "
            "one --max-worse [SCOPE:]SIGNAL=VALUE, e.g. --previous nightly-0412 --max-worse kl=0.01"
        )
    if candidate_seeds and not previous:
        raise CfbenchError("--candidate-seed only adds seeds to the contrast with --previous; give --previous too")
    if not 0 < significance < 1:
        raise CfbenchError(f"--significance {significance} must be in (0, 1), e.g. 0.05")
    check_n_boot(n_boot, 1 - significance)
    if n_boot == 0 and max_drop:
        raise CfbenchError(
            "--max-drop judges a drop by its bootstrap CI (significant = the CI lies below 0), and --n-boot 0 "
            "computes none: pass --n-boot 2000 (or judge only --max-drift budgets, whose value decides without a CI)"
        )
    if not max_drop and not max_drift and not max_worse:
        raise CfbenchError(
            "give at least one --max-drop CATEGORY=POINTS or --max-drift METRIC=VALUE budget, "
            "e.g. --max-drop DK=1.5 (or --previous RUN with --max-worse SIGNAL=VALUE)"
        )
    suite_obj = load_suite(suite)
    budgets = parse_budgets(max_drop, suite_obj) if max_drop else []
    drift_budgets = parse_drift_budgets(max_drift or [], suite_obj)
    worse_budgets = parse_contrast_budgets(max_worse, suite_obj)
    tuned = [candidate, *candidate_seeds, *previous]
    res = compare(baseline, tuned, suite=suite, results=results, n_boot=n_boot, confidence=1 - significance,
                  alpha=significance, pairs=[], eval_kwargs=eval_kwargs)  # fmt: skip
    lines = gate(res.report, budgets, significance)
    drift_lines = drift_gate(res.report, res.runs[1].label, drift_budgets)
    out = GateResult(res.runs[0].label, res.runs[1].label, significance, lines, drift_lines, res.report)
    if previous:
        cand = [r.label for r in res.runs[1 : 2 + len(candidate_seeds)]]
        prev = [r.label for r in res.runs[2 + len(candidate_seeds) :]]
        out.contrast = build_contrast(
            res.values or ItemValues(), _arm_name("previous", prev), prev, _arm_name("candidate", cand), cand,
            res.report.categories, n_boot=n_boot, seed=0, confidence=1 - significance, alpha=significance,
        )  # fmt: skip
        out.contrast_lines = contrast_gate(out.contrast, worse_budgets)
        res.report.contrasts.append(out.contrast)  # so the report (and --summary) shows the whole contrast
    return out


def _arm_name(role: str, runs: Sequence[str]) -> str:
    """A contrast side: the run's own label, or ``previous (3 seeds)`` for several."""
    return runs[0] if len(runs) == 1 else f"{role} ({len(runs)} seeds)"
