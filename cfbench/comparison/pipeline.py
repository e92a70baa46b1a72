"""``compare``: turn stored (or freshly scored) runs into the paper-style forgetting report.

One function per stage: resolve the runs (:mod:`.runs`), gather their items (:mod:`.gather`),
build the accuracy report (:mod:`cfbench.report.table`), attach the other signals (:mod:`.attach`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cfbench.backends import check_backend_options
from cfbench.comparison.attach import PplDrift, attach_drift, attach_indomain, attach_ppl_drift
from cfbench.comparison.boot import check_n_boot
from cfbench.comparison.gather import (
    add_clusters,
    cluster_maps,
    gather,
    reference_coverage,
    refuse_other_rules,
    subgroups,
)
from cfbench.comparison.runs import RunRef, check_labels, plan_floor, resolve_runs, score_floor
from cfbench.errors import CfbenchError
from cfbench.report.table import ComparisonReport, build_report
from cfbench.store import ResultStore
from cfbench.tasks.registry import Suite, get_task_config, load_suite


@dataclass
class CompareResult:
    report: ComparisonReport
    runs: list[RunRef]
    suite: Suite
    notes: list[str] = field(default_factory=list)


def compare(
    base: str,
    tuned: Sequence[str],
    *,
    suite: str = "paper",
    results: str | Path = "results",
    labels: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    confidence: float = 0.95,
    eval_kwargs: dict[str, Any] | None = None,
    noise_floor: str | None = None,
    runner: Any = None,
    ppl: PplDrift | None = None,
) -> CompareResult:
    """Score what is not yet stored and build the paper-style report of ``tuned`` against ``base``.

    Besides accuracy, every registered item metric (:mod:`cfbench.metrics`) is attached to the report
    as :class:`cfbench.signals.Signal` records per tuned run; ``noise_floor`` names a stored run of
    the base checkpoint scored another way, or a recipe compare scores itself (``dtype``, ``dtype:NAME``,
    ``plain``: :func:`cfbench.comparison.runs.plan_floor`), against which divergences are judged. ``runner``: spread
    the scoring over workers (see :func:`resolve_runs`); None scores in this process. ``ppl`` adds
    held-out perplexity drift (checked before anything is scored).
    """
    check_n_boot(n_boot, confidence)  # before anything is scored
    check_labels(labels, 1 + len(tuned))
    if eval_kwargs and "backend_options" in eval_kwargs:
        check_backend_options(eval_kwargs.get("backend", "hf"), dict(eval_kwargs["backend_options"] or {}))
    if ppl is not None:
        ppl.check()
    if not tuned:
        raise CfbenchError("compare needs a base and at least one tuned checkpoint or run")
    suite_obj = load_suite(suite)
    store = ResultStore(Path(results))
    planned = plan_floor(noise_floor, base, store, eval_kwargs) if noise_floor is not None else None  # before scoring
    clusters, cluster_notes = cluster_maps(suite_obj.tasks, (eval_kwargs or {}).get("data_dir"))  # likewise
    refs = resolve_runs(
        [base, *tuned], store, labels=labels, eval_kwargs={"suite": suite, **(eval_kwargs or {})}, runner=runner
    )
    floor = score_floor(planned, base, store, {"suite": suite, **(eval_kwargs or {})}, runner)
    used: dict[str, set[str]] = {}
    raw: dict[str, pd.DataFrame] = {}
    items, scores = gather(store, refs, suite_obj.tasks, used, raw)
    reference, reasons = reference_coverage(suite_obj)
    if items is None and scores is None:
        raise CfbenchError(f"none of the runs has scores for suite {suite!r}; score them with `cfbench eval` first")
    refuse_other_rules(store, refs, items, scores, suite_obj)
    items = add_clusters(items, clusters)
    report = build_report(
        refs[0].label,
        [r.label for r in refs[1:]],
        suite_obj.categories,
        items=items,
        task_scores=scores,
        extras=suite_obj.extras,
        subgroups=subgroups(suite_obj),
        pairs=pairs,
        n_boot=n_boot,
        seed=seed,
        alpha=alpha,
        confidence=confidence,
        reference_categories=reference,
        missing_reasons=reasons,
        subset_mean_tasks=[t for t in suite_obj.tasks if get_task_config(t).aggregate == "subset_mean"],
    )
    drift_notes = attach_drift(
        report, store, refs, suite_obj, raw, floor,
        n_boot=n_boot, seed=seed, confidence=confidence, data_dir=(eval_kwargs or {}).get("data_dir"),
        reference=reference, reasons=reasons,
    )  # fmt: skip
    drift_notes += attach_indomain(report, store, refs, n_boot=n_boot, seed=seed, confidence=confidence)
    notes = _notes(report, refs, used) + cluster_notes + drift_notes
    if ppl is not None:  # after the notes, as when the CLI attached it to compare's result
        attach_ppl_drift(report, refs, ppl, results=results, n_boot=n_boot, seed=seed)
    return CompareResult(report, refs, suite_obj, notes)


def _notes(report: ComparisonReport, refs: Sequence[RunRef], used: dict[str, set[str]]) -> list[str]:
    """The report's notes plus what makes the runs hard to compare: mixed metrics, tokenizers, limits."""
    notes = report.notes + [
        f"{task}: runs were scored with different metrics ({', '.join(sorted(ms))}); its Δ mixes them"
        for task, ms in sorted(used.items())
        if len(ms) > 1
    ]
    tokenizers = {r.label: (r.record.extra or {}).get("tokenizer_hash") for r in refs}
    if len({h for h in tokenizers.values() if h}) > 1:
        notes.append(
            "the checkpoints use different tokenizers ("
            + ", ".join(f"{k}: {v[:8]}" for k, v in tokenizers.items() if v)
            + "); their log-likelihoods are over different token sequences"
        )
    limits = {r.record.limit for r in refs}
    if len(limits) > 1:
        notes.append(
            f"runs were scored with different --limit values {sorted(map(str, limits))}; "
            "Δ uses only the items both runs share"
        )
    return notes
