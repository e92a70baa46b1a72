"""The gate on a contrast: tonight's candidate may not be worse than the last accepted one by more than X.

``regress --previous RUN --max-worse kl=0.01`` contrasts the candidate (B) with the last accepted
candidate (A) on the items both scored (:mod:`cfbench.report.contrast`): B − A must not lie past the
budget in the signal's worse direction. As for ``--max-drift``, a budget fails only when the *whole*
CI lies past it, so noise alone cannot fail a night; with seeds of either (``--previous`` repeated,
``--candidate-seed``) the CI is the two-level one (seeds, then items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cfbench.comparison.boot import budget_value as _budget_value
from cfbench.comparison.contrasts import ACCURACY, FORGOTTEN, GAINED, INDOMAIN_EM, INDOMAIN_LOSS
from cfbench.errors import CfbenchError
from cfbench.metrics import registered_metrics
from cfbench.report.contrast import OVERALL, ContrastLine, ContrastResult
from cfbench.tasks.registry import Suite

_FIXED = {s.name: s for s in (ACCURACY, FORGOTTEN, GAINED, INDOMAIN_LOSS, INDOMAIN_EM)}


@dataclass
class ContrastBudget:
    """``[SCOPE:]SIGNAL=VALUE``: how much worse than the previous candidate a signal may get, in its unit."""

    scope: str  # "all", a category or a task
    signal: str
    value: float

    @property
    def label(self) -> str:
        return self.signal if self.scope == OVERALL else f"{self.scope}:{self.signal}"


@dataclass
class ContrastGateLine:
    budget: ContrastBudget
    line: ContrastLine | None
    failed: bool
    reason: str


def contrast_signals() -> dict[str, str]:
    """Signal name → unit of everything a contrast budget may name (registered metrics included)."""
    out = {name: s.unit for name, s in _FIXED.items()}
    out.update({m.name: m.unit for m in registered_metrics()})
    return out


def parse_contrast_budgets(specs: Sequence[str], suite: Suite) -> list[ContrastBudget]:
    """``SIGNAL=VALUE`` (overall) or ``SCOPE:SIGNAL=VALUE``; VALUE finite and ≥ 0 in the signal's unit
    (accuracy in points, flips in items). Checked before anything is scored."""
    known = contrast_signals()
    scopes = {*suite.categories, *suite.tasks}
    out = []
    for spec in specs:
        key, sep, val = spec.partition("=")
        if not sep:
            raise CfbenchError(f"--max-worse {spec!r} is not [SCOPE:]SIGNAL=VALUE; write e.g. --max-worse kl=0.01")
        scope, colon, name = key.rpartition(":")
        scope = "all" if not colon or scope == "AVG" else scope
        if name not in known:
            raise CfbenchError(f"--max-worse {spec!r}: unknown signal {name!r}; use one of {sorted(known)}")
        if scope != "all" and scope not in scopes:
            raise CfbenchError(
                f"--max-worse scope {scope!r} is not a category or task of suite {suite.name}: use one of "
                f"{sorted({*suite.categories, 'AVG'})} or a task name, e.g. DK:{name}=0.01"
            )
        out.append(ContrastBudget(scope, name, _budget_value("--max-worse", spec, val, "", f"{name}=0.01")))
    return out


def contrast_gate(contrast: ContrastResult, budgets: Sequence[ContrastBudget]) -> list[ContrastGateLine]:
    """Fail a budget when the candidate − previous CI lies wholly past it on the worse side.

    Lower-is-better signals (KL, forgotten, in-domain loss): fail iff the CI lower bound > VALUE.
    Higher-is-better (accuracy, gold margin, gained, in-domain EM): fail iff the CI upper bound < −VALUE.
    Without a CI (``--n-boot 0``) the estimate decides; a signal not computed for both fails.
    """
    lines = []
    for b in budgets:
        x = next((x for x in contrast.lines if x.signal == b.signal and x.scope == b.scope and not x.per_nat), None)
        if x is None:
            lines.append(ContrastGateLine(b, None, True, "not computed for both runs (no paired items): cannot clear"))
            continue
        lo, hi = x.ci if x.ci is not None else (x.estimate, x.estimate)
        how = f"{x.level} CI" if x.ci is not None else "value (no CI)"
        if x.better == "lower":
            failed = lo > b.value
            reason = f"worse: {how} lower bound {lo:.4g} > {b.value:.4g}" if failed else "within budget"
        else:
            failed = hi < -b.value
            reason = f"worse: {how} upper bound {hi:.4g} < −{b.value:.4g}" if failed else "within budget"
        lines.append(ContrastGateLine(b, x, failed, f"{reason} ({contrast.label} {x.estimate:+.4g} {x.unit})"))
    return lines


def contrast_gate_markdown(contrast: ContrastResult, lines: Sequence[ContrastGateLine]) -> str:
    out = [f"| vs previous: {contrast.label} | B − A | CI | budget | result |", "|---|---:|---|---:|---|"]
    for g in lines:
        v = "-" if g.line is None else f"{g.line.estimate:+.4g}"
        ci = "-" if g.line is None or g.line.ci is None else f"[{g.line.ci[0]:+.4g}, {g.line.ci[1]:+.4g}]"
        unit = "" if g.line is None else f" {g.line.unit}"
        mark = "❌ " if g.failed else "✅ "
        out.append(f"| {g.budget.label} | {v} | {ci} | {g.budget.value:.4g}{unit} | {mark}{g.reason} |")
    return "\n".join(out) + "\n"
