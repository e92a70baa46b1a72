"""Paired forgetting reports: statistics, the paper-style table and its renderers, and a Δ plot.

Typical use::

    report = build_report("base", ["w/o SAM", "w/ SAM"], CATEGORIES, items=items,
                          extras=["truthfulqa_mc"], subgroups={"mmlu": MMLU_SUBGROUPS})
    report.print()                      # rich terminal table
    Path("report.md").write_text(report.to_markdown())
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
