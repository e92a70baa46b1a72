"""Held-out perplexity drift: how much worse a tuned model predicts general text than its base.

``measure_ppl`` scores every document of a text source (:mod:`cfbench.data.text`) with the
backend's ``loglikelihood_rolling`` (lm-eval's windows, :mod:`cfbench.backends.rolling`) and keeps
one row per document in the store's ``ppl_docs`` table, keyed like items are (checkpoint content
hash, text-source fingerprint, backend key settings, ``SCORING_VERSION``): a rerun reads the
rows and loads no model, an interrupted run resumes from the last stored batch.

``ppl_drift`` pairs base and tuned per document and reports the change of the token-weighted
mean negative log-likelihood (nats/token) as a :class:`cfbench.signals.Signal`, with a paired
bootstrap over documents: each replicate resamples documents once for both models and recomputes
``sum(Δnll) / sum(tokens)``, so long documents weigh what their tokens weigh, in the value and in
the interval alike.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cfbench.errors import CfbenchError
from cfbench.signals import Signal

TABLE = "ppl_docs"
#: Documents per call of the backend (and per part written to the store).
BATCH_DOCS = 64


@dataclass(frozen=True)
class PplResult:
    """Per-document scores of one checkpoint on one text source (doc order of the source)."""

    checkpoint: str
    checkpoint_hash: str
    source: str
    cache_key: str
    doc_hashes: tuple[str, ...]
    logprobs: np.ndarray
    n_tokens: np.ndarray
    n_bytes: np.ndarray
    scored_now: int
    backend_settings: dict[str, Any]

    @property
    def n_docs(self) -> int:
        return len(self.doc_hashes)

    @property
    def total_tokens(self) -> int:
        return int(self.n_tokens.sum())

    @property
    def nats_per_token(self) -> float:
        """Token-weighted mean negative log-likelihood: ``-sum(logprob) / sum(tokens)``."""
        return float(-self.logprobs.sum() / self.n_tokens.sum())

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def bits_per_byte(self) -> float:
        """Tokenizer-independent: ``-sum(logprob) / (ln 2 * sum(bytes))``."""
        return float(-self.logprobs.sum() / (math.log(2) * self.n_bytes.sum()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "checkpoint_hash": self.checkpoint_hash,
            "data": self.source,
            "nats_per_token": self.nats_per_token,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "docs": self.n_docs,
            "tokens": self.total_tokens,
            "scored_now": self.scored_now,
            "cache_key": self.cache_key,
        }


def ppl_cache_key(checkpoint_hash: str, source_fingerprint: str, bkey: dict[str, Any]) -> str:
    """Digest of everything that changes a document's number (``bkey`` carries SCORING_VERSION)."""
    from cfbench.engine import _digest

    return _digest("ppl-cache/v1", checkpoint_hash, source_fingerprint, bkey)


