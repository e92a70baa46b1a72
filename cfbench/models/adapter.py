"""PEFT LoRA adapter folders as checkpoints: read, check against the base, and describe for the backends.

Most fine-tunes today are LoRA runs that save ``adapter_config.json`` + ``adapter_model.safetensors``
(a few MB) per checkpoint. Merging each into its base would store a full copy per step, so an
adapter is scored as *base + adapter*: the resolver (:mod:`cfbench.models.checkpoint`) checks the
adapter fits its base here, then builds a small *view* folder in the cache holding the base's
config and tokenizer, a copy of the adapter and :data:`ADAPTER_MARKER` naming the resolved base.
Everything that only reads config or tokenizer (cache keys, OpenCompass requests, tokenizer hashes)
treats the view as any HF folder; the backends read the marker and load base + adapter (hf:
``PeftModel``; vLLM: ``enable_lora`` with a ``LoRARequest``). The identity is a hash over the base's
content hash and the adapter's bytes, so a re-trained adapter never reuses stale numbers, and the
base scored on its own keeps its own cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cfbench.errors import CfbenchError
from cfbench.models.hashing import HashCache, tokenizer_hash

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_MARKER = "cfbench_adapter.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Keys of adapter_config.json that record where or how it was written, not what the adapter computes.
_VOLATILE = ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "task_type", "auto_mapping")
_PREFIX = "base_model.model."
# The LoRA ranks vLLM's engine accepts for max_lora_rank (it refuses other values).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def is_adapter_folder(path: Path) -> bool:
    """A folder with ``adapter_config.json`` and no full-model weights (a PEFT save or Trainer checkpoint)."""
    if not (path / ADAPTER_CONFIG).is_file():
        return False
    full = [*path.glob("model*.safetensors"), *path.glob("pytorch_model*.bin")]
    return not full


def read_adapter_config(path: Path) -> dict[str, Any]:
    """The adapter's config, refusing what is not a LoRA adapter cfbench can load."""
    file = path / ADAPTER_CONFIG
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CfbenchError(f"{file} is not valid JSON ({exc}): restore the adapter's config") from exc
    if not isinstance(cfg, dict):
        raise CfbenchError(f"{file} is not a PEFT adapter config (not a JSON object): restore it")
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise CfbenchError(
            f"{path} is a PEFT {kind or 'unknown'} adapter; cfbench scores LoRA adapters only: "
            "merge it into its base (model.merge_and_unload().save_pretrained(DIR)) and pass DIR"
        )
    return cfg


def adapter_weights(path: Path) -> Path:
    """The adapter's weight file (safetensors preferred)."""
    for name in ADAPTER_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise CfbenchError(
        f"{path} has adapter_config.json but no {' or '.join(ADAPTER_WEIGHTS)}: the save was incomplete, re-save it"
    )


def adapter_base_spec(path: Path, cfg: dict[str, Any], base: str | None) -> str:
    """``--base`` if given, else the adapter config's ``base_model_name_or_path``."""
    if base:
        return str(base)
    named = cfg.get("base_model_name_or_path")
    if not named:
        raise CfbenchError(
            f"{path} is a LoRA adapter whose adapter_config.json names no base model: pass it with --base"
        )
    return str(named)


def load_adapter_tensors(file: Path) -> dict[str, Any]:
    """The adapter's tensors (small: rank-r factors), keys as saved by PEFT."""
    import torch

    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(file)))
        except (SafetensorError, OSError) as exc:
            first = str(exc).splitlines()[0]
            raise CfbenchError(f"{file} is truncated or corrupt ({first}): re-save the adapter") from exc
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CfbenchError(f"cannot read {file} ({type(exc).__name__}): re-save the adapter as safetensors") from exc
    return {str(k): v for k, v in dict(state).items() if isinstance(v, torch.Tensor)}


def _expected_shape(key: str, base_shapes: dict[str, tuple[int, ...]]) -> tuple[str, int, int | None] | None:
    """(base parameter, dim of the adapter tensor to compare, base dim) for a LoRA factor, else None."""
    for marker, dim, base_dim in (
        (".lora_A.", 1, 1),  # [r, in]   vs W [out, in]
        (".lora_B.", 0, 0),  # [out, r]  vs W [out, in]
        (".lora_embedding_A", 1, 0),  # [r, vocab] vs E [vocab, hidden]
        (".lora_embedding_B", 0, 1),  # [hidden, r]
    ):
        if marker in key:
            module = key.split(marker, 1)[0]
            return f"{module}.weight", dim, base_dim
    return None


