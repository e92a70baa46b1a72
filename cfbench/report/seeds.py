"""Seeds as replicates: the mean and between-seed SD of every signal of one method's runs.

A group's runs are seeds of one method. Each run's signals against the base are the report's own
(accuracy Δ, flips, every attached signal), so the group table cannot disagree with the per-run
tables; the SD is the sample SD (n − 1) over seeds, and a group of one seed has none (its note says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfbench.report.contrast import OVERALL, SeedGroup, SeedRow
from cfbench.report.table import ComparisonReport


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def _accuracy_rows(report: ComparisonReport, runs: Sequence[str]) -> list[SeedRow]:
    """Accuracy Δ (points) at AVG and per category, and the flips summed over the tasks in AVG."""
    rows = []
    cmps = [report.vs_base(r) for r in runs]
    for scope in [OVERALL, *report.categories]:
        aggs = [c.avg if scope == OVERALL else c.categories[scope] for c in cmps]
        vals = tuple(None if a.delta is None else 100 * a.delta for a in aggs)
        if any(v is not None for v in vals):
            rows.append(SeedRow("accuracy", "accuracy Δ vs base", "points", scope, vals, *_mean_sd(vals)))
    for which in ("forgotten", "gained"):
        vals = []
        for c in cmps:
            flips = [t for t in c.tasks if t.group is None and t.category is not None and t.forgotten is not None]
            vals.append(float(sum(getattr(t, which) or 0 for t in flips)) if flips else None)
        if any(v is not None for v in vals):
            rows.append(SeedRow(which, f"{which} (flips vs base)", "items", OVERALL, tuple(vals), *_mean_sd(vals)))
    return rows


def seed_group(report: ComparisonReport, name: str, runs: Sequence[str], source: str = "--group") -> SeedGroup:
    """Every signal of the group's runs at the overall and category scopes: values per seed, mean, SD."""
    rows = _accuracy_rows(report, runs)
    keys: dict[tuple[str, str], tuple[str, str]] = {}
    for run in runs:
        for s in report.signals.get(run, []):
            if s.scope == OVERALL or s.scope in report.categories or s.scope not in _tasks(report):
                keys.setdefault((s.name, s.scope), (s.label, s.unit))
    for (sig, scope), (label, unit) in keys.items():
        vals = tuple(
            next((s.value for s in report.signals.get(r, []) if s.name == sig and s.scope == scope), None) for r in runs
        )
        rows.append(SeedRow(sig, label, unit, scope, vals, *_mean_sd(vals)))
    return SeedGroup(name, tuple(runs), rows, source)


def _tasks(report: ComparisonReport) -> set[str]:
    return {t for m in report.categories.values() for t in m} | set(report.extras)
