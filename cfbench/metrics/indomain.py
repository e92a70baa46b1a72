"""In-domain gain: what a fine-tune learned on its own held-out documents, as paired signals.

The rows are measured after a fine-tune by :mod:`cfbench.train.indomain` (which needs torch and the
model); this module only reads them back from the store and compares two checkpoints, so it is a
signal like the others (layer 5) and ``compare`` can show it without importing training code.
See docs/indomain.md.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.models.checkpoint import resolve_checkpoint
from cfbench.signals import Signal
from cfbench.stats import bootstrap_means, percentile_ci, task_rng

#: The results-store table the in-domain rows live in (its schema: cfbench.store.schema).
TABLE = "indomain"


def _checkpoint_hash(store_df: pd.DataFrame, ckpt: str) -> str:
    """A stored content hash as given; anything else is resolved as a checkpoint and hashed."""
    if ckpt in set(store_df["checkpoint_hash"]) or re.fullmatch(r"[0-9a-f]{64}", ckpt):
        return ckpt
    return resolve_checkpoint(str(ckpt)).content_hash


def _paired_delta(
    base: np.ndarray, tuned: np.ndarray, n_boot: int, rng: np.random.Generator, confidence: float
) -> tuple[float, tuple[float, float] | None, bool | None]:
    delta = float(np.mean(tuned - base))
    if n_boot <= 0 or base.size < 2:
        return delta, None, None
    reps = bootstrap_means(base, tuned, n_boot, rng)
    lo, hi = percentile_ci(reps[:, 1] - reps[:, 0], confidence)
    return delta, (lo, hi), not (lo <= 0.0 <= hi)


def indomain_docs(store: Any, base_ckpt: str, tuned_ckpt: str, split: Any) -> tuple[pd.DataFrame, tuple[str, str, str]]:
    """The held-out documents both checkpoints were scored on, one row each (``loss_b``, ``loss_t``,
    ``em_b``, ``em_t``, ``doc_id``, ``example_hash``), and the (split, base, tuned) hashes.

    The one place base and tuned in-domain rows are paired: :func:`indomain_gain` and a contrast of two
    tuned runs (:mod:`cfbench.comparison.contrasts`) read the same documents.
    """
    split_hash = str(getattr(split, "split_hash", split))  # a HeldoutSplit (cfbench.train.indomain) or its hash
    df = store.read_table(TABLE)
    b_hash, t_hash = _checkpoint_hash(df, base_ckpt), _checkpoint_hash(df, tuned_ckpt)
    df = df[df["split_hash"] == split_hash]
    sides = {}
    for name, h in (("base", b_hash), ("tuned", t_hash)):
        sides[name] = df[df["checkpoint_hash"] == h]
        if sides[name].empty:
            raise CfbenchError(
                f"no in-domain results for the {name} checkpoint {h[:12]} on held-out split {split_hash[:12]}: "
                "they are measured after `cfbench finetune` / `cfbench pair` (with --heldout > 0) into the same "
                "--results store"
            )
    common = set(sides["base"]["settings_hash"]) & set(sides["tuned"]["settings_hash"])
    if not common:
        raise CfbenchError(
            f"the base and tuned in-domain results on split {split_hash[:12]} were measured with different settings "
            "(max length / generation budget / dtype): re-measure one of them with the other's settings"
        )
    # Several common settings: the most recently measured one for the tuned run.
    tuned_rows = sides["tuned"][sides["tuned"]["settings_hash"].isin(common)]
    key = tuned_rows.sort_values("created_at")["settings_hash"].iloc[-1]
    base_k, tuned_k = (sides[n][sides[n]["settings_hash"] == key] for n in ("base", "tuned"))
    merged = base_k.merge(tuned_k, on=["doc_id", "example_hash"], how="inner", suffixes=("_b", "_t"))
    merged = merged[np.isfinite(merged["loss_b"]) & np.isfinite(merged["loss_t"])]
    if merged.empty:
        raise CfbenchError(f"the base and tuned in-domain rows on split {split_hash[:12]} share no scored document")
    return merged, (split_hash, b_hash, t_hash)


def indomain_gain(
    store: Any,
    base_ckpt: str,
    tuned_ckpt: str,
    split: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[Signal]:
    """``indomain_loss`` (Δ nats/token) and, where answers are checkable, ``indomain_em`` (Δ points):
    tuned − base, paired per held-out document, with a paired bootstrap CI.

    ``base_ckpt`` / ``tuned_ckpt``: checkpoint content hashes as stored, or anything
    :func:`cfbench.models.resolve_checkpoint` accepts. ``split``: a
    :class:`cfbench.train.indomain.HeldoutSplit` or its hash.
    ``significant``: the CI excludes 0.
    """
    merged, (split_hash, b_hash, t_hash) = indomain_docs(store, base_ckpt, tuned_ckpt, split)
    source = str(merged["data_b"].iloc[0])
    signals = []
    b, t = merged["loss_b"].to_numpy(float), merged["loss_t"].to_numpy(float)
    rng = task_rng(seed, "indomain_loss", split_hash, b_hash, t_hash)
    value, ci, sig = _paired_delta(b, t, n_boot, rng, confidence)
    signals.append(Signal(
        name="indomain_loss", kind="learned", label="in-domain loss", value=value, unit="Δ nats/token",
        n=len(b), ci=ci, significant=sig, better="lower",
        note=f"{len(b)} held-out docs of {source}: base {b.mean():.4f} → tuned {t.mean():.4f} nats/token",
    ))  # fmt: skip
    em = merged[merged["em_b"].notna() & merged["em_t"].notna()]
    if not em.empty:
        b, t = 100.0 * em["em_b"].to_numpy(float), 100.0 * em["em_t"].to_numpy(float)
        rng = task_rng(seed, "indomain_em", split_hash, b_hash, t_hash)
        value, ci, sig = _paired_delta(b, t, n_boot, rng, confidence)
        signals.append(Signal(
            name="indomain_em", kind="learned", label="in-domain EM", value=value, unit="Δ pts",
            n=len(b), ci=ci, significant=sig, better="higher",
            note=f"{len(b)} checkable held-out docs of {source}: base {b.mean():.1f}% → tuned {t.mean():.1f}% "
            "exact match (greedy)",
        ))  # fmt: skip
    return signals