def check_adapter_fits(
    spec: str, base_spec: str, tensors: dict[str, Any], base_shapes: dict[str, tuple[int, ...]]
) -> None:
    """Refuse an adapter whose factors do not fit the base's layers (another vocab or hidden size).

    PEFT would fail deep inside ``load_state_dict`` with a size-mismatch dump, or (for
    ``modules_to_save``) silently drop rows; one line naming the tensor and the fix is better.
    """
    for raw, t in sorted(tensors.items()):
        key = raw.removeprefix(_PREFIX)
        found = _expected_shape(key, base_shapes)
        if found is None:  # a full module saved beside the factors (modules_to_save): same shape as the base's
            target = key.replace(".modules_to_save", "").replace(".original_module", "")
            if target in base_shapes and tuple(t.shape) != base_shapes[target]:
                raise CfbenchError(
                    f"adapter {spec} does not fit base {base_spec!r}: {target} has shape {tuple(t.shape)} but the "
                    f"base has {base_shapes[target]} (vocab or hidden size differs): pass the base it was trained "
                    "from with --base"
                )
            continue
        param, dim, base_dim = found
        if param not in base_shapes:
            raise CfbenchError(
                f"adapter {spec} does not fit base {base_spec!r}: it adapts {param.removesuffix('.weight')}, which "
                "the base does not have: pass the base it was trained from with --base"
            )
        want = base_shapes[param][base_dim] if base_dim is not None else None
        if int(t.shape[dim]) != want:
            raise CfbenchError(
                f"adapter {spec} does not fit base {base_spec!r}: {key} has shape {tuple(t.shape)} but the base's "
                f"{param} is {base_shapes[param]} (hidden or vocab size differs): pass the base it was trained "
                "from with --base"
            )


def check_targets(spec: str, base_spec: str, cfg: dict[str, Any], module_names: Iterable[str]) -> None:
    """Refuse an adapter whose ``target_modules`` name no module of the base (another architecture)."""
    names = list(module_names)
    targets = cfg.get("target_modules")
    if not targets:
        return
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, n) for n in names):
            raise CfbenchError(
                f"adapter {spec}: its target_modules pattern {targets!r} matches no module of base {base_spec!r}: "
                "pass the base it was trained from with --base"
            )
        return
    leaves = {n.rsplit(".", 1)[-1] for n in names} | set(names)
    missing = sorted(t for t in targets if t not in leaves and not any(n.endswith("." + t) for n in names))
    if missing:
        raise CfbenchError(
            f"adapter {spec} targets {','.join(missing)}, which base {base_spec!r} has no module of: "
            "pass the base it was trained from with --base"
        )


def check_not_identity(spec: str, tensors: dict[str, Any]) -> None:
    """Refuse an adapter whose every ``lora_B`` is zero: it computes exactly the base (an untrained save).

    Scoring it would report the base's numbers under the adapter's name (the failure of lm-eval
    #2432, where the adapter was silently not applied).
    """
    factors = [t for k, t in tensors.items() if ".lora_B." in k or ".lora_embedding_B" in k]
    if factors and all(not bool(t.any()) for t in factors):
        raise CfbenchError(
            f"adapter {spec} leaves the base's logits unchanged (every lora_B is zero: it was saved before any "
            "training step): pass a trained checkpoint"
        )


def check_tokenizer(spec: str, base_spec: str, adapter_dir: Path, base_dir: Path) -> None:
    """An adapter saved with its own tokenizer must use the base's vocabulary."""
    own = tokenizer_hash(adapter_dir)
    if own is not None and own != tokenizer_hash(base_dir):
        raise CfbenchError(
            f"adapter {spec} was saved with a tokenizer (vocab) that differs from base {base_spec!r}'s: "
            "pass the base it was trained from with --base"
        )


def adapter_identity(base_hash: str, cfg: dict[str, Any], weights: Path, hashes: HashCache) -> str:
    """sha256 over the base's content hash, the adapter's weights and its numerics-relevant config."""
    canon = {k: v for k, v in cfg.items() if k not in _VOLATILE}
    text = "\n".join(("peft-adapter/v1", base_hash, hashes.file_sha256(weights), json.dumps(canon, sort_keys=True)))
    return hashlib.sha256(text.encode()).hexdigest()


def build_adapter_view(adapter_dir: Path, base_dir: Path, marker: dict[str, Any], out: Path) -> None:
    """Fill ``out`` with the base's config and tokenizer, a copy of the adapter and the marker.

    No base weights are copied (or linked): a reader that ignores the marker fails to find weights
    instead of silently scoring the base.
    """
    for f in sorted(base_dir.iterdir()):
        if f.is_file() and (f.name in ("config.json", "generation_config.json") or _is_tokenizer_file(f.name)):
            shutil.copy2(f, out / f.name)
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = str(base_dir)
    (out / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    weights = adapter_weights(adapter_dir)
    shutil.copy2(weights, out / weights.name)
    (out / ADAPTER_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))


def _is_tokenizer_file(name: str) -> bool:
    return bool(
        re.fullmatch(
            r"tokenizer.*|vocab\..*|merges\.txt|special_tokens_map\.json|added_tokens\.json|.*\.model|chat_template\..*",
            name,
        )
    )


def adapter_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of an adapter view folder (``base_path``, ``r``, ...), or None for an ordinary folder."""
    file = Path(path) / ADAPTER_MARKER
    if not file.is_file():
        return None
    return dict(json.loads(file.read_text(encoding="utf-8")))


def vllm_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds rank ``r`` (read from adapter_config.json)."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise CfbenchError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}: use the hf backend")
