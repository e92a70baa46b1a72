"""Cheaper SAM variants against exact SAM: forgetting (drift signals) and in-domain gain, through ``pair``.

For each method (exact SAM and the variants of :mod:`cfbench.train.sam`) this runs ``cfbench pair``
on the same base, data and seed: one AdamW run with twice the steps (shared by every pair: its
folder is hard-linked into each pair, and ``pair`` reuses it because its request fingerprint is the
same) and one SAM run with that method's options. Then:

* **Forgetting**: ``cfbench compare`` of the base against every tuned checkpoint on ``--tasks``
  (``--limit`` documents each): the paired accuracy Δ (AVG) and the continuous drift signals
  KL(base‖tuned), JS and gold_margin of the overall scope (docs/metrics.md), each with its bootstrap CI.
* **In-domain gain**: mean target-token NLL on the first ``--heldout-n`` examples of the held-out
  split (``builtin:arithmetic-heldout``: prompts disjoint from the training split), base minus tuned
  (positive = learned).
* **Cost**: counted forward+backward passes and measured wall time of the SAM run over the AdamW run
  (``pair.json`` → ``cost_ratio``); the time ratio here comes from runs on a shared machine.

    python benchmarks/sam_variants.py --steps 8 --limit 40 --json results/sam_variants.json

The table is small-sample on purpose (a short run on a 2-core machine); read the CIs, not the digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sam import variant  # the method names of benchmarks/sam.py

DRIFT = ("kl", "js", "gold_margin")


def heldout_nll(checkpoint: Path | str, data: str, n: int, max_length: int, micro_batch: int) -> tuple[float, int]:
    """Mean target-token NLL (nats/token) of ``checkpoint`` on the first ``n`` examples of ``data``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.train.data import collate, encode_example, load_data, micro_batches
    from cfbench.train.finetune import token_loss_sum

    path = resolve_checkpoint(str(checkpoint)).path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    encoded = [e for e in (encode_example(tok, ex, max_length) for ex in load_data(data).examples[:n]) if e.n_target]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total, tokens = 0.0, 0
    with torch.no_grad():
        for mb in micro_batches(encoded, micro_batch):
            batch = collate(mb, int(pad))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total += float(token_loss_sum(logits, batch["labels"]))
            tokens += sum(e.n_target for e in mb)
    return total / tokens, tokens


