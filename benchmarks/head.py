"""Why the hf backend keeps torch's full log-softmax at scored positions (a measured negative result).

At each scored position a log-likelihood needs one target's log-softmax and whether it is the
argmax. cfbench (like lm-eval) builds the ``[rows, vocab]`` logits, a float32 ``torch.log_softmax``
of the same size and an argmax: passes over ``rows x vocab`` floats that do not fit in cache. A
fused head (``fused`` below: the head matmul in vocabulary chunks, each reduced while in cache by an
online log-sum-exp, a running first-index argmax and the target's logit) avoids them.

This script times both on the model's own head weight and random hidden states, and compares each
with a float64 log-softmax of the same logits. Finding (docs/scoring.md): the fused head is faster
and *more* exact than float32 ``torch.log_softmax`` (whose CPU sum is off by ~1e-5 per token; the
signed-mean column shows whether that averages out), and for exactly that reason it does not give
lm-eval's numbers: in the backend, over HellaSwag's multi-token endings the differences added up to
2.9e-4, past the 1e-4 parity cfbench keeps with lm-eval. So the backend keeps the full path and the
fused kernel lives only here.

    OMP_NUM_THREADS=1 python benchmarks/head.py --rows 64,180,1000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def full(hidden: Any, weight: Any, rows: Any, targets: Any) -> tuple[Any, Any]:
    """What the hf backend (and lm-eval) compute: logits, float32 log-softmax, argmax."""
    import torch.nn.functional as F

    logprobs = F.linear(hidden, weight).float().log_softmax(dim=-1)
    return logprobs[rows, targets], logprobs.argmax(dim=-1)[rows] == targets


def fused(hidden: Any, weight: Any, rows: Any, targets: Any, chunk: int = 2048) -> tuple[Any, Any]:
    """The same quantities without the ``[rows, vocab]`` matrices (vocabulary chunks reduced in cache)."""
    import torch
    import torch.nn.functional as F

    n = hidden.shape[0]
    run_max = torch.full((n,), -torch.inf)
    run_sum = torch.zeros(n)
    best = torch.full((n,), -torch.inf)
    best_idx = torch.zeros(n, dtype=torch.long)
    target_logit = torch.empty(len(rows))
    for c in range(0, weight.shape[0], chunk):
        logits = F.linear(hidden, weight[c : c + chunk]).float()
        inside = ((targets >= c) & (targets < c + chunk)).nonzero().squeeze(1)
        target_logit[inside] = logits[rows[inside], targets[inside] - c]
        cmax, cidx = logits.max(dim=-1)
        better = cmax > best  # strict: the first index wins ties, as torch.argmax
        best, best_idx = torch.where(better, cmax, best), torch.where(better, cidx + c, best_idx)
        new_max = torch.maximum(run_max, cmax)
        run_sum = run_sum * torch.exp(run_max - new_max) + logits.sub_(new_max[:, None]).exp_().sum(dim=-1)
        run_max = new_max
    return target_logit - (run_max + torch.log(run_sum))[rows], best_idx[rows] == targets


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="any cfbench checkpoint spec (its head weight)")
    ap.add_argument("--rows", default="64,180,1000", help="scored positions per call, comma list")
    ap.add_argument("--chunk", type=int, default=2048, help="vocabulary columns per fused chunk")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from cfbench.models import resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(resolve_checkpoint(args.model).path), dtype=torch.float32)
    weight = model.get_output_embeddings().weight.detach()
    vocab, dim = weight.shape
    print(f"head {vocab} x {dim}, chunk {args.chunk}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    cols = f"{'rows':>6} {'matmul ms':>10} {'full ms':>8} {'fused ms':>9} {'full/fused':>10}"
    print(f"{cols} {'|full-f64|':>10} {'mean(full-f64)':>14} {'|fused-f64|':>11} {'|full-fused|':>12} {'greedy≠':>7}")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for n in (int(r) for r in args.rows.split(",")):
            # Hidden states with the final norm's scale, so logits have the model's range (|x| ~ 20-30).
            hidden = torch.randn(n, dim, generator=g) * model.model.norm.weight.detach()
            rows = torch.arange(n)
            targets = torch.randint(0, vocab, (n,), generator=g)
            exact = F.linear(hidden, weight).double().log_softmax(dim=-1)[rows, targets]
            a, b = full(hidden, weight, rows, targets), fused(hidden, weight, rows, targets, args.chunk)
            mm = best_of(lambda h=hidden: F.linear(h, weight), args.repeats)
            t_full = best_of(lambda h=hidden, r=rows, t=targets: full(h, weight, r, t), args.repeats)
            t_fused = best_of(lambda h=hidden, r=rows, t=targets: fused(h, weight, r, t, args.chunk), args.repeats)
            print(
                f"{n:6d} {1e3 * mm:10.1f} {1e3 * t_full:8.1f} {1e3 * t_fused:9.1f} {t_full / t_fused:9.2f}x"
                f" {(a[0].double() - exact).abs().max().item():10.1e} {(a[0].double() - exact).mean().item():14.1e}"
                f" {(b[0].double() - exact).abs().max().item():11.1e}"
                f" {(a[0] - b[0]).abs().max().item():12.1e} {int((a[1] != b[1]).sum()):7d}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
