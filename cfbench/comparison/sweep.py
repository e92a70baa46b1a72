"""``sweep``: forgetting along one training run, checkpoint by checkpoint.

"When did forgetting start, and which checkpoint is the best trade-off?" is a question about a whole
run, not a pair. A run folder holds ``checkpoint-N/`` (transformers' Trainer, full weights or a LoRA
adapter) or ``step-N/`` (``cfbench finetune --save-every N``) folders; the sweep compares every one
against the base in step order through :func:`cfbench.comparison.compare`. Every checkpoint is a
content-hashed cache entry, so a rerun after new checkpoints appear scores only those, and an
interrupted sweep resumes where the cache stops. The per-step view adds what a single comparison
cannot: the first step past a forgetting budget and the step with the most learned per forgot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfbench.comparison.gate import DriftBudget, parse_drift_budgets
from cfbench.comparison.pipeline import CompareResult, compare
from cfbench.errors import CfbenchError
from cfbench.models.checkpoint import MANIFEST
from cfbench.report.table import ComparisonReport
from cfbench.signals import Signal
from cfbench.tasks.registry import load_suite

STEP_DIR = re.compile(r"^(?:checkpoint|step)-(\d+)$")


@dataclass(frozen=True)
class SweepStep:
    """One checkpoint of the run: its step, folder, accuracy Δ (AVG) and every overall signal."""

    step: int
    path: Path
    label: str
    acc_delta: float | None
    acc_ci: tuple[float, float] | None
    signals: dict[str, Signal]

    def row(self) -> dict[str, Any]:
        """A flat row (json/csv): step, path, Δ accuracy and its CI, each signal's value and CI."""
        out: dict[str, Any] = {"step": self.step, "path": str(self.path), "acc_delta": self.acc_delta,
                               "acc_ci_low": self.acc_ci[0] if self.acc_ci else None,
                               "acc_ci_high": self.acc_ci[1] if self.acc_ci else None}  # fmt: skip
        for name, s in sorted(self.signals.items()):
            out[name] = s.value
            out[f"{name}_ci_low"] = s.ci[0] if s.ci else None
            out[f"{name}_ci_high"] = s.ci[1] if s.ci else None
        return out


@dataclass
class SweepResult:
    """The steps in order, the budget verdict and the best trade-off, plus the comparison behind them."""

    base: str
    steps: list[SweepStep]
    budgets: list[DriftBudget]
    first_over: tuple[int, str] | None  # (step, budget label) of the first step past a budget
    best: int | None  # step with the most learned per forgot
    best_note: str
    comparison: CompareResult
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "steps": [s.row() for s in self.steps],
            "budgets": [{"metric": b.label, "value": b.value} for b in self.budgets],
            "first_over_budget": None if self.first_over is None else
            {"step": self.first_over[0], "budget": self.first_over[1]},
            "best_step": self.best,
            "best_note": self.best_note,
            "notes": self.notes,
        }  # fmt: skip


