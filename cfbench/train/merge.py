"""Wise-FT weight interpolation (Wortsman et al. 2022): θ = (1−α)·θ_base + α·θ_tuned.

Interpolating back towards the base recovers much of what fine-tuning forgot at a small cost on
the new task; Li et al. 2024 use it as a baseline next to SAM. Floating tensors are interpolated in
float32 and stored in the tuned checkpoint's dtype; non-floating tensors (integer buffers) are
copied from the tuned model. Config, tokenizer and generation files come from the tuned folder,
which is the model being repaired. Key sets, shapes and tokenizers (``cfbench.models.hashing.tokenizer_hash``) must
match exactly: a silent partial merge, or one across vocabularies, would produce a model that
looks fine and is not.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cfbench.errors import CfbenchError
from cfbench.fsutil import check_room
from cfbench.models.adapter import ADAPTER_CONFIG, ADAPTER_MARKER
from cfbench.models.checkpoint import ResolvedCheckpoint, resolve_checkpoint
from cfbench.models.hashing import require_finite_weights, tokenizer_hash
from cfbench.train._io import MANIFEST, atomic_dir, check_output_dir, environment, write_json
from cfbench.train.lora import merged_adapter_state_dict

_WEIGHT_INDEX = "model.safetensors.index.json"


@dataclass
class MergeResult:
    """The merged folder and its manifest."""

    path: Path
    manifest: dict[str, Any]


def _weight_files(folder: Path) -> list[Path]:
    index = folder / _WEIGHT_INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise CfbenchError(
        f"{folder} has no model.safetensors (or sharded index): merge needs safetensors HF folders; "
        "re-save with model.save_pretrained(DIR)"
    )


def load_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder's safetensors weights (single file or shards)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        tensors.update(load_file(str(f)))
    return tensors


def merge_state_dicts(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Interpolate matching tensors; raises :class:`CfbenchError` naming mismatched keys or shapes."""
    missing = sorted(set(tuned) - set(base))
    extra = sorted(set(base) - set(tuned))
    if missing or extra:
        raise CfbenchError(
            f"checkpoints have different tensors (only in tuned: {missing[:3]}{'...' if len(missing) > 3 else ''}; "
            f"only in base: {extra[:3]}{'...' if len(extra) > 3 else ''}): merge a fine-tune with the base it "
            "was trained from"
        )
    merged: dict[str, torch.Tensor] = {}
    for key, t in tuned.items():
        b = base[key]
        if b.shape != t.shape:
            raise CfbenchError(
                f"tensor {key} has shape {tuple(b.shape)} in base but {tuple(t.shape)} in tuned: merge a fine-tune "
                "with the base it was trained from (same architecture and vocabulary)"
            )
        if t.is_floating_point():
            if not b.is_floating_point():
                raise CfbenchError(f"tensor {key} is {b.dtype} in base but {t.dtype} in tuned: they must both be float")
            mixed = torch.lerp(b.float(), t.float(), alpha) if alpha != 1.0 else t.float()
            merged[key] = mixed.to(t.dtype).contiguous()
        else:
            merged[key] = t.clone()
    return merged


