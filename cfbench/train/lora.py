"""LoRA fine-tuning (via peft) with merge-on-save, so the output is an ordinary checkpoint.

"LoRA learns less and forgets less" (Biderman et al. 2024) is exactly the kind of claim cfbench
measures: ``cfbench finetune BASE --lora-r 16 ...`` trains rank-r adapters on the chosen linear
layers (AdamW, SAM or ASAM: only the adapter weights are optimised and perturbed), then merges them
into the base weights (``merge_and_unload``) before saving. Every scoring backend and
``cfbench merge`` then treat the result like a full fine-tune; the manifest's ``lora`` entry says how
it was made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cfbench.errors import CfbenchError
from cfbench.models.adapter import adapter_marker

SAVE_MODES = ("merged", "adapter")

# The attention and MLP projections of llama-like models (SmolLM2, Llama, Mistral, Qwen).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_settings(
    r: int | None, alpha: float | None, targets: str | Sequence[str] | None
) -> dict[str, Any] | None:
    """Validated LoRA hyper-parameters (part of the run fingerprint), or None for full fine-tuning."""
    if r is None:
        if alpha is not None or targets is not None:
            raise CfbenchError("--lora-alpha/--lora-targets need --lora-r: add e.g. --lora-r 16")
        return None
    if r < 1:
        raise CfbenchError(f"--lora-r must be a positive rank, got {r}: use e.g. --lora-r 16")
    names = targets.split(",") if isinstance(targets, str) else list(targets or DEFAULT_TARGETS)
    names = [t.strip() for t in names if t.strip()]
    if not names:
        raise CfbenchError("--lora-targets is empty: name module suffixes, e.g. --lora-targets q_proj,v_proj")
    a = float(alpha) if alpha is not None else float(2 * r)
    if a <= 0:
        raise CfbenchError(f"--lora-alpha must be > 0, got {alpha}")
    return {"r": int(r), "alpha": a, "targets": sorted(names), "dropout": 0.0, "merged_on_save": True}


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise CfbenchError("--lora-r needs the peft package: pip install 'cfbench[lora]'") from exc
    return peft


def apply_lora(model: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
    """Wrap ``model`` with fresh LoRA adapters; only they require gradients.

    Dropout is 0 so a step is deterministic given the data (SAM's two passes see the same function).
    """
    peft = _peft()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in settings["targets"] if t not in present]
    if missing:
        raise CfbenchError(
            f"--lora-targets {','.join(missing)} match no module of {type(model).__name__}: "
            f"choose among {','.join(sorted(t for t in present if t.endswith('proj')) or sorted(present)[:10])}"
        )
    config = peft.LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        target_modules=list(settings["targets"]),
        lora_dropout=settings["dropout"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def merge_for_save(model: torch.nn.Module) -> torch.nn.Module:
    """The base model with the adapters folded into its weights (W + (alpha/r)·B·A), adapters removed."""
    merged = model.merge_and_unload()  # type: ignore[operator]
    return merged


def check_save_mode(save: str, lora_r: int | None) -> None:
    """``--save adapter`` keeps the LoRA adapter itself (a few MB); it needs ``--lora-r``."""
    if save not in SAVE_MODES:
        raise CfbenchError(f"--save {save!r}: choose merged (a full checkpoint) or adapter (the LoRA adapter only)")
    if save == "adapter" and lora_r is None:
        raise CfbenchError("--save adapter needs --lora-r (a full fine-tune has no adapter): add e.g. --lora-r 16")


def base_reference(base: Any) -> str:
    """How an adapter names its base: an absolute path for a local one, else the spec (built-in name, hub id)."""
    from pathlib import Path

    path = Path(str(base)).expanduser()
    return str(path.resolve()) if path.exists() else str(base)


def save_adapter(model: torch.nn.Module, out: Any, base_ref: str) -> None:
    """Write the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) naming ``base_ref``
    as its base, so ``cfbench eval OUT`` finds the base without ``--base``."""
    import json

    model.save_pretrained(out)  # type: ignore[operator]
    cfg_file = out / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = base_ref
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def merged_adapter_state_dict(view: Any, keys: Any) -> dict[str, torch.Tensor]:
    """The weights of base + adapter folded together (W + (alpha/r)·B·A), in memory only, limited to
    ``keys`` (the base's saved tensors: a tied head is not a tensor of its own on disk)."""
    from transformers import AutoModelForCausalLM

    marker = adapter_marker(view)
    if marker is None:
        raise CfbenchError(f"{view} is not a resolved LoRA adapter: report this as a cfbench bug")
    peft = _peft()
    base = AutoModelForCausalLM.from_pretrained(marker["base_path"], dtype="auto")
    merged = peft.PeftModel.from_pretrained(base, str(view)).merge_and_unload()
    state = merged.state_dict()
    return {k: state[k].detach().contiguous() for k in keys if k in state}
