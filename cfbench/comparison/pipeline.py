"""``compare``: turn stored (or freshly scored) runs into the paper-style forgetting report.

One function per stage: resolve the runs (:mod:`.runs`), gather their items (:mod:`.gather`),
build the accuracy report (:mod:`cfbench.report.table`), attach the other signals (:mod:`.attach`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cfbench.backends import check_backend_options
from cfbench.comparison.attach import PplDrift, attach_drift, attach_indomain, attach_ppl_drift
from cfbench.comparison.boot import check_n_boot
from cfbench.comparison.contrasts import (
    apply_contrasts,
    auto_groups,
    check_contrast_names,
    check_groups,
    collect_values,
    parse_contrast,
)
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
from cfbench.metrics.drift import PairDrift
from cfbench.report.contrast import ItemValues
from cfbench.report.table import ComparisonReport, build_report
from cfbench.store import ResultStore
from cfbench.tasks.registry import Suite, get_task_config, load_suite


@dataclass
class CompareResult:
    report: ComparisonReport
    runs: list[RunRef]
    suite: Suite
    notes: list[str] = field(default_factory=list)
    #: Every signal's per-item values per tuned run, for contrasts built after compare (``regress --previous``).
    values: ItemValues | None = None


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
    contrasts: Sequence[tuple[str, str] | str] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    pair_contrast: bool = False,
) -> CompareResult:
    """Score what is not yet stored and build the paper-style report of ``tuned`` against ``base``.

    Besides accuracy, every registered item metric (:mod:`cfbench.metrics`) is attached to the report
    as :class:`cfbench.signals.Signal` records per tuned run; ``noise_floor`` names a stored run of
    the base checkpoint scored another way, or a recipe compare scores itself (``dtype``, ``dtype:NAME``,
    ``plain``: :func:`cfbench.comparison.runs.plan_floor`), against which divergences are judged. ``runner``: spread
    the scoring over workers (see :func:`resolve_runs`); None scores in this process. ``ppl`` adds
    held-out perplexity drift (checked before anything is scored). ``contrasts`` are (A, B) labels of
    tuned runs or ``groups`` (name → run labels: seeds of one method), or ``"B-A"`` strings; each gives
    B − A on every signal (:mod:`cfbench.comparison.contrasts`); ``pair_contrast`` adds the last two
    tuned runs' contrast.
    Seeds of one method are also recognised from the runs' fine-tune manifests.
    """
    check_n_boot(n_boot, confidence)  # before anything is scored
    check_labels(labels, 1 + len(tuned))
    if eval_kwargs and "backend_options" in eval_kwargs:
        check_backend_options(eval_kwargs.get("backend", "hf"), dict(eval_kwargs["backend_options"] or {}))
    if ppl is not None:
        ppl.check()
    if not tuned:
        raise CfbenchError("compare needs a base and at least one tuned checkpoint or run")
    groups = _check_contrast_args(labels, contrasts or [], groups or {}, pair_contrast, len(tuned))  # before scoring
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
        refs[0].label, [r.label for r in refs[1:]], suite_obj.categories, items=items, task_scores=scores,
        extras=suite_obj.extras, subgroups=subgroups(suite_obj), pairs=pairs, n_boot=n_boot, seed=seed, alpha=alpha,
        confidence=confidence, reference_categories=reference, missing_reasons=reasons,
        subset_mean_tasks=_subset_mean(suite_obj),
    )  # fmt: skip
    drift: dict[str, PairDrift] = {}
    drift_notes = attach_drift(
        report, store, refs, suite_obj, raw, floor,
        n_boot=n_boot, seed=seed, confidence=confidence, data_dir=(eval_kwargs or {}).get("data_dir"),
        reference=reference, reasons=reasons, pairs_out=drift,
    )  # fmt: skip
    drift_notes += attach_indomain(report, store, refs, n_boot=n_boot, seed=seed, confidence=confidence)
    notes = _notes(report, refs, used) + cluster_notes + drift_notes
    ppl_rows = []
    if ppl is not None:  # after the notes, as when the CLI attached it to compare's result
        ppl_rows = attach_ppl_drift(report, refs, ppl, results=results, n_boot=n_boot, seed=seed)
    values = collect_values(store, refs, items, drift, ppl_rows, suite_obj.categories, _subset_mean(suite_obj))
    check_groups(groups, report.tuned)
    notes += apply_contrasts(report, values, contrasts or [], groups, pair=pair_contrast,
                             recognised=auto_groups(refs[1:]))  # fmt: skip
    return CompareResult(report, refs, suite_obj, notes, values)


def _subset_mean(suite: Suite) -> list[str]:
    """Tasks scored as the mean of their subsets' means (OpenCompass's mmlu, ``aggregate: subset_mean``)."""
    return [t for t in suite.tasks if get_task_config(t).aggregate == "subset_mean"]


def _check_contrast_args(
    labels: Sequence[str] | None, contrasts: Sequence[tuple[str, str] | str], groups: Mapping[str, Sequence[str]],
    pair: bool, n_tuned: int,
) -> dict[str, list[str]]:  # fmt: skip
    """Refuse bad contrasts and groups before anything is scored, where the run labels are known already
    (``labels`` given); otherwise they are checked once the runs are named, before any signal is computed."""
    if pair and n_tuned < 2:
        raise CfbenchError(f"--pair needs at least two tuned runs, got {n_tuned}")
    out = {str(k): [str(r) for r in v] for k, v in groups.items()}
    if labels is not None:
        check_groups(out, list(labels[1:]))
        names = [*labels[1:], *out]
        check_contrast_names([parse_contrast(c, names) if isinstance(c, str) else c for c in contrasts], names)
    return out


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