def _link_adamw(src: Path, dst: Path) -> None:
    """Hard-link the finished AdamW run into another pair folder (``pair`` then reuses it)."""
    if (dst / "cfbench_manifest.json").is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=os.link)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="builtin:arithmetic")
    p.add_argument("--heldout", default="builtin:arithmetic-heldout")
    p.add_argument("--heldout-n", type=int, default=64)
    p.add_argument("--variants", default="sam,sam-every3,sam-only-norm,sam-bf16", help="Methods of benchmarks/sam.py.")
    p.add_argument("--steps", type=int, default=8, help="SAM steps per pair (AdamW gets twice as many).")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--rho", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default="arc_challenge,copa,rte,siqa")
    p.add_argument("--limit", type=int, default=40, help="Documents per task for compare.")
    p.add_argument("--out", type=Path, default=Path("results/sam_variants"), help="Pairs and the results store.")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from cfbench.comparison import compare

    hf_logging.disable_progress_bar()
    from cfbench.train.pair import pair

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads())
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not names or names[0] != "sam":
        names = ["sam", *[n for n in names if n != "sam"]]  # exact SAM first: its AdamW run is shared
    t0 = time.time()
    load_before = os.getloadavg()
    common = {
        "rho": args.rho, "lr": args.lr, "batch_size": args.batch_size, "micro_batch": args.micro_batch,
        "max_length": args.max_length, "seed": args.seed, "max_steps": args.steps, "warmup": 0.0,
        "lr_schedule": "constant", "progress": False,
        # The held-out examples are the separate builtin:arithmetic-heldout split (below), so finetune's
        # own split of --data (docs/indomain.md) is off: every pair trains on the whole training split.
        "heldout": 0,
    }  # fmt: skip
    pairs: dict[str, Any] = {}
    for name in names:
        optimizer, opts = variant(name)
        if optimizer != "sam":
            raise SystemExit(f"error: {name!r} is not a SAM method")
        if name != "sam":
            _link_adamw(args.out / "sam" / "wo_sam", args.out / name / "wo_sam")
        res = pair(args.model, args.data, args.out / name, **common, **opts)
        cost = json.loads((res.path / "pair.json").read_text())["cost_ratio"]
        pairs[name] = {"result": res, "cost": cost}
        print(
            f"[{time.time() - t0:6.0f}s] pair {name}: SAM {res.w_sam.manifest['sam_steps']}/{res.w_sam.steps} steps, "
            f"cost {cost['forward_backward_passes']:.3f} passes / {cost['wall_time']:.3f} training time vs AdamW",
            flush=True,
        )
    adamw = pairs["sam"]["result"].wo_sam

    nll = {"base": heldout_nll(args.model, args.heldout, args.heldout_n, args.max_length, args.micro_batch)[0]}
    nll["adamw"] = heldout_nll(adamw.path, args.heldout, args.heldout_n, args.max_length, args.micro_batch)[0]
    for name, entry in pairs.items():
        nll[name] = heldout_nll(entry["result"].w_sam.path, args.heldout, args.heldout_n, args.max_length,
                                args.micro_batch)[0]  # fmt: skip
    print(f"[{time.time() - t0:6.0f}s] held-out NLL done", flush=True)

    labels = ["base", "adamw", *pairs]
    tuned = [f"ckpt:{adamw.path}", *[f"ckpt:{e['result'].w_sam.path}" for e in pairs.values()]]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    res = compare(
        f"ckpt:{args.model}", tuned, suite="offline", results=args.out / "store", labels=labels,
        eval_kwargs={"tasks": tasks, "limit": args.limit, "progress": "off"},
    )  # fmt: skip
    print(f"[{time.time() - t0:6.0f}s] compare done", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    for label in labels[1:]:
        sigs = {s.name: s for s in res.report.signals.get(label, []) if s.scope == "all"}
        avg = res.report.vs_base(label).avg
        entry = pairs.get(label)
        w = entry["result"].w_sam.manifest if entry else adamw.manifest
        rows[label] = {
            "steps": w["steps"],
            "sam_steps": w.get("sam_steps", 0),
            "forward_backward_passes": w["forward_backward_passes"],
            "cost_passes": entry["cost"]["forward_backward_passes"] if entry else 1.0,
            "cost_wall": entry["cost"]["wall_time"] if entry else 1.0,
            "heldout_nll": nll[label],
            "heldout_gain": nll["base"] - nll[label],
            "acc_delta": avg.delta,
            "acc_ci": list(avg.ci) if avg.ci else None,
            **{k: sigs[k].value if k in sigs else None for k in DRIFT},
            **{f"{k}_ci": list(sigs[k].ci) if k in sigs and sigs[k].ci else None for k in DRIFT},
            **{f"{k}_n": sigs[k].n if k in sigs else None for k in DRIFT},
        }
    load_after = os.getloadavg()

    def f(x: float | None, d: int = 4) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    def ci(x: list[float] | None, d: int = 4) -> str:
        return "" if not x else f" [{x[0]:.{d}f}, {x[1]:.{d}f}]"

    def pts(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.1f}"

    def pct(x: list[float] | None) -> list[float] | None:
        return None if not x else [100 * v for v in x]

    n_items = next((r["kl_n"] for r in rows.values() if r["kl_n"]), None)
    print(
        f"\n{args.model} on {args.data}: {args.steps} SAM steps (AdamW {2 * args.steps}), lr {args.lr:g} constant, "
        f"ρ {args.rho:g}, batch {args.batch_size}, max_length {args.max_length}, seed {args.seed}; compare on "
        f"{','.join(tasks)} (--limit {args.limit}, {n_items} paired items); held-out NLL on {args.heldout_n} "
        f"examples of {args.heldout} (base {nll['base']:.4f}); load average {load_before[0]:.1f} → {load_after[0]:.1f}"
    )
    head = (
        "| method | SAM/all steps | passes × AdamW | train time × AdamW | held-out NLL gain (nats/token) "
        "| acc Δ AVG (pts) | KL (nats) | JS (nats) | gold_margin (Δ nats) |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for label, r in rows.items():
        print(
            f"| {label} | {r['sam_steps']}/{r['steps']} | {f(r['cost_passes'], 3)} | {f(r['cost_wall'], 3)} | "
            f"{f(r['heldout_gain'])} | {pts(r['acc_delta'])}{ci(pct(r['acc_ci']), 1)} | {f(r['kl'])}{ci(r['kl_ci'])} | "
            f"{f(r['js'])}{ci(r['js_ci'])} | {f(r['gold_margin'])}{ci(r['gold_margin_ci'])} |"
        )
    for note in res.notes:
        print(f"note: {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "heldout_nll_base": nll["base"], "rows": rows, "notes": res.notes,
            "loadavg_before": load_before, "loadavg_after": load_after, "wall_s": time.time() - t0,
        }  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
