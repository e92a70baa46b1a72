"""``finetune(..., lora_r=...)``: peft adapters, merged on save into a normal checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cfbench.errors import CfbenchError

pytest.importorskip("peft")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_lora_merges_into_a_plain_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cfbench.train.finetune import finetune

    res = finetune(str(tiny_model), "builtin:arithmetic", tmp_path / "lora", optimizer="sam", rho=0.05, lr=1e-2,
                   batch_size=4, micro_batch=2, max_steps=2, warmup=0, max_length=64, progress=False, device="cpu",
                   lora_r=4, lora_targets="q_proj,v_proj")  # fmt: skip
    base, tuned = _weights(tiny_model), _weights(res.path)
    assert tuned.keys() == base.keys()  # no adapter tensors, no peft prefixes
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    # Only the targeted projections moved (B starts at zero, so step 1 moves B, step 2 moves W = W + BA).
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    m = json.loads((res.path / "cfbench_manifest.json").read_text())
    assert m["lora"]["r"] == 4 and m["lora"]["targets"] == ["q_proj", "v_proj"] and m["lora"]["merged_on_save"]
    AutoModelForCausalLM.from_pretrained(res.path)  # loads without peft


def test_lora_bad_target_is_one_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.train.finetune import finetune

    with pytest.raises(CfbenchError, match="--lora-targets nope"):
        finetune(str(tiny_model), "builtin:arithmetic", tmp_path / "x", max_steps=1, batch_size=2, progress=False,
                 device="cpu", lora_r=2, lora_targets="nope")  # fmt: skip
