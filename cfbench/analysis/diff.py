"""What moved between two checkpoints, without any evaluation.

Per parameter: ‖W‖ (base), ‖ΔW‖, ‖ΔW‖/‖W‖, the effective rank of ΔW and its top singular values. The
total displacement ``sqrt(Σ ‖ΔW‖²)`` is the practitioner's predictor of forgetting (displacement ≈
lr × steps × gradient norm).

Effective rank is Roy & Vetterli's (2007) ``exp(H(p))`` with ``p = σ / Σσ`` — between 1 (rank one) and
``min(m, n)`` (flat spectrum); 0 for ΔW = 0. Matrices whose smaller side exceeds ``exact_max`` use
randomized low-rank SVD (``torch.svd_lowrank``, q = ``rank_q``), so their effective rank is that of the
top-q spectrum (column ``svd`` says which).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cfbench.errors import CfbenchError
from cfbench.store.diagnostics import LayerDiff


def effective_rank(s: torch.Tensor) -> float:
    """``exp(entropy of σ/Σσ)``; 0 when every singular value is 0."""
    s = s.double().clamp_min(0)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def _spectrum(delta: torch.Tensor, top_k: int, exact_max: int, rank_q: int, seed: int) -> tuple[torch.Tensor, str]:
    m = delta.reshape(delta.shape[0], -1).float()
    if min(m.shape) <= exact_max:
        return torch.linalg.svdvals(m), "exact"
    if not bool(m.any()):
        return torch.zeros(min(rank_q, *m.shape)), f"randomized(q={rank_q})"
    torch.manual_seed(seed)
    _, s, _ = torch.svd_lowrank(m, q=min(rank_q, *m.shape), niter=4)
    return s, f"randomized(q={rank_q})"


def weight_diff(
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    *,
    top_k: int = 5,
    exact_max: int = 1024,
    rank_q: int = 64,
    seed: int = 0,
) -> list[LayerDiff]:
    """Rows for every parameter of ``base`` (state dicts with identical names and shapes; else CfbenchError)."""
    if base.keys() != tuned.keys():
        only = sorted(set(base) ^ set(tuned))
        raise CfbenchError(
            f"checkpoints have different parameters ({len(only)} differ, e.g. {only[0]}): "
            "diff two checkpoints of one architecture"
        )
    for name, w in base.items():
        if tuple(w.shape) != tuple(tuned[name].shape):
            raise CfbenchError(
                f"parameter {name} is {tuple(w.shape)} in BASE but {tuple(tuned[name].shape)} in TUNED: "
                "diff two checkpoints of one architecture"
            )
    rows: list[LayerDiff] = []
    for name, w in base.items():
        if not w.is_floating_point():
            continue
        w64 = w.double()
        d = tuned[name].double() - w64
        nb, nd = float(w64.norm()), float(d.norm())
        if d.dim() >= 2:
            s, how = _spectrum(d, top_k, exact_max, rank_q, seed)
            er: float | None = effective_rank(s)
            top = [float(x) for x in s[:top_k]]
        else:
            er, top, how = None, [], "none"
        rows.append(
            LayerDiff(
                name,
                tuple(w.shape),
                w.numel(),
                nb,
                nd,
                nd / nb if nb > 0 else (0.0 if nd == 0 else math.inf),
                er,
                top,
                how,
            )
        )
    return rows


def total_displacement(rows: list[LayerDiff]) -> float:
    """``sqrt(Σ ‖ΔW‖²)`` over all parameters."""
    return math.sqrt(sum(r.norm_delta**2 for r in rows))


def load_state(folder: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Float tensors of an HF folder's safetensors (no model built) and its config's architecture facts."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CfbenchError(f"{folder} has no .safetensors weights: save the checkpoint with save_pretrained")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    arch = {k: cfg.get(k) for k in ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size")}
    return state, arch


def check_same_architecture(base_arch: dict[str, Any], tuned_arch: dict[str, Any], base: str, tuned: str) -> None:
    """One-line CfbenchError when the configs' architecture facts differ."""
    diffs = [k for k in base_arch if base_arch[k] != tuned_arch.get(k)]
    if diffs:
        k = diffs[0]
        raise CfbenchError(
            f"{tuned} is not the architecture of {base} ({k}: {tuned_arch.get(k)!r} vs {base_arch[k]!r}): "
            "diff a fine-tune against the model it was tuned from"
        )