def measure_ppl(
    checkpoint: str,
    *,
    data: str = "lambada",
    limit: int | None = None,
    backend: str = "hf",
    backend_options: dict[str, Any] | None = None,
    base: str | None = None,
    results: str | Path = "results",
    progress: bool | str = False,
    expect_hash: str | None = None,
) -> PplResult:
    """Nats/token of ``checkpoint`` on the first ``limit`` documents of ``data`` (cached per document).

    Inputs are validated (limit, text source, checkpoint, finite weights, backend settings) before
    any model loads. ``progress``: as in :func:`cfbench.engine.run_plan` (``auto``, ``bar``,
    ``lines``, ``off``; True is ``auto``), counted in documents. ``expect_hash``: refuse if the
    checkpoint's content hash is not this one (a stored run whose checkpoint has changed since).
    """
    from cfbench.backends import RollingRequest, backend_class, make_backend
    from cfbench.data.text import doc_hash, load_text_source
    from cfbench.engine import backend_key
    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.models.hashing import require_finite_weights
    from cfbench.store import ResultStore

    if limit is not None and limit <= 0:
        raise CfbenchError(f"--limit must be a positive number of documents, got {limit}")
    source = load_text_source(data)
    docs = source.docs[:limit]
    ckpt = resolve_checkpoint(checkpoint.removeprefix("ckpt:"), base=base)
    if expect_hash is not None and ckpt.content_hash != expect_hash:
        raise CfbenchError(
            f"checkpoint {ckpt.spec} has changed since its run was stored (hash {ckpt.content_hash[:12]}, "
            f"run has {expect_hash[:12]}): re-evaluate it, or pass the checkpoint itself"
        )
    require_finite_weights(ckpt.path, ckpt.content_hash, ckpt.name)
    options = dict(backend_options or {})
    if not hasattr(backend_class(backend), "loglikelihood_rolling"):
        raise CfbenchError(f"backend {backend!r} cannot score whole texts (no loglikelihood_rolling): use --backend hf")
    bkey = backend_key(backend, options, ckpt.path)
    key = ppl_cache_key(ckpt.content_hash, source.fingerprint, bkey)
    store = ResultStore(Path(results))
    import pyarrow.dataset as ds

    hashes = tuple(doc_hash(d) for d in docs)
    done: dict[int, tuple[float, int]] = {}
    for row in store.read_table(TABLE, ds.field("cache_key") == key).itertuples():
        if row.doc_id < len(docs) and row.doc_hash == hashes[row.doc_id]:
            done[int(row.doc_id)] = (float(row.logprob), int(row.n_tokens))
    todo = [i for i in range(len(docs)) if i not in done]
    if todo:
        store.require_writable()  # before the model loads: a read-only store takes no new rows
        from cfbench.engine import progress_mode
        from cfbench.progress import Progress

        bar = Progress(ckpt.name, len(todo), unit="docs", mode=progress_mode(progress))
        bar.set_detail(f"held-out {data}: {len(todo):,} of {len(docs):,} documents")
        model = make_backend(backend, ckpt.path, **options)
        try:
            with bar:
                for lo in range(0, len(todo), BATCH_DOCS):
                    ids = todo[lo : lo + BATCH_DOCS]
                    got = model.loglikelihood_rolling([RollingRequest(docs[i]) for i in ids], bar.advance)
                    for i, res in zip(ids, got, strict=True):
                        if not math.isfinite(res.logprob):
                            raise CfbenchError(
                                f"{ckpt.name} gave log p = {res.logprob} on document {i} of {source.name}: "
                                "the model's numbers are broken (check its weights and dtype; try dtype=float32)"
                            )
                        done[i] = (float(res.logprob), int(res.n_tokens))
                    store.append_table(TABLE, _rows(key, ids, docs, hashes, done, ckpt.content_hash, data))
        finally:
            model.close()
    return PplResult(
        ckpt.name,
        ckpt.content_hash,
        data,
        key,
        hashes,
        np.array([done[i][0] for i in range(len(docs))], dtype=float),
        np.array([done[i][1] for i in range(len(docs))], dtype=np.int64),
        np.array([len(d.encode("utf-8")) for d in docs], dtype=np.int64),
        len(todo),
        bkey,
    )


def _rows(
    key: str, ids: Sequence[int], docs: Sequence[str], hashes: Sequence[str],
    done: dict[int, tuple[float, int]], checkpoint_hash: str, data: str,
) -> Any:  # fmt: skip
    import pyarrow as pa

    now = datetime.now(timezone.utc)
    return pa.table(
        {
            "cache_key": [key] * len(ids),
            "doc_id": list(ids),
            "doc_hash": [hashes[i] for i in ids],
            "logprob": [done[i][0] for i in ids],
            "n_tokens": [done[i][1] for i in ids],
            "n_bytes": [len(docs[i].encode("utf-8")) for i in ids],
            "checkpoint_hash": [checkpoint_hash] * len(ids),
            "source": [data] * len(ids),
            "created_at": [now] * len(ids),
        }
    )


@dataclass(frozen=True)
class PairedDocs:
    """Base and tuned scores of the documents both were scored on (same document, same tokens)."""

    n_tokens: np.ndarray
    base_nll: np.ndarray
    tuned_nll: np.ndarray


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
    return PairedDocs(base.n_tokens[bi].astype(float), -base.logprobs[bi], -tuned.logprobs[ti])


def drift_with_ci(
    paired: PairedDocs, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, tuple[float, float] | None]:
    """Δ nats/token (tuned − base, token-weighted) and its paired bootstrap interval over documents.

    Each replicate resamples documents with replacement (once for both models) and recomputes
    ``sum(Δnll) / sum(tokens)``: the ratio of the resampled means of Δnll and of the token counts,
    which :func:`cfbench.stats.bootstrap_means` draws for the pair (tokens, Δnll).
    ``n_boot=0`` (compare's "no CIs") gives no interval.
    """
    from cfbench.stats import bootstrap_means, percentile_ci, task_rng

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
    from cfbench.stats import ci_excludes_zero

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