def parse_alphas(text: str | float | Sequence[float]) -> list[float]:
    """``"0.25,0.5"`` (or one float, or a list) → validated alphas in the given order, no repeats."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        if not parts or any(not p for p in parts):
            raise CfbenchError(f"--alpha {text!r}: give one number or a comma-separated list such as 0.25,0.5,0.75")
        try:
            alphas = [float(p) for p in parts]
        except ValueError:
            raise CfbenchError(f"--alpha {text!r}: not a number list; use e.g. 0.5 or 0.25,0.5,0.75") from None
    elif isinstance(text, (int, float)):
        alphas = [float(text)]
    else:
        alphas = [float(a) for a in text]
    if not alphas:
        raise CfbenchError("--alpha needs at least one value in [0, 1]")
    for a in alphas:
        if not 0.0 <= a <= 1.0:  # also refuses NaN
            raise CfbenchError(f"--alpha must be in [0, 1] (0 = base, 1 = tuned), got {a}")
    if len(set(alphas)) != len(alphas):
        raise CfbenchError(f"--alpha {text!r} repeats a value: each alpha gets one checkpoint, list it once")
    return alphas


def alpha_dirname(alpha: float) -> str:
    """Folder name of one alpha in a sweep (``alpha-0.25``): stable, so reruns and scripts find it."""
    return f"alpha-{alpha:g}"


def merge(
    base: str | Path, tuned: str | Path, alpha: float, out: str | Path, *, overwrite: bool = False
) -> MergeResult:
    """Write ``(1−alpha)·base + alpha·tuned`` to ``out`` (atomic HF folder + ``cfbench_manifest.json``).

    ``alpha=0`` gives the base weights, ``alpha=1`` the tuned ones. ``base`` and ``tuned`` are anything
    :func:`cfbench.models.resolve_checkpoint` accepts.
    """
    if not 0.0 <= alpha <= 1.0:
        raise CfbenchError(f"--alpha must be in [0, 1] (0 = base, 1 = tuned), got {alpha}")
    return _merge_many(base, tuned, [(float(alpha), Path(out))], overwrite)[0]


def merge_sweep(
    base: str | Path, tuned: str | Path, alphas: str | Sequence[float], out: str | Path, *, overwrite: bool = False
) -> list[MergeResult]:
    """A Wise-FT sweep: one merged checkpoint per alpha, at ``out/alpha-<α>`` (see :func:`alpha_dirname`).

    The two checkpoints are read once. Every alpha and output folder is checked before anything is
    written, and each folder is written atomically, so a refused sweep writes nothing and an
    interrupted one leaves only complete checkpoints.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CfbenchError(f"output {out} exists and is not a folder: choose another --out")
    values = parse_alphas(alphas)
    return _merge_many(base, tuned, [(a, out / alpha_dirname(a)) for a in values], overwrite)


def _check_mergeable(base_ck: ResolvedCheckpoint, tuned_ck: ResolvedCheckpoint) -> None:
    """Refuse, before loading any tensor, two checkpoints whose weights do not line up."""
    if base_ck.kind == "adapter":
        raise CfbenchError(f"base {base_ck.spec} is a LoRA adapter: pass the full base model it adapts")
    for name, ck in (("base", base_ck), ("tuned", tuned_ck)):
        if ck.kind != "adapter":  # an adapter's weights are its base's plus the factors, folded in memory
            _weight_files(ck.path)  # clear error before loading anything
        if not (ck.path / "config.json").is_file():
            raise CfbenchError(f"{name} {ck.path} has no config.json: pass an HF checkpoint folder")
        # a NaN in either input is a NaN in every merge (NaN·α stays NaN, even at α = 0)
        require_finite_weights(ck.path, ck.content_hash, f"{name} {ck.name}",
                               consequence="a merge with it would be non-finite too")  # fmt: skip
    base_cfg = json.loads((base_ck.path / "config.json").read_text())
    tuned_cfg = json.loads((tuned_ck.path / "config.json").read_text())
    for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
        if base_cfg.get(key) != tuned_cfg.get(key):
            raise CfbenchError(
                f"config {key} differs (base {base_cfg.get(key)!r}, tuned {tuned_cfg.get(key)!r}): merge a "
                "fine-tune with the base it was trained from"
            )
    # Same architecture is not enough: row i of the embedding must mean the same token in both, or
    # the interpolation mixes unrelated tokens and the result looks fine and is not.
    base_tok, tuned_tok = tokenizer_hash(base_ck.path), tokenizer_hash(tuned_ck.path)
    if base_tok != tuned_tok:
        raise CfbenchError(
            f"base and tuned have different tokenizers (base {str(base_tok)[:8]}, tuned {str(tuned_tok)[:8]}): "
            "their vocabularies do not line up; merge a fine-tune with the base it was trained from"
        )


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The tuned folder's cfbench manifest, or None when it has none (or an unreadable one)."""
    manifest: dict[str, Any] | None = None
    if (folder / MANIFEST).is_file():
        with contextlib.suppress(ValueError):
            manifest = json.loads((folder / MANIFEST).read_text())
    return manifest


