"""Δ-vs-base chart of a ``ComparisonReport``: categories/AVG on top, every task below.

Horizontal bars because task names are long and a forgetting table has ~15-20 of them; error bars
are the same bootstrap CIs the tables print, so the picture never claims more than the numbers.
matplotlib is imported inside ``plot_report`` (Agg backend) so importing cfbench.report stays cheap
and never needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cfbench.errors import CfbenchError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cfbench.report.table import Comparison, ComparisonReport

# (delta, ci, significant, partial) for each bar of one series
_Bar = tuple[float | None, tuple[float, float] | None, bool, bool]


def _category_rows(report: ComparisonReport, cmp: Comparison) -> tuple[list[str], list[_Bar]]:
    labels, bars = [], []
    for agg in [*cmp.categories.values(), cmp.avg]:
        labels.append(agg.name)
        bars.append((agg.delta, agg.ci, report.aggregate_significant(agg), agg.coverage.partial))
    return labels, bars


def _dagger_partial(labels: list[str], series: list[tuple[str, list[_Bar]]]) -> list[str]:
    """A category partial in any series gets † in its tick label (the bar's own † says which series)."""
    return [
        label + ("†" if any(bars[i][3] and bars[i][0] is not None for _, bars in series) else "")
        for i, label in enumerate(labels)
    ]


def _paired_items(cmp: Comparison) -> int | None:
    """Items behind one comparison's Δ (task rows, not sub-groups); None for task-level scores only."""
    ns = [t.n for t in cmp.tasks if t.group is None and t.n is not None]
    return sum(ns) if ns else None


def _n_text(comparisons: list[Comparison]) -> str:
    ns = {n for c in comparisons if (n := _paired_items(c)) is not None}
    if not ns:
        return "task-level scores (no items)"
    lo, hi = min(ns), max(ns)
    return f"n = {lo:,} paired items" if lo == hi else f"n = {lo:,}–{hi:,} paired items"


def _task_rows(cmp: Comparison) -> tuple[list[str], list[_Bar]]:
    labels, bars = [], []
    for t in cmp.tasks:
        if t.group:
            label = f"{t.task} · {t.group}"
        else:
            label = f"{t.task} ({t.category if t.category is not None else 'extra'})"
        labels.append(label)
        bars.append((t.delta, t.ci, t.significant, False))
    return labels, bars


def _draw(ax: Axes, labels: list[str], series: list[tuple[str, list[_Bar]]], title: str) -> list[float]:
    """Bars, CIs and markers of one panel; returns every x it drew, for the shared axis limits."""
    n_rows, k = len(labels), len(series)
    height = 0.8 / k
    colors = [f"C{i}" for i in range(k)]
    span: list[float] = [0.0]
    for s, (name, bars) in enumerate(series):
        y = np.arange(n_rows) + (s - (k - 1) / 2) * height
        for yi, (delta, ci, sig, partial) in zip(y, bars, strict=True):
            if delta is None:
                ax.annotate(
                    "missing",
                    (0, yi),
                    xytext=(3, 0),
                    textcoords="offset points",
                    ha="left",
                    va="center",
                    fontsize=7,
                    color=colors[s],
                    style="italic",
                )
                continue
            d = 100 * delta
            ax.barh(
                yi,
                d,
                height=height * 0.92,
                color=colors[s],
                alpha=0.85 if ci is not None else 0.45,
                hatch=None if ci is not None else "//",
                edgecolor=colors[s],
                linewidth=0.6,
            )
            # A marker at the bar's end: a Δ of exactly zero has a zero-width bar, and must still show.
            ax.plot(d, yi, marker="D", markersize=4, color=colors[s], markeredgecolor="#222",
                    markeredgewidth=0.6, linestyle="none", zorder=3)  # fmt: skip
            end = d
            if ci is not None:
                lo, hi = 100 * ci[0], 100 * ci[1]
                ax.errorbar(d, yi, xerr=[[d - lo], [hi - d]], fmt="none", ecolor="#222", elinewidth=1.0, capsize=2.5)
                end = hi if d >= 0 else lo
                span += [lo, hi]
            span.append(d)
            mark = ("*" if sig else "") + ("†" if partial else "")
            if mark:
                ax.annotate(
                    mark,
                    (end, yi),
                    xytext=(4 if d >= 0 else -4, 0),
                    textcoords="offset points",
                    ha="left" if d >= 0 else "right",
                    va="center",
                    fontsize=10,
                    fontweight="bold",
                )
        ax.barh(np.nan, 0, color=colors[s], label=name)  # legend handle independent of data
    ax.axvline(0, color="#444", linewidth=0.9)
    ax.set_yticks(np.arange(n_rows), labels)
    ax.set_ylim(n_rows - 0.5, -0.5)  # first row on top, like the tables
    ax.grid(axis="x", color="#ddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for y in np.arange(n_rows - 1) + 0.5:
        ax.axhline(y, color="#eee", linewidth=0.6)
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel(SHARED_XLABEL)
    return span


#: Both panels use one x range, so a bar's length means the same in each; the label says so.
SHARED_XLABEL = "Δ (points ×100; same x scale in both panels)"


def plot_report(
    report: ComparisonReport,
    path: str | Path,
    *,
    include_pairs: bool = False,
    dpi: int = 150,
    suite: str | None = None,
) -> Path:
    """Write a PNG of Δ per category and per task with bootstrap-CI error bars; returns the path.

    One series per tuned run (Δ vs base); ``include_pairs`` adds the w/–w/o Δ series. Hatched bars
    have no CI (task-level imports), ``*`` marks significant Δ, ``†`` partial coverage (also on the
    category's tick label), a diamond marks every Δ (so a Δ of 0 is visible). Both panels share one
    x scale. The title names ``suite`` (when given) and the paired items behind the Δs.
    """
    fig = report_figure(report, include_pairs=include_pairs, suite=suite)  # selects the Agg backend first
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def report_figure(report: ComparisonReport, *, include_pairs: bool = False, suite: str | None = None) -> Figure:
    """The figure :func:`plot_report` saves (Agg backend), for callers and tests that inspect artists."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    comparisons = report.comparisons if include_pairs else report.base_comparisons
    if not comparisons:
        raise CfbenchError("the report has no comparison to plot; build it with at least one tuned run")
    cat_labels = _category_rows(report, comparisons[0])[0]
    task_labels = _task_rows(comparisons[0])[0]
    cat_series = [(c.label, _category_rows(report, c)[1]) for c in comparisons]
    task_series = [(c.label, _task_rows(c)[1]) for c in comparisons]

    per_row = 0.2 * len(comparisons) + 0.12
    h_cat = max(1.6, per_row * len(cat_labels))
    h_task = max(2.5, per_row * len(task_labels))
    fig, (ax_cat, ax_task) = plt.subplots(
        2,
        1,
        figsize=(9.5, h_cat + h_task + 2.0),
        gridspec_kw={"height_ratios": [h_cat, h_task]},
        layout="constrained",
    )
    level = f"{100 * report.settings.confidence:g}%"
    span = _draw(ax_cat, _dagger_partial(cat_labels, cat_series), cat_series, "Δ by category")
    span += _draw(ax_task, task_labels, task_series, "Δ by task")
    lo, hi = min(span), max(span)
    pad = 0.12 * max(hi - lo, 1.0)
    for ax in (ax_cat, ax_task):
        ax.set_xlim(lo - pad, hi + pad)
    ax_cat.legend(
        loc="lower left", bbox_to_anchor=(0.0, 1.12), ncol=min(len(comparisons), 3), frameon=False, fontsize=9
    )
    title = f"Forgetting: Δ vs {report.base}" + (
        " and w/ − w/o pairs" if report.pair_comparisons and include_pairs else ""
    )
    title += "\n" + ", ".join(x for x in (f"suite {suite}" if suite else "", _n_text(comparisons)) if x)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.supxlabel(
        f"Error bars: {level} paired bootstrap CI (B={report.settings.n_boot}).   "
        "* significant   † partial coverage   hatched: no item-level data (no CI)",
        fontsize=8,
        color="#555",
    )
    return fig
