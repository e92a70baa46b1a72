"""Per-GPU memory of full fine-tuning under FSDP2 full sharding: bf16 compute params, fp32 master weights.

Per parameter and rank (N ranks): fp32 master 4/N, fp32 grads 4/N, AdamW m+v 8/N, SAM restore
buffer 4/N (SAM only), plus one all-gathered bf16 layer at a time (ignored here). Activations not
included (activation checkpointing keeps about one layer's worth).
"""

from __future__ import annotations

import sys

MODELS = {"1B": 1.24e9, "7B": 6.74e9, "13B": 13.0e9, "smollm2-135m": 134.5e6}
GB = 1024**3


def row(n_params: float, n_gpus: int) -> dict[str, float]:
    per = n_params / n_gpus
    out = {"weights": 4 * per / GB, "grads": 4 * per / GB, "adam": 8 * per / GB, "sam_buffer": 4 * per / GB}
    out["total_adamw"] = out["weights"] + out["grads"] + out["adam"]
    out["total_sam"] = out["total_adamw"] + out["sam_buffer"]
    return out


if __name__ == "__main__":
    gpus = [int(x) for x in (sys.argv[1:] or ["1", "8", "16"])]
    print("| model | GPUs | weights fp32 | grads | AdamW m+v | SAM buffer | total AdamW | total SAM |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n in MODELS.items():
        for k in gpus:
            r = row(n, k)
            print(f"| {name} | {k} | {r['weights']:.2f} | {r['grads']:.2f} | {r['adam']:.2f} | {r['sam_buffer']:.2f} "
                  f"| {r['total_adamw']:.2f} | {r['total_sam']:.2f} |")  # fmt: skip
