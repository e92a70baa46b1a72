"""Check benchmarks/memory_table.py against a measured AdamW and SAM step of the built-in model (1 device).

memory_table.py predicts the per-device training state (fp32 weights + grads + AdamW m, v + SAM's
restore buffer) from a parameter count; it leaves out activations and the process itself. This
measures, for each optimizer in a fresh process (fp32, CPU, ``cfbench.train.finetune.Trainer``, the
code ``cfbench finetune`` runs):

* ``state``: the bytes of every tensor that makes up the training state after the last step, counted
  from the tensors themselves (parameters, ``.grad`` as it stands before ``zero_grad``, optimizer
  state, SAM's ``w_old`` buffers) — what the table predicts;
* ``base``: resident memory after importing torch/transformers/cfbench (CPU: libraries; on a GPU
  this is the CUDA context, not in device memory);
* ``loaded``: resident memory with the model loaded (``base`` + weights + what loading left behind);
* ``peak``: the kernel's resident high-water mark (``VmHWM``, reset after loading) over the warm-up
  step and the measured steps, minus ``base``: state + activations + temporaries + allocator slack.

    OMP_NUM_THREADS=1 python benchmarks/memory_check.py            # smollm2-135m, batch 4, micro-batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_table import GB, MODELS, row

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise SystemExit(f"/proc/self/status has no {field}: this check needs Linux")
    return int(match.group(1)) * 1024


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One optimizer, fresh process: base RSS, state bytes counted from tensors, peak RSS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.train.data import collate, encode_example, load_data, micro_batches
    from cfbench.train.finetune import Trainer

    base = _kb("VmRSS")
    path = resolve_checkpoint(args.model).path
    tok = AutoTokenizer.from_pretrained(path)
    encoded = [encode_example(tok, e, args.max_length) for e in load_data(args.data).examples[: args.batch_size]]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [collate(mb, int(pad)) for mb in micro_batches(encoded, args.micro_batch)]
    n_target = sum(e.n_target for e in encoded)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    trainer = Trainer(model, args.method, lr=1e-6, rho=2.0)
    loaded = _kb("VmRSS")
    try:  # start the high-water mark here: the peak is training's, not loading's (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    n_params = sum(p.numel() for p in trainer.params)
    seen: dict[str, int] = {}
    opt = trainer.optimizer
    zero = opt.zero_grad

    def counting_zero_grad(set_to_none: bool = True) -> None:  # the last moment grads and states coexist
        grads = sum(p.grad.numel() * p.grad.element_size() for p in trainer.params if p.grad is not None)
        seen["grads"] = max(seen.get("grads", 0), grads)
        zero(set_to_none=set_to_none)

    opt.zero_grad = counting_zero_grad  # type: ignore[method-assign]
    for _ in range(1 + args.steps):
        trainer.step(batches, n_target)
    states = {"adam": 0, "sam_buffer": 0}
    for p in trainer.params:
        for key, t in {**trainer.base_optimizer.state.get(p, {}), **opt.state.get(p, {})}.items():
            if torch.is_tensor(t) and t.numel() > 1:
                states["sam_buffer" if key == "w_old" else "adam"] += t.numel() * t.element_size()
    return {
        "method": args.method,
        "n_params": n_params,
        "weights": sum(p.numel() * p.element_size() for p in trainer.params),
        "grads": seen.get("grads", 0),
        **states,
        "base_rss": base,
        "loaded_rss": loaded,
        "peak_rss": _kb("VmHWM"),
        "peak_reset": reset,
        "tokens_per_step": sum(int(b["attention_mask"].sum()) for b in batches),
        "padded_tokens_per_step": sum(int(b["input_ids"].numel()) for b in batches),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="builtin:arithmetic")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=1, help="Measured steps after one warm-up step.")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=["adamw", "sam"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(argparse.Namespace(**{**vars(args), "method": args.worker}))))
        return
    runs = {}
    for method in ("adamw", "sam"):  # one at a time: each process has its own high-water mark
        cmd = [sys.executable, __file__, "--worker", method, "--model", args.model, "--data", args.data,
               "--batch-size", str(args.batch_size), "--micro-batch", str(args.micro_batch),
               "--max-length", str(args.max_length), "--steps", str(args.steps)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{method} worker failed (exit {proc.returncode})")
        runs[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    table_n = MODELS.get(args.model, runs["adamw"]["n_params"])
    pred = row(table_n, 1)
    gib = lambda b: b / GB  # noqa: E731
    print(f"model {args.model}: {runs['adamw']['n_params'] / 1e6:.1f}M trainable parameters (table: "
          f"{table_n / 1e6:.1f}M); batch {args.batch_size}, micro-batch {args.micro_batch}, "
          f"{runs['adamw']['tokens_per_step']} tokens/step ({runs['adamw']['padded_tokens_per_step']} padded), "
          f"fp32, CPU, {runs['adamw']['threads']} thread(s)\n")  # fmt: skip
    print("| optimizer | predicted state (table) | measured state (tensors) | weights / grads / AdamW m+v / SAM buffer "
          "| base process RSS | loaded − base | peak RSS − base | peak − base − state |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for method, r in runs.items():
        state = r["weights"] + r["grads"] + r["adam"] + r["sam_buffer"]
        predicted = pred["total_sam" if method == "sam" else "total_adamw"]
        above = r["peak_rss"] - r["base_rss"]
        print(f"| {method} | {predicted:.3f} | {gib(state):.3f} | {gib(r['weights']):.3f} / {gib(r['grads']):.3f} / "
              f"{gib(r['adam']):.3f} / {gib(r['sam_buffer']):.3f} | {gib(r['base_rss']):.3f} | "
              f"{gib(r['loaded_rss'] - r['base_rss']):.3f} | {gib(above):.3f} | "
              f"{gib(above - state):.3f} |")  # fmt: skip
    print("\nGiB (2^30 bytes). peak RSS − base = state + activations + temporaries (+ allocator slack).")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs,
                                         "predicted": pred}, indent=2, default=str) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
