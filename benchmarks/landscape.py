"""Cost of the flatness stage on the built-in model: time per grid point vs a plain forward, and Hutchinson.

A grid point of ``cfbench landscape`` is: copy the stored weights back, add α·δ₁ + β·δ₂ in place
(foreach ops), then one held-out forward. This script measures both in one process, interleaved
(point, forward, point, forward, ...), so machine load affects both alike, and reports the median
ratio; then the full grid's wall time and the Hutchinson trace (double-backward HVPs) per probe.

    python benchmarks/landscape.py                    # 11×11 grid, 8 blocks × 64 tokens of LAMBADA
    python benchmarks/landscape.py --grid 5 --blocks 4 --probes 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="smollm2-135m")
    ap.add_argument("--data", default="lambada")
    ap.add_argument("--grid", type=int, default=11)
    ap.add_argument("--span", type=float, default=0.5)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved point/forward pairs for the ratio")
    ap.add_argument("--probes", type=int, default=2, help="Hutchinson probes (0 skips)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.analysis.directions import make_direction
    from cfbench.analysis.heldout import load_heldout
    from cfbench.analysis.landscape import loss_surface, mean_loss, perturbable, set_point, weights_restored
    from cfbench.analysis.sharpness import HVP, hutchinson_trace
    from cfbench.models.checkpoint import resolve_checkpoint

    ck = resolve_checkpoint(args.checkpoint)
    tok = AutoTokenizer.from_pretrained(ck.path)
    model = AutoModelForCausalLM.from_pretrained(ck.path, dtype=torch.float32).eval()
    data = load_heldout(args.data, tok, count=args.blocks, length=args.tokens)
    bs = args.blocks
    named = perturbable(model)
    params = [p for _, p in named]
    d1 = make_direction(named, kind="filter", seed=0, index=0)
    d2 = make_direction(named, kind="filter", seed=0, index=1)

    mean_loss(model, data, batch_size=bs)  # warm-up
    point_s, fwd_s = [], []
    with weights_restored(params) as saved:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            set_point(params, saved, (d1, d2), (0.1, -0.1))
            mean_loss(model, data, batch_size=bs)
            point_s.append(time.perf_counter() - t0)
            set_point(params, saved, (d1, d2), (0.0, 0.0))
            t0 = time.perf_counter()
            mean_loss(model, data, batch_size=bs)
            fwd_s.append(time.perf_counter() - t0)
    ratios = [p / f for p, f in zip(point_s, fwd_s, strict=True)]

    t0 = time.perf_counter()
    surf = loss_surface(model, data, grid=args.grid, span=args.span, batch_size=bs)
    grid_s = time.perf_counter() - t0

    trace = probe_s = None
    if args.probes:
        batches = data.batches(bs)

        def loss_fn() -> torch.Tensor:
            ids = batches[0]
            logits = model(input_ids=ids).logits[:, :-1].float()
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

        hvp = HVP(loss_fn, [p for p in model.parameters() if p.requires_grad], method="auto")
        t0 = time.perf_counter()
        trace = hutchinson_trace(hvp, [p for p in model.parameters() if p.requires_grad], probes=args.probes)
        probe_s = (time.perf_counter() - t0) / args.probes

    out = {
        "checkpoint": args.checkpoint,
        "heldout": f"{args.blocks} blocks × {args.tokens} tokens of {args.data}",
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "forward_s_median": statistics.median(fwd_s),
        "grid_point_s_median": statistics.median(point_s),
        "point_over_forward_median": statistics.median(ratios),
        "grid": f"{args.grid}x{args.grid}",
        "grid_wall_s": grid_s,
        "grid_s_per_point": grid_s / args.grid**2,
        "sc_ag_mag": surf.metrics,
        "hutchinson_trace": trace,
        "hutchinson_s_per_probe": probe_s,
        "hvp_over_forward": (probe_s / statistics.median(fwd_s)) if probe_s else None,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
