"""Comparisons (layer 7): which runs take part, their items gathered, the report built, the gate checked.

May import report, metrics and everything below, never ``train``; ``refs`` and ``paper`` say what
an argument names (a checkpoint, a stored run, one of the paper's published runs).
"""

from __future__ import annotations

from cfbench.comparison.attach import PplDrift
from cfbench.comparison.gate import (
    Budget,
    DriftBudget,
    DriftGateLine,
    GateLine,
    GateResult,
    drift_gate,
    drift_gate_markdown,
    gate,
    gate_markdown,
    parse_budgets,
    parse_drift_budgets,
    regress,
)
from cfbench.comparison.gather import gather
from cfbench.comparison.pipeline import CompareResult, compare
from cfbench.comparison.runs import RunRef, resolve_runs

__all__ = [
    "Budget",
    "CompareResult",
    "DriftBudget",
    "DriftGateLine",
    "GateLine",
    "GateResult",
    "PplDrift",
    "RunRef",
    "compare",
    "drift_gate",
    "drift_gate_markdown",
    "gate",
    "gate_markdown",
    "gather",
    "parse_budgets",
    "parse_drift_budgets",
    "regress",
    "resolve_runs",
]
