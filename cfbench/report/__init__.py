"""Reports (layer 6): the paper-style report's data model, its renderers, HTML pages, plots and the leaderboard.

The data model (:mod:`.table`) holds no formatting; renderers are functions (:mod:`.render`, :mod:`.html`).
May import metrics, store and everything below; never comparison, train or analysis.

Typical use::

    report = build_report("base", ["w/o SAM", "w/ SAM"], CATEGORIES, items=items,
                          extras=["truthfulqa_mc"], subgroups={"mmlu": MMLU_SUBGROUPS})
    print_report(report)                # rich terminal table (cfbench.report.render)
    Path("report.md").write_text(to_markdown(report))
    plot_report(report, "delta.png")
"""

from __future__ import annotations

from cfbench.report.groups import MMLU_SUBGROUPS
from cfbench.report.plot import plot_report
from cfbench.report.table import (
    CategoryScore,
    Comparison,
    ComparisonReport,
    ReportSettings,
    RunRow,
    TaskRow,
    build_report,
    detect_pairs,
)
from cfbench.stats import AggregateDelta, Coverage, TaskDelta

__all__ = [
    "MMLU_SUBGROUPS",
    "AggregateDelta",
    "CategoryScore",
    "Comparison",
    "ComparisonReport",
    "Coverage",
    "ReportSettings",
    "RunRow",
    "TaskDelta",
    "TaskRow",
    "build_report",
    "detect_pairs",
    "plot_report",
]
