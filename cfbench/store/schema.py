"""Arrow schemas of the three result tables and the records that fill them.

The schemas are explicit (never inferred from data) so every part file of a table has the same
column types whoever wrote it, and so readers can open a store written by an older cfbench: a
column added later is read as nulls from older parts. Bump :data:`SCHEMA_VERSION` only for changes
an older reader cannot read (a renamed or retyped column); adding a nullable column is compatible.
See ``docs/results-schema.md`` for the meaning of every column.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from cfbench._version import __version__

#: Version of the on-disk layout; a store whose ``_schema.json`` is newer is refused on open.
SCHEMA_VERSION = 1

#: Where a run's numbers come from. ``paper`` runs are the founding paper's printed numbers
#: (cfbench.comparison.paper); they live only in the read-only store cfbench ships, never in a user's store.
SOURCES = ("cfbench", "lm-eval", "opencompass", "paper")

_META = {b"cfbench.schema_version": str(SCHEMA_VERSION).encode()}

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("checkpoint_name", pa.string(), nullable=False),
        pa.field("checkpoint_path", pa.string()),
        pa.field("checkpoint_hash", pa.string()),
        pa.field("base", pa.string()),
        pa.field("method", pa.string()),
        pa.field("hparams_json", pa.string(), nullable=False),
        pa.field("suite", pa.string()),
        pa.field("suite_hash", pa.string()),
        pa.field("task_hashes_json", pa.string(), nullable=False),
        pa.field("backend", pa.string()),
        pa.field("backend_settings_json", pa.string(), nullable=False),
        pa.field("dtype", pa.string()),
        pa.field("limit", pa.int64()),
        pa.field("num_fewshot", pa.int64()),
        pa.field("cfbench_version", pa.string(), nullable=False),
        pa.field("extra_json", pa.string(), nullable=False),
    ],
    metadata=_META,
)

TASK_SCORES_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("task_hash", pa.string()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("n_items", pa.int64()),
        pa.field("stderr", pa.float64()),
        # Null for the task's own score; an MMLU group ("stem") or subject for partial scores.
        pa.field("subset", pa.string()),
        # The items this score was computed from (join with items.cache_key); null when unknown.
        pa.field("cache_key", pa.string()),
    ],
    metadata=_META,
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("cache_key", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("task", pa.string(), nullable=False),
        pa.field("task_hash", pa.string()),
        pa.field("doc_id", pa.int64(), nullable=False),
        pa.field("subset", pa.string()),
        pa.field("gold", pa.int64(), nullable=False),
        pa.field("pred", pa.int64(), nullable=False),
        pa.field("acc", pa.float64()),
        pa.field("acc_norm", pa.float64()),
        pa.field("mc1", pa.float64()),
        pa.field("mc2", pa.float64()),
        pa.field("logprobs", pa.list_(pa.float64())),
        pa.field("n_tokens", pa.list_(pa.int64())),
        pa.field("is_greedy", pa.list_(pa.bool_())),
        # Fingerprint of the item as scored (see item_fingerprint); null for older items and for
        # imports that cannot reconstruct the prompt. Added in 0.1 without a schema bump (nullable).
        pa.field("item_hash", pa.string()),
    ],
    metadata=_META,
)


def item_fingerprint(context: str, continuations: Sequence[str], gold: int) -> str:
    """Short sha256 of one item as the model saw it: rendered context, scored continuations, gold.

    Two runs' rows with the same ``doc_id`` are the same item only if this matches; ``compare``
    pairs on it. ``continuations`` are the exact strings scored after the context (target delimiter
    included, e.g. ``" granite"``), which is what both cfbench's requests and lm-eval's logged
    ``arguments`` hold, so a native run and an lm-eval import of the same prompt hash alike.
    """
    payload = json.dumps([context, list(continuations), int(gold)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

#: table name -> (schema, key columns that identify one logical row; readers de-duplicate on them).
TABLES: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    "runs": (RUNS_SCHEMA, ("run_id",)),
    "task_scores": (TASK_SCORES_SCHEMA, ("run_id", "task", "metric", "subset")),
    "items": (ITEMS_SCHEMA, ("cache_key", "task", "doc_id")),
}

# Flatness and weight diagnostics (cfbench.analysis; docs/analysis.md). One row per grid / curve point.
LANDSCAPE_SCHEMA = pa.schema(
    [
        pa.field("landscape_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "surface" (alpha, beta) or "interpolation" (alpha = t)
        pa.field("checkpoint_name", pa.string(), nullable=False),
        pa.field("checkpoint_hash", pa.string()),
        pa.field("base_hash", pa.string()),  # interpolation: the base the line starts from
        pa.field("data", pa.string(), nullable=False),
        pa.field("i", pa.int64(), nullable=False),
        pa.field("j", pa.int64(), nullable=False),
        pa.field("alpha", pa.float64(), nullable=False),
        pa.field("beta", pa.float64(), nullable=False),
        pa.field("loss", pa.float64(), nullable=False),
        pa.field("settings_json", pa.string(), nullable=False),
    ],
    metadata=_META,
)

# One scalar diagnostic of one checkpoint (sc, ag, mag, hessian_trace, top_eigenvalue, displacement, ...).
DIAGNOSTICS_SCHEMA = pa.schema(
    [
        pa.field("diag_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("checkpoint_name", pa.string(), nullable=False),
        pa.field("checkpoint_hash", pa.string()),
        pa.field("base_hash", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # landscape, sharpness, diff
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("settings_json", pa.string(), nullable=False),
    ],
    metadata=_META,
)

# Per-parameter rows of `cfbench diff`.
WEIGHT_DIFF_SCHEMA = pa.schema(
    [
        pa.field("diff_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("base_name", pa.string(), nullable=False),
        pa.field("base_hash", pa.string()),
        pa.field("tuned_name", pa.string(), nullable=False),
        pa.field("tuned_hash", pa.string()),
        pa.field("param", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("numel", pa.int64(), nullable=False),
        pa.field("norm_base", pa.float64(), nullable=False),
        pa.field("norm_delta", pa.float64(), nullable=False),
        pa.field("rel_delta", pa.float64(), nullable=False),
        pa.field("effective_rank", pa.float64()),
        pa.field("top_singular", pa.list_(pa.float64())),
        pa.field("svd", pa.string(), nullable=False),
    ],
    metadata=_META,
)

# Per-document held-out log-likelihoods of `cfbench ppl` (cfbench.probes.ppl). Like items, rows are
# keyed by a cache key (checkpoint hash, text-source fingerprint, backend key settings and
# SCORING_VERSION), so a rerun with the same inputs loads no model.
PPL_DOCS_SCHEMA = pa.schema(
    [
        pa.field("cache_key", pa.string(), nullable=False),
        pa.field("doc_id", pa.int64(), nullable=False),  # position in the text source's document list
        pa.field("doc_hash", pa.string(), nullable=False),  # cfbench.data.text.doc_hash of the document
        pa.field("logprob", pa.float64(), nullable=False),  # sum of log p over every token of the document
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),  # UTF-8 bytes of the document
        pa.field("checkpoint_hash", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # the --data spec, for reading the table by hand
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata=_META,
)

TABLES["landscape"] = (LANDSCAPE_SCHEMA, ("landscape_id", "kind", "i", "j"))
TABLES["diagnostics"] = (DIAGNOSTICS_SCHEMA, ("diag_id", "metric"))
TABLES["weight_diff"] = (WEIGHT_DIFF_SCHEMA, ("diff_id", "param"))
TABLES["ppl_docs"] = (PPL_DOCS_SCHEMA, ("cache_key", "doc_id"))

# In-domain gain (cfbench.train.indomain; docs/indomain.md): one row per held-out fine-tune document
# and checkpoint. loss is nats/token over the document's target tokens (training's masks); em is 1/0
# where the answer is checkable, null elsewhere.
INDOMAIN_SCHEMA = pa.schema(
    [
        pa.field("checkpoint_hash", pa.string(), nullable=False),
        pa.field("split_hash", pa.string(), nullable=False),
        pa.field("settings_hash", pa.string(), nullable=False),  # what changes the numbers (indomain.py)
        pa.field("doc_id", pa.int64(), nullable=False),  # position in the held-out split
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("checkpoint_name", pa.string(), nullable=False),
        pa.field("data", pa.string(), nullable=False),  # the fine-tune data source the split came from
        pa.field("example_hash", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("loss_sum", pa.float64(), nullable=False),
        pa.field("loss", pa.float64(), nullable=False),
        pa.field("checkable", pa.bool_(), nullable=False),
        pa.field("em", pa.float64()),
        pa.field("answer", pa.string()),
        pa.field("generation", pa.string()),
        pa.field("settings_json", pa.string(), nullable=False),
    ],
    metadata=_META,
)
TABLES["indomain"] = (INDOMAIN_SCHEMA, ("checkpoint_hash", "split_hash", "settings_hash", "doc_id"))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RunRecord:
    """One scored checkpoint: everything needed to tell whether two runs are comparable.

    The ``*_json`` columns are plain dicts here (``hparams`` is stored as ``hparams_json`` etc.) so
    callers never hand-serialise JSON.
    """

    name: str
    checkpoint_name: str
    source: str = "cfbench"
    checkpoint_path: str | None = None
    checkpoint_hash: str | None = None
    base: str | None = None
    method: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    suite: str | None = None
    suite_hash: str | None = None
    task_hashes: dict[str, str] = field(default_factory=dict)
    backend: str | None = None
    backend_settings: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    cfbench_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(default_factory=_new_id)
    created_at: datetime = field(default_factory=utc_now)


@dataclass
class TaskScore:
    """One metric of one task for one run (``run_id`` is filled in by ``ResultStore.append_run``)."""

    task: str
    metric: str
    value: float
    n_items: int | None = None
    stderr: float | None = None
    task_hash: str | None = None
    subset: str | None = None
    cache_key: str | None = None
