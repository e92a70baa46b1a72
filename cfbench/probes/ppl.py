"""Held-out perplexity: how well a checkpoint predicts general text, cached per document.

``measure_ppl`` scores every document of a text source (:mod:`cfbench.data.text`) with the
backend's ``loglikelihood_rolling`` (lm-eval's windows, :mod:`cfbench.backends.rolling`) and keeps
one row per document in the store's ``ppl_docs`` table, keyed like items are (checkpoint content
hash, text-source fingerprint, backend key settings, ``SCORING_VERSION``): a rerun reads the
rows and loads no model, an interrupted run resumes from the last stored batch.

The drift of a tuned model against its base (the ``ppl_drift`` signal and its paired bootstrap
over documents) is computed from these results in :mod:`cfbench.metrics.ppl_drift`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cfbench.backends import RollingRequest, backend_class, check_backend_options, make_backend
from cfbench.data.text import TextSource, doc_hash, load_text_source
from cfbench.engine import backend_key, digest, progress_mode
from cfbench.errors import CfbenchError
from cfbench.models.checkpoint import ResolvedCheckpoint, resolve_checkpoint
from cfbench.models.hashing import require_finite_weights
from cfbench.progress import Progress
from cfbench.requests import impossible_logprob
from cfbench.store import ResultStore

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
    return digest("ppl-cache/v1", checkpoint_hash, source_fingerprint, bkey)


@dataclass(frozen=True)
class _PplInputs:
    """The validated inputs of one measurement: what is scored, by which model, under which key."""

    source: TextSource
    docs: tuple[str, ...]
    ckpt: ResolvedCheckpoint
    options: dict[str, Any]
    bkey: dict[str, Any]
    key: str


def _validate_inputs(
    checkpoint: str, data: str, limit: int | None, backend: str,
    backend_options: dict[str, Any] | None, base: str | None, expect_hash: str | None,
) -> _PplInputs:  # fmt: skip
    """Refuse bad inputs (limit, text source, checkpoint, finite weights, backend) before any model loads.

    A stored run whose checkpoint changed since (``expect_hash``) is refused here too: scoring the
    new weights under the old run's name would report drift of a model nobody compared.
    """
    if limit is not None and limit <= 0:
        raise CfbenchError(f"--limit must be a positive number of documents, got {limit}")
    check_backend_options(backend, dict(backend_options or {}))
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
    return _PplInputs(source, docs, ckpt, options, bkey, key)


def _cached_scores(store: ResultStore, key: str, hashes: tuple[str, ...]) -> dict[int, tuple[float, int]]:
    """``doc_id -> (logprob, n_tokens)`` already stored under ``key`` for these exact documents.

    A stored row counts only if its document is still the one at that position (same content
    hash), so a prefix of the source (a smaller ``limit``) reuses rows and an edited one does not.
    """
    import pyarrow.dataset as ds

    done: dict[int, tuple[float, int]] = {}
    for row in store.read_table(TABLE, ds.field("cache_key") == key).itertuples():
        if row.doc_id < len(hashes) and row.doc_hash == hashes[row.doc_id]:
            done[int(row.doc_id)] = (float(row.logprob), int(row.n_tokens))
    return done


def _score_missing(
    inp: _PplInputs, todo: list[int], done: dict[int, tuple[float, int]], hashes: tuple[str, ...],
    *, backend: str, data: str, store: ResultStore, progress: bool | str,
) -> None:  # fmt: skip
    """Score the ``todo`` documents into ``done``, storing each batch as it finishes.

    The store is checked writable before the model loads (a read-only store takes no new rows);
    writing per batch lets an interrupted run resume, and a non-finite log p is refused rather than
    cached, since a broken model's number would otherwise be reused on every rerun.
    """
    store.require_room()  # before the model loads: a read-only, unwritable or full store takes no new rows
    ckpt, docs = inp.ckpt, inp.docs
    bar = Progress(ckpt.name, len(todo), unit="docs", mode=progress_mode(progress))
    bar.set_detail(f"held-out {data}: {len(todo):,} of {len(docs):,} documents")
    model = make_backend(backend, ckpt.path, **inp.options)
    try:
        with bar:
            for lo in range(0, len(todo), BATCH_DOCS):
                ids = todo[lo : lo + BATCH_DOCS]
                got = model.loglikelihood_rolling([RollingRequest(docs[i]) for i in ids], bar.advance)
                for i, res in zip(ids, got, strict=True):
                    why = impossible_logprob(res.logprob, res.n_tokens)
                    if why is not None:
                        raise CfbenchError(
                            f"{ckpt.name} gave log p = {res.logprob} on document {i} of {inp.source.name} ({why}): "
                            "the model's numbers are broken (check its weights and dtype; try dtype=float32)"
                        )
                    done[i] = (float(res.logprob), int(res.n_tokens))
                store.append_table(TABLE, _rows(inp.key, ids, docs, hashes, done, ckpt.content_hash, data))
    finally:
        model.close()


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
    inp = _validate_inputs(checkpoint, data, limit, backend, backend_options, base, expect_hash)
    store = ResultStore(Path(results))
    docs = inp.docs
    hashes = tuple(doc_hash(d) for d in docs)
    done = _cached_scores(store, inp.key, hashes)
    todo = [i for i in range(len(docs)) if i not in done]
    if todo:
        _score_missing(inp, todo, done, hashes, backend=backend, data=data, store=store, progress=progress)
    return PplResult(
        inp.ckpt.name,
        inp.ckpt.content_hash,
        data,
        inp.key,
        hashes,
        np.array([done[i][0] for i in range(len(docs))], dtype=float),
        np.array([done[i][1] for i in range(len(docs))], dtype=np.int64),
        np.array([len(d.encode("utf-8")) for d in docs], dtype=np.int64),
        len(todo),
        inp.bkey,
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
