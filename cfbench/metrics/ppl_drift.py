"""Held-out perplexity drift: how much worse a tuned model predicts general text than its base.

``ppl_drift`` pairs base and tuned per document (scores from :func:`cfbench.probes.ppl.measure_ppl`,
cached in the store's ``ppl_docs`` table) and reports the change of the token-weighted mean
negative log-likelihood (nats/token) as a :class:`cfbench.signals.Signal`, with a paired bootstrap
over documents: each replicate resamples documents once for both models and recomputes
``sum(Δnll) / sum(tokens)``, so long documents weigh what their tokens weigh, in the value and in
the interval alike. ``ppl_drift_for_runs`` does this for stored runs, measuring (or reading the
cached scores of) each run's checkpoint with :mod:`cfbench.probes.ppl`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cfbench.errors import CfbenchError
from cfbench.probes.ppl import PplResult, measure_ppl
from cfbench.signals import Signal
from cfbench.stats import bootstrap_means, ci_excludes_zero, percentile_ci, task_rng


@dataclass(frozen=True)
class PairedDocs:
    """Base and tuned scores of the documents both were scored on (same document, same tokens)."""

    n_tokens: np.ndarray
    base_nll: np.ndarray
    tuned_nll: np.ndarray
    #: Each paired document's content hash: a contrast of two tuned runs pairs their documents on it.
    doc_hashes: tuple[str, ...] | None = field(default=None, compare=False)


def pair_docs(base: PplResult, tuned: PplResult) -> PairedDocs:
    """Pair on document content; refuse pairs whose token counts differ (different tokenizers:
    nats/token would then compare different units)."""
    index = {h: i for i, h in enumerate(base.doc_hashes)}
    pairs = [(index[h], j) for j, h in enumerate(tuned.doc_hashes) if h in index]
    if not pairs:
        raise CfbenchError(
            f"{base.checkpoint} and {tuned.checkpoint} share no scored documents: use the same --ppl data"
        )
    bi, ti = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
    if not np.array_equal(base.n_tokens[bi], tuned.n_tokens[ti]):
        raise CfbenchError(
            f"{base.checkpoint} and {tuned.checkpoint} tokenize the held-out text differently: "
            "nats/token would compare different units; compare checkpoints that share a tokenizer"
        )
    hashes = tuple(tuned.doc_hashes[j] for j in ti)
    return PairedDocs(base.n_tokens[bi].astype(float), -base.logprobs[bi], -tuned.logprobs[ti], hashes)


def drift_with_ci(
    paired: PairedDocs, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, tuple[float, float] | None]:
    """Δ nats/token (tuned − base, token-weighted) and its paired bootstrap interval over documents.

    Each replicate resamples documents with replacement (once for both models) and recomputes
    ``sum(Δnll) / sum(tokens)``: the ratio of the resampled means of Δnll and of the token counts,
    which :func:`cfbench.stats.bootstrap_means` draws for the pair (tokens, Δnll).
    ``n_boot=0`` (compare's "no CIs") gives no interval.
    """
    if n_boot < 0:
        raise CfbenchError(f"--n-boot must be 0 (no CI) or more, got {n_boot}")
    delta = paired.tuned_nll - paired.base_nll
    value = float(delta.sum() / paired.n_tokens.sum())
    if n_boot == 0:
        return value, None
    h = hashlib.sha256()
    for arr in (paired.n_tokens, paired.base_nll, paired.tuned_nll):
        h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    rng = task_rng(seed, h.hexdigest(), "ppl_drift")  # the data, not labels, seeds the draw
    means = bootstrap_means(paired.n_tokens, delta, n_boot, rng)
    return value, percentile_ci(means[:, 1] / means[:, 0], confidence)


def ppl_drift(
    base: PplResult, tuned: PplResult, *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Signal:
    """The ``ppl_drift`` forgot-signal of ``tuned`` against ``base`` (positive: the tuned model is worse)."""
    paired = pair_docs(base, tuned)
    value, ci = drift_with_ci(paired, n_boot, seed, confidence)
    tokens = paired.n_tokens.sum()
    return Signal(
        name="ppl_drift",
        kind="forgot",
        label=f"held-out NLL, {base.source}",
        value=value,
        unit="Δ nats/token",
        n=int(paired.n_tokens.size),
        ci=ci,
        significant=None if ci is None else ci_excludes_zero(ci),
        better="lower",
        scope="all",  # one overall number; the text it was measured on is in the label
        note=(
            f"{paired.n_tokens.size:,} documents, {int(tokens):,} tokens: base "
            f"{float(paired.base_nll.sum() / tokens):.4f}, tuned {float(paired.tuned_nll.sum() / tokens):.4f} "
            "nats/token"
        ),
    )


@dataclass(frozen=True)
class DriftRow:
    """One tuned run's held-out drift against the base, with both sides' measurements."""

    label: str
    signal: Signal
    base: PplResult
    tuned: PplResult


def run_checkpoint(record: Any) -> tuple[str, str | None]:
    """``(checkpoint spec, content hash)`` a stored run was scored from; refused when it has none."""
    path = getattr(record, "checkpoint_path", None)
    if not path:
        raise CfbenchError(
            f"run {record.name!r} has no stored checkpoint path (imported results?): held-out perplexity "
            "needs the weights; pass the checkpoint itself instead of the run"
        )
    return str(path), getattr(record, "checkpoint_hash", None)


def ppl_drift_for_runs(
    runs: Sequence[tuple[str, Any]],
    *,
    data: str,
    limit: int | None = None,
    backend: str = "hf",
    backend_options: dict[str, Any] | None = None,
    results: str | Path = "results",
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    progress: bool | str = False,
) -> list[DriftRow]:
    """``ppl_drift`` of every ``(label, RunRecord)`` after the first (the base) against the first.

    Each run's checkpoint is re-resolved from its stored path and must still have the stored
    content hash; every model is scored with the same backend options, cached per document.
    """
    if len(runs) < 2:
        raise CfbenchError("held-out perplexity drift needs a base and at least one tuned run")
    specs = [run_checkpoint(rec) for _, rec in runs]  # all refused up front, before any model loads

    def measure(i: int) -> PplResult:
        spec, expect = specs[i]
        return measure_ppl(
            spec, data=data, limit=limit, backend=backend, backend_options=backend_options,
            results=results, progress=progress, expect_hash=expect,
        )  # fmt: skip

    base = measure(0)
    out = []
    for i, (label, _) in enumerate(runs[1:], start=1):
        tuned = measure(i)
        signal = ppl_drift(base, tuned, n_boot=n_boot, seed=seed, confidence=confidence)
        out.append(DriftRow(label, signal, base, tuned))
    return out
