"""Restore error of SAM's low-precision backup (``backup_dtype``) on a real model's weights and gradient.

Loads the model in float32, takes the gradient of one batch of ``--data``, then for each backup
dtype runs ``SAM.first_step`` + ``SAM.restore`` and compares the restored weights with the originals:
max |Δw|, max |Δw| in float32 ulps of w, the fraction of elements not restored bit for bit, the
documented bound ``u·(2|w| + |ε'|)·(1+u)`` (u = 2⁻²⁴; must hold everywhere), and how far the stored
perturbation ε' is from the exact ε (relative L2, i.e. the radius error).

    python benchmarks/sam_restore_error.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="builtin:arithmetic")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--rho", type=float, default=2.0)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.train.data import collate, encode_example, load_data
    from cfbench.train.finetune import token_loss_sum
    from cfbench.train.sam import SAM, norm_parameters

    path = resolve_checkpoint(args.model).path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    enc = [
        e for e in (encode_example(tok, ex, args.max_length) for ex in load_data(args.data).examples[:64]) if e.n_target
    ]
    batch = collate(enc[: args.batch_size], int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    (token_loss_sum(logits, batch["labels"]) / sum(e.n_target for e in enc[: args.batch_size])).backward()
    grads = [p.grad.detach().clone() for p in params]
    gnorm = torch.stack([g.double().norm() for g in grads]).norm()
    u = 2.0**-24
    n = sum(w.numel() for w in before)
    print(f"{args.model}: {n / 1e6:.1f}M float32 weights, ρ = {args.rho:g}, ‖g‖ = {gnorm:.4g}")
    norms = norm_parameters(model)
    print(
        f"norm parameters (SAM-ON's set): {len(norms)} tensors, {sum(t.numel() for t in norms)} values "
        f"({100 * sum(t.numel() for t in norms) / n:.3f} % of the weights)"
    )
    print("backup     buffer MiB   max|Δw|     max ulps   not bitwise   bound holds   ‖ε'−ε‖/‖ε‖")
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for p, w, g in zip(params, before, grads, strict=True):
            p.data.copy_(w)
            p.grad = g.clone()
        opt = SAM(params, torch.optim.SGD, rho=args.rho, lr=0.0, backup_dtype=dtype)
        opt.first_step(zero_grad=True)
        key = "w_old" if dtype is None else "eps_low"
        bufs = [opt.state[p][key] for p in params]
        buf_mib = sum(b.numel() * b.element_size() for b in bufs) / 2**20
        opt.restore()
        max_abs = max_ulps = 0.0
        changed = total = 0
        holds = True
        err_sq = eps_sq = 0.0
        for p, w, g, b in zip(params, before, grads, bufs, strict=True):
            d = (p.detach().double() - w.double()).abs()
            max_abs = max(max_abs, float(d.max()))
            ulp = torch.nextafter(w.abs(), torch.tensor(float("inf"))) - w.abs()
            max_ulps = max(max_ulps, float((d / ulp.double()).max()))
            changed += int((p.detach() != w).sum())
            total += w.numel()
            if dtype is not None:
                holds &= bool((d <= u * (2 * w.double().abs() + b.double().abs()) * (1 + u)).all())
                eps = args.rho * g.double() / float(gnorm)
                err_sq += float((b.double() - eps).square().sum())
                eps_sq += float(eps.square().sum())
        rel = (err_sq / eps_sq) ** 0.5 if eps_sq else 0.0
        print(
            f"{name:10s} {buf_mib:10.1f}   {max_abs:.3e}   {max_ulps:8.2f}   {changed / total:11.2e}   "
            + (f"{'yes' if holds else 'NO':>11s}   {rel:.2e}" if dtype is not None else f"{'(a copy)':>11s}   -")
        )


if __name__ == "__main__":
    main()