def _merge_manifest(
    alpha: float,
    base: str | Path,
    tuned: str | Path,
    base_ck: ResolvedCheckpoint,
    tuned_ck: ResolvedCheckpoint,
    merged: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """The merged folder's manifest: the formula, both inputs by content hash, what was interpolated."""
    return {
        "cfbench_manifest": 1,
        "kind": "merge",
        "method": "wise-ft",
        "status": "completed",
        "label": f"Wise-FT α={alpha:g}",
        "alpha": alpha,
        "formula": "(1 - alpha) * base + alpha * tuned over floating tensors; others copied from tuned",
        "base": {
            "spec": str(base),
            "name": base_ck.name,
            "path": str(base_ck.path),
            "content_hash": base_ck.content_hash,
        },
        "tuned": {
            "spec": str(tuned),
            "name": tuned_ck.name,
            "path": str(tuned_ck.path),
            "content_hash": tuned_ck.content_hash,
        },
        "n_tensors": len(merged),
        "n_interpolated": sum(1 for t in merged.values() if t.is_floating_point()),
        "environment": environment(),
    }


def _write_merged(
    out: Path,
    merged: dict[str, torch.Tensor],
    tuned_ck: ResolvedCheckpoint,
    base_hash: str,
    manifest: dict[str, Any],
    tuned_manifest: dict[str, Any] | None,
    t_from: float,
) -> None:
    """One merged HF folder, atomically: the weights, the tuned folder's other files, the manifest.

    ``t_from``: when this merge's clock started (the first merge also paid for reading both inputs).
    """
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file(merged, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for f in sorted(tuned_ck.path.iterdir()):
            skip = (
                f.name.endswith(".safetensors")
                or f.name in (_WEIGHT_INDEX, MANIFEST, ADAPTER_CONFIG, ADAPTER_MARKER)
                or f.name.startswith(".")
            )
            if f.is_file() and not skip:
                shutil.copy2(f, tmp / f.name)
        if tuned_manifest is not None:
            manifest["tuned_manifest"] = tuned_manifest
            if tuned_manifest.get("heldout") and tuned_manifest.get("base", {}).get("content_hash") == base_hash:
                # Neither side trained on the tuned run's held-out split, so the merge inherits it
                # and its in-domain gain is measured on the same documents.
                manifest["heldout"] = tuned_manifest["heldout"]
        manifest["wall_time_s"] = round(time.time() - t_from, 3)
        write_json(tmp / MANIFEST, manifest)


def _merged_bytes(base_folder: Path, tuned: ResolvedCheckpoint) -> int:
    """About the size of one merged folder: the tuned weight files (its dtypes are kept), or the base's for
    an adapter (merged into a base-shaped checkpoint)."""
    folder = base_folder if tuned.kind == "adapter" else tuned.path
    return sum(f.stat().st_size for f in _weight_files(folder))


def _merge_many(
    base: str | Path, tuned: str | Path, targets: Sequence[tuple[float, Path]], overwrite: bool
) -> list[MergeResult]:
    """Check every output, read both checkpoints once, then write one merged folder per alpha."""
    for _, out in targets:
        check_output_dir(out, overwrite)
    t0 = time.time()
    base_ck = resolve_checkpoint(str(base))
    tuned_ck = resolve_checkpoint(str(tuned))
    _check_mergeable(base_ck, tuned_ck)
    check_room([out for _, out in targets], _merged_bytes(base_ck.path, tuned_ck), "--out")  # before any is written
    base_sd = load_safetensors_folder(base_ck.path)
    if tuned_ck.kind == "adapter":
        tuned_sd = merged_adapter_state_dict(tuned_ck.path, list(base_sd))
    else:
        tuned_sd = load_safetensors_folder(tuned_ck.path)
    tuned_manifest = _read_manifest(tuned_ck.path)
    results = []
    for alpha, out in targets:
        t_alpha = time.time()
        merged = merge_state_dicts(base_sd, tuned_sd, alpha)
        manifest = _merge_manifest(alpha, base, tuned, base_ck, tuned_ck, merged)
        # The first merge also paid for reading both checkpoints.
        _write_merged(
            out, merged, tuned_ck, base_ck.content_hash, manifest, tuned_manifest, t0 if not results else t_alpha
        )
        del merged
        results.append(MergeResult(out, manifest))
    return results