def discover_steps(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``checkpoint-N`` / ``step-N`` folders of ``run_dir`` in step order; one line if there are none."""
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise CfbenchError(f"run folder {run_dir} does not exist: pass the folder holding checkpoint-N/ or step-N/")
    found: dict[int, Path] = {}
    for child in sorted(root.iterdir()):
        m = STEP_DIR.match(child.name)
        if not (m and child.is_dir()):
            continue
        step = int(m.group(1))
        if step in found:
            raise CfbenchError(f"{found[step].name} and {child.name} in {run_dir} are both step {step}: keep one")
        found[step] = child
    if not found:
        raise CfbenchError(
            f"{run_dir} holds no checkpoint-N/ (transformers Trainer) or step-N/ (cfbench finetune --save-every) "
            "folders: pass a training run's output folder"
        )
    return sorted(found.items())


def _step_of(report: ComparisonReport, step: int, path: Path, label: str) -> SweepStep:
    avg = report.vs_base(label).avg
    signals = {s.name: s for s in report.signals.get(label, []) if s.scope == "all"}
    return SweepStep(step, path, label, avg.delta, avg.ci, signals)


def over_budget(step: SweepStep, budget: DriftBudget) -> bool:
    """A divergence past ``value``, or a higher-is-better signal dropped by more than ``value`` (point estimate)."""
    s = step.signals.get(budget.metric)
    if s is None:
        return False
    return s.value < -budget.value if s.better == "higher" else s.value > budget.value


def _forgot(step: SweepStep) -> float | None:
    """The step's forgetting: KL where measured (it sees every answer's probability), else the accuracy drop."""
    if "kl" in step.signals:
        return step.signals["kl"].value
    return None if step.acc_delta is None else -step.acc_delta


def _learned(step: SweepStep) -> float | None:
    """The first learned signal (in-domain gain), signed so that more is better; None without one."""
    for s in step.signals.values():
        if s.kind == "learned":
            return s.value if s.better == "higher" else -s.value
    return None


def best_tradeoff(steps: Sequence[SweepStep]) -> tuple[int | None, str]:
    """The step with the highest learned / forgot (both positive), and how it was chosen or why none was."""
    scored = [(st.step, _learned(st), _forgot(st)) for st in steps]
    usable = [(step, gain / loss) for step, gain, loss in scored if gain is not None and loss and loss > 0 and gain > 0]
    if not usable:
        if all(gain is None for _, gain, _ in scored):
            return None, "no learned signal: finetune's held-out split (cfbench finetune --heldout) measures one"
        return None, "no step both learned (> 0) and forgot (> 0)"
    step, ratio = max(usable, key=lambda x: x[1])
    return step, f"learned per forgot {ratio:.3g} (in-domain gain / {'KL' if 'kl' in steps[0].signals else 'Δ acc'})"


def _unmeasured_notes(rows: Sequence[SweepStep]) -> list[str]:
    """Steps whose manifest records a held-out split but that have no learned signal: said, not silent."""
    missing = []
    for st in rows:
        file = st.path / MANIFEST
        recorded = file.is_file() and json.loads(file.read_text()).get("heldout")
        if recorded and _learned(st) is None:
            missing.append(str(st.step))
    if not missing:
        return []
    return [f"step {', '.join(missing)}: a held-out split is recorded but no in-domain gain was measured "
            "(pass learned=cfbench.train.indomain.measure_checkpoints, as cfbench sweep does)"]  # fmt: skip


def sweep(
    base: str,
    run_dir: str | Path,
    *,
    suite: str = "paper",
    results: str | Path = "results",
    budgets: Sequence[str] = ("kl=0.05",),
    n_boot: int = 2000,
    seed: int = 0,
    eval_kwargs: dict[str, Any] | None = None,
    runner: Any = None,
    learned: Callable[[Sequence[Path]], list[str]] | None = None,
) -> SweepResult:
    """Score every checkpoint of ``run_dir`` (cached) against ``base`` and read the run step by step.

    Budgets (``METRIC=VALUE``, as ``regress --max-drift``) and the run folder are checked before any
    scoring; the scoring itself is :func:`compare`'s, so options and caching are the same.
    ``learned`` measures the in-domain rows of the checkpoints that record a held-out split (the CLI
    passes :func:`cfbench.train.indomain.measure_checkpoints`; comparisons never import training code):
    finetune measures only its final weights, so without it the earlier ``step-N/`` get no learned signal.
    """
    steps = discover_steps(run_dir)
    parsed = parse_drift_budgets(list(budgets), load_suite(suite))
    labels = ["base", *(f"step {n}" for n, _ in steps)]
    learned_notes = learned([p for _, p in steps]) if learned is not None else []
    res = compare(
        base, [str(p) for _, p in steps], suite=suite, results=results, labels=labels, n_boot=n_boot, seed=seed,
        eval_kwargs=eval_kwargs, runner=runner,
    )  # fmt: skip
    rows = [_step_of(res.report, n, p, label) for (n, p), label in zip(steps, labels[1:], strict=True)]
    first = next(((st.step, b.label) for st in rows for b in parsed if over_budget(st, b)), None)
    best, why = best_tradeoff(rows)
    notes = learned_notes + res.notes + _unmeasured_notes(rows)
    return SweepResult(base, rows, parsed, first, best, why, res, notes)
