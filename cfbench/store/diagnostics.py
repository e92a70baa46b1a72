"""Storing diagnostics (flatness, landscapes, weight diffs), and looking them up per run for ``cfbench compare``.

Everything is keyed by the checkpoint's content hash (as runs are), so a landscape computed once for a
folder is found again for any stored run of that checkpoint, whatever it was called.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from cfbench.store.schema import DIAGNOSTICS_SCHEMA, LANDSCAPE_SCHEMA, WEIGHT_DIFF_SCHEMA, utc_now
from cfbench.store.store import ResultStore

#: Diagnostics ``compare --diagnostics`` shows, in order.
DIAGNOSTIC_COLUMNS = ("sc", "ag", "mag", "hessian_trace", "top_eigenvalue", "displacement", "rel_displacement")


@dataclass
class LayerDiff:
    """One parameter's row of a weight diff (:mod:`cfbench.analysis.diff` computes it; this is its stored shape)."""

    param: str
    shape: tuple[int, ...]
    numel: int
    norm_base: float
    norm_delta: float
    rel_delta: float
    effective_rank: float | None
    top_singular: list[float]
    svd: str


def write_diagnostics(
    store: ResultStore,
    *,
    checkpoint_name: str,
    checkpoint_hash: str | None,
    source: str,
    values: dict[str, float | None],
    settings: dict[str, Any],
    base_hash: str | None = None,
) -> str:
    """One row per metric in ``values``; returns the diagnostic id."""
    did = uuid.uuid4().hex
    now = utc_now()
    rows = [
        {
            "diag_id": did,
            "created_at": now,
            "checkpoint_name": checkpoint_name,
            "checkpoint_hash": checkpoint_hash,
            "base_hash": base_hash,
            "source": source,
            "metric": k,
            "value": None if v is None else float(v),
            "settings_json": json.dumps(settings, sort_keys=True),
        }
        for k, v in values.items()
    ]
    store.append_table("diagnostics", pa.Table.from_pylist(rows, schema=DIAGNOSTICS_SCHEMA))
    return did


def write_landscape(
    store: ResultStore,
    *,
    kind: str,
    checkpoint_name: str,
    checkpoint_hash: str | None,
    data: str,
    points: Sequence[tuple[int, int, float, float, float]],
    settings: dict[str, Any],
    base_hash: str | None = None,
) -> str:
    """Grid (or curve) points ``(i, j, alpha, beta, loss)`` as rows of the ``landscape`` table."""
    lid = uuid.uuid4().hex
    now = utc_now()
    sj = json.dumps(settings, sort_keys=True)
    rows = [
        {
            "landscape_id": lid,
            "created_at": now,
            "kind": kind,
            "checkpoint_name": checkpoint_name,
            "checkpoint_hash": checkpoint_hash,
            "base_hash": base_hash,
            "data": data,
            "i": int(i),
            "j": int(j),
            "alpha": float(a),
            "beta": float(b),
            "loss": float(loss),
            "settings_json": sj,
        }
        for i, j, a, b, loss in points
    ]
    store.append_table("landscape", pa.Table.from_pylist(rows, schema=LANDSCAPE_SCHEMA))
    return lid


def write_weight_diff(
    store: ResultStore,
    rows: Sequence[LayerDiff],
    *,
    base_name: str,
    base_hash: str | None,
    tuned_name: str,
    tuned_hash: str | None,
) -> str:
    did = uuid.uuid4().hex
    now = utc_now()
    out = [
        {
            "diff_id": did,
            "created_at": now,
            "base_name": base_name,
            "base_hash": base_hash,
            "tuned_name": tuned_name,
            "tuned_hash": tuned_hash,
            "param": r.param,
            "shape": list(r.shape),
            "numel": r.numel,
            "norm_base": r.norm_base,
            "norm_delta": r.norm_delta,
            "rel_delta": r.rel_delta,
            "effective_rank": r.effective_rank,
            "top_singular": r.top_singular,
            "svd": r.svd,
        }
        for r in rows
    ]
    store.append_table("weight_diff", pa.Table.from_pylist(out, schema=WEIGHT_DIFF_SCHEMA))
    return did


def diagnostics_for_runs(store: ResultStore, runs: Sequence[tuple[str, Any]]) -> pd.DataFrame:
    """Per-run columns of the latest stored diagnostics of each run's checkpoint.

    ``runs`` is ``(label, RunRecord)`` pairs; a run whose checkpoint has no stored value gets NaN there.
    Displacement is looked up against the first run's checkpoint (the base of the comparison) when
    stored for that base, else the latest displacement stored for the checkpoint.
    """
    diag = store.read_table("diagnostics")
    base_hash = runs[0][1].checkpoint_hash if runs else None
    out = []
    for label, rec in runs:
        row: dict[str, Any] = {"run": label, "checkpoint_hash": rec.checkpoint_hash}
        mine = diag[diag["checkpoint_hash"] == rec.checkpoint_hash] if rec.checkpoint_hash else diag.iloc[0:0]
        for metric in DIAGNOSTIC_COLUMNS:
            sel = mine[mine["metric"] == metric]
            if metric.endswith("displacement") and len(sel):
                vs_base = sel[sel["base_hash"] == base_hash]
                sel = vs_base if len(vs_base) else sel
            sel = sel.sort_values("created_at")
            row[metric] = float(sel["value"].iloc[-1]) if len(sel) and pd.notna(sel["value"].iloc[-1]) else float("nan")
        out.append(row)
    return pd.DataFrame(out, columns=["run", "checkpoint_hash", *DIAGNOSTIC_COLUMNS])
