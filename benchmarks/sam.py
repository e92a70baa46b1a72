"""SAM vs AdamW: time per optimizer step and peak memory, same model, batch and data.

Goals from the brief: a SAM step (two forward+backward passes) costs ≤ 2.05× an AdamW step, and
peak memory is ≤ 1.1× AdamW's. Both sides run cfbench's own training step
(:class:`cfbench.train.finetune.Trainer`: micro-batch accumulation, token-weighted loss, fused
AdamW, the same NaN checks), so the ratio is that of ``cfbench finetune --optimizer sam|adamw``.

How it is measured, and why:

* Every measurement is a fresh process (``--worker``), so each has its own memory high-water mark;
  processes alternate AdamW, SAM, SAM, AdamW, ... (``--repeats`` each) because on a small shared
  CPU the speed of a run depends on what else runs. Min and median over all timed steps are
  reported; the ratios of both are given.
* Memory: ``tracemalloc`` does not see torch's CPU allocations, so the worker reads the kernel's
  resident-set high-water mark (``VmHWM``). After loading the model and building the batch it
  resets the mark (``/proc/self/clear_refs`` = 5), then runs warm-up and timed steps, so the peak
  covers optimizer-state allocation, activations, gradients and SAM's buffer. Reported: the peak
  RSS of the process (what ``ulimit``/OOM see) and the peak above the post-load baseline (the
  training working set). SAM's extra memory by design is one weight-sized buffer (the unperturbed
  weights), printed next to the measurement.
* Each worker does ``--warmup-steps`` untimed steps first (optimizer state, SAM buffer and
  allocator pages are created there), then ``--steps`` timed ones on the same batch.
* Cheaper SAM variants (``--variants``, see :mod:`cfbench.train.sam`): ``sam-everyK`` (a SAM step
  every K steps, plain AdamW in between), ``looksamK`` (LookSAM: SAM every K steps, the in-between
  steps add the last SAM gradient's orthogonal part, α 0.7; ``looksamK-aA`` for α = A),
  ``sam-only-norm`` (SAM-ON), ``sam-bf16`` (ε kept in bf16
  instead of a float32 weight copy). Each is timed in its own process against AdamW, steps
  alternating as above (the timed steps are rounded up to whole K-cycles); its time ratio is the
  ratio of *mean* step times (a K-cycle has one two-pass step and K-1 one-pass steps, so medians
  would hide the SAM step). Memory: one fresh process per variant, like AdamW and SAM.

    python benchmarks/sam.py --mem-repeats 1 --json results/sam_bench.json
    python benchmarks/sam.py --variants sam,sam-every3,sam-only-norm,sam-bf16 --steps 3 \
        --json results/sam_variants_bench.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")
    return int(match.group(1))


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False when the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def variant(name: str) -> tuple[str, dict[str, Any]]:
    """``(optimizer, Trainer keyword arguments)`` of a method name: adamw, sam, sam-everyK, looksamK (LookSAM
    every K steps, α = 0.7 as Liu et al. 2022; looksamK-aA for another α), sam-only-norm, sam-bf16."""
    if name in ("adamw", "sam"):
        return name, {}
    if name == "sam-only-norm":
        return "sam", {"sam_only_norm": True}
    if name in ("sam-bf16", "sam-fp16"):
        return "sam", {"sam_backup_dtype": name.split("-")[1]}
    match = re.fullmatch(r"sam-every(\d+)", name)
    if match and int(match.group(1)) >= 1:
        return "sam", {"sam_every": int(match.group(1))}
    match = re.fullmatch(r"looksam(\d+)(?:-a([0-9.]+))?", name)
    if match and int(match.group(1)) >= 2:
        return "sam", {"sam_every": int(match.group(1)), "sam_look_alpha": float(match.group(2) or 0.7)}
    raise SystemExit(
        f"error: unknown method {name!r}: use adamw, sam, sam-everyK, looksamK[-aALPHA], sam-only-norm, "
        "sam-bf16, sam-fp16"
    )


def _cycle(name: str) -> int:
    return int(variant(name)[1].get("sam_every", 1))


def _setup(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]], int, dict[str, int]]:
    """Model and one fixed global batch (as micro-batches) built from ``args.data``."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.train.data import collate, encode_example, load_data, micro_batches

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    examples = list(load_data(args.data).examples)
    random.Random(0).shuffle(examples)
    encoded = [e for e in (encode_example(tokenizer, ex, args.max_length) for ex in examples) if e.n_target]
    encoded = encoded[: args.batch_size]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = [collate(mb, int(pad)) for mb in micro_batches(encoded, args.micro_batch)]
    n_target = sum(e.n_target for e in encoded)
    sizes = {
        "tokens_per_step": sum(int(b["attention_mask"].sum()) for b in batches),
        "padded_tokens_per_step": sum(int(b["input_ids"].numel()) for b in batches),
        "micro_batches": len(batches),
        "threads": torch.get_num_threads(),
    }
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    return model, batches, n_target, sizes


def time_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Both methods in one process on identical model copies, steps alternating A S / S A."""
    import copy

    from cfbench.train.finetune import Trainer

    model, batches, n_target, sizes = _setup(args)
    trainers = {
        "adamw": Trainer(model, "adamw", lr=args.lr, bf16=args.bf16),
        "sam": Trainer(copy.deepcopy(model), "sam", lr=args.lr, rho=args.rho, bf16=args.bf16),
    }
    # SAM's own work (norm, copy, perturb, restore) timed separately from the passes.
    sam_opt = trainers["sam"].optimizer
    own = {"first_step": 0.0, "restore": 0.0}
    for name in own:
        real = getattr(sam_opt, name)

        def timed(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                own[_name] += time.perf_counter() - t0

        setattr(sam_opt, name, timed)
    for trainer in trainers.values():
        for _ in range(args.warmup_steps):
            trainer.step(batches, n_target)
    out: dict[str, Any] = {m: {"wall_s": [], "cpu_s": [], "losses": []} for m in trainers}
    own = {k: 0.0 for k in own}
    for i in range(args.steps):
        for method in ("adamw", "sam") if i % 2 == 0 else ("sam", "adamw"):
            w0, c0 = time.perf_counter(), time.process_time()
            stats = trainers[method].step(batches, n_target)
            out[method]["wall_s"].append(time.perf_counter() - w0)
            out[method]["cpu_s"].append(time.process_time() - c0)
            out[method]["losses"].append(stats["loss"])
    out["sam_own_s_per_step"] = {k: v / args.steps for k, v in own.items()}
    return {**out, **sizes}


def variant_time_worker(args: argparse.Namespace) -> dict[str, Any]:
    """AdamW and one variant (``args.method``) in one process, steps alternating A V / V A."""
    import copy

    from cfbench.train.finetune import Trainer

    model, batches, n_target, sizes = _setup(args)
    optimizer, kwargs = variant(args.method)
    trainers = {
        "adamw": Trainer(model, "adamw", lr=args.lr, bf16=args.bf16),
        args.method: Trainer(copy.deepcopy(model), optimizer, lr=args.lr, rho=args.rho, bf16=args.bf16, **kwargs),
    }
    k = _cycle(args.method)
    warm = -(-args.warmup_steps // k) * k  # whole cycles: the timed steps start at a SAM step
    for trainer in trainers.values():
        for _ in range(warm):
            trainer.step(batches, n_target)
    out: dict[str, Any] = {m: {"wall_s": [], "cpu_s": []} for m in trainers}
    steps = -(-args.steps // k) * k
    for i in range(steps):
        for method in ("adamw", args.method) if i % 2 == 0 else (args.method, "adamw"):
            w0, c0 = time.perf_counter(), time.process_time()
            trainers[method].step(batches, n_target)
            out[method]["wall_s"].append(time.perf_counter() - w0)
            out[method]["cpu_s"].append(time.process_time() - c0)
    return {**out, **sizes}


def mem_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One method in a fresh process: peak RSS over warm-up + ``args.steps`` steps."""
    from cfbench.train.finetune import Trainer

    model, batches, n_target, sizes = _setup(args)
    optimizer, kwargs = variant(args.method)
    trainer = Trainer(model, optimizer, lr=args.lr, rho=args.rho, bf16=args.bf16, **kwargs)
    param_bytes = sum(p.numel() * p.element_size() for p in trainer.params)
    gc.collect()
    baseline_kb = _status_kb("VmRSS")
    reset_ok = _reset_peak()
    k = _cycle(args.method)
    for _ in range(max(args.warmup_steps + args.steps, k + 1)):  # at least one SAM step after a plain one
        trainer.step(batches, n_target)
    return {
        "method": args.method,
        "peak_rss_bytes": _status_kb("VmHWM") * 1024,
        "baseline_rss_bytes": baseline_kb * 1024,
        "peak_reset": reset_ok,
        "param_bytes": param_bytes,
        **sizes,
    }


def _spawn(kind: str, model_path: str, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    worker = ["--worker", "variant-time", "--method", kind.removeprefix("time:")] if kind.startswith("time:") else [
        "--worker", kind]  # fmt: skip
    cmd = [
        sys.executable, __file__, *worker, "--model-path", model_path, "--data", args.data,
        "--batch-size", str(args.batch_size), "--micro-batch", str(args.micro_batch),
        "--max-length", str(args.max_length), "--steps", str(steps), "--warmup-steps", str(args.warmup_steps),
        "--rho", str(args.rho), "--lr", str(args.lr), "--threads", str(args.threads or 0),
    ] + (["--bf16"] if args.bf16 else [])  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {kind} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs)}


def _report_memory_only(args: argparse.Namespace, mem: dict[str, list[dict[str, Any]]], wall: float) -> None:
    gib = 2**30
    first = mem["adamw"][0]
    peaks = {m: statistics.median(r["peak_rss_bytes"] for r in rs) for m, rs in mem.items()}
    above = {m: statistics.median(r["peak_rss_bytes"] - r["baseline_rss_bytes"] for r in rs) for m, rs in mem.items()}
    result = {
        "model": args.model, "data": args.data, "batch_size": args.batch_size, "micro_batch": args.micro_batch,
        "max_length": args.max_length, "tokens_per_step": first["tokens_per_step"],
        "padded_tokens_per_step": first["padded_tokens_per_step"], "param_bytes": first["param_bytes"],
        "memory": mem, "peak_rss_ratio": peaks["sam"] / peaks["adamw"],
        "peak_above_model_ratio": above["sam"] / above["adamw"], "sam_extra_peak_bytes": peaks["sam"] - peaks["adamw"],
        "wall_s": wall,
    }  # fmt: skip
    print(
        f"\nmemory only: batch {args.batch_size} (micro-batch {args.micro_batch}), {first['tokens_per_step']} "
        f"tokens/step; peak RSS AdamW {peaks['adamw'] / gib:.3f} GiB, SAM {peaks['sam'] / gib:.3f} GiB, "
        f"ratio {result['peak_rss_ratio']:.3f} (above model: {result['peak_above_model_ratio']:.3f}); "
        f"SAM extra {result['sam_extra_peak_bytes'] / gib:.3f} GiB vs one weight-sized buffer "
        f"{first['param_bytes'] / gib:.3f} GiB"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def _run_variants(args: argparse.Namespace, names: list[str]) -> None:
    """Each variant vs AdamW: time (own process, alternating steps) and peak memory (fresh processes)."""
    from cfbench.models.checkpoint import resolve_checkpoint

    model_path = str(resolve_checkpoint(args.model).path)
    t0 = time.time()
    load = os.getloadavg()
    methods = ["adamw", *[n for n in names if n != "adamw"]]
    mem: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in range(args.mem_repeats):
        for method in methods if r % 2 == 0 else methods[::-1]:
            res = _spawn(method, model_path, args, steps=1)
            mem[method].append(res)
            print(f"[{time.time() - t0:6.0f}s] memory {method}: peak RSS {res['peak_rss_bytes'] / 2**30:.3f} GiB",
                  flush=True)  # fmt: skip
    timing: dict[str, dict[str, Any]] = {}
    for name in methods[1:]:
        timing[name] = _spawn(f"time:{name}", model_path, args, steps=args.steps)
        print(f"[{time.time() - t0:6.0f}s] timing {name} done", flush=True)

    def peak(method: str, above: bool) -> float:
        return statistics.median(r["peak_rss_bytes"] - (r["baseline_rss_bytes"] if above else 0) for r in mem[method])

    rows = {}
    for name in methods[1:]:
        t = timing[name]
        mean = {m: {k: statistics.fmean(t[m][k]) for k in ("wall_s", "cpu_s")} for m in ("adamw", name)}
        rows[name] = {
            "timed_steps": len(t[name]["wall_s"]),
            "adamw_mean_wall_s": mean["adamw"]["wall_s"],
            "mean_wall_s": mean[name]["wall_s"],
            "time_ratio_wall_mean": mean[name]["wall_s"] / mean["adamw"]["wall_s"],
            "time_ratio_cpu_mean": mean[name]["cpu_s"] / mean["adamw"]["cpu_s"],
            "peak_rss_ratio": peak(name, False) / peak("adamw", False),
            "peak_above_model_ratio": peak(name, True) / peak("adamw", True),
            "extra_peak_bytes": peak(name, False) - peak("adamw", False),
        }
    load_after = os.getloadavg()
    first = mem["adamw"][0]
    result = {
        "model": args.model, "data": args.data, "batch_size": args.batch_size, "micro_batch": args.micro_batch,
        "max_length": args.max_length, "tokens_per_step": first["tokens_per_step"], "threads": first["threads"],
        "param_bytes": first["param_bytes"], "rho": args.rho, "bf16": args.bf16,
        "loadavg_before": load, "loadavg_after": load_after, "variants": rows, "memory": mem, "timing": timing,
        "wall_s": time.time() - t0,
    }  # fmt: skip
    gib = 2**30
    print(
        f"\nmodel {args.model}, {args.data}: batch {args.batch_size} (micro-batch {args.micro_batch}), "
        f"{first['tokens_per_step']} tokens/step, {first['threads']} threads; load average "
        f"{load[0]:.1f} before, {load_after[0]:.1f} after (1-min)"
    )
    print(f"{'method':16s}{'steps':>6s}{'wall/step':>10s}{'AdamW':>8s}{'time×':>7s}{'CPU×':>7s}"
          f"{'peak RSS×':>10s}{'above model×':>13s}{'extra GiB':>10s}")  # fmt: skip
    for name, row in rows.items():
        print(
            f"{name:16s}{row['timed_steps']:6d}{row['mean_wall_s']:10.2f}{row['adamw_mean_wall_s']:8.2f}"
            f"{row['time_ratio_wall_mean']:7.3f}{row['time_ratio_cpu_mean']:7.3f}{row['peak_rss_ratio']:10.3f}"
            f"{row['peak_above_model_ratio']:13.3f}{row['extra_peak_bytes'] / gib:10.3f}"
        )
    print(f"one float32 weight copy = {first['param_bytes'] / gib:.3f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="Checkpoint spec (resolved by cfbench).")
    p.add_argument("--data", default="builtin:arithmetic")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="Timed steps per method (interleaved, one process).")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--mem-repeats", type=int, default=1, help="Memory processes per method (interleaved).")
    p.add_argument("--no-timing", action="store_true", help="Only the memory processes (e.g. for a bigger batch).")
    p.add_argument("--rho", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    p.add_argument("--json", type=Path, default=None, help="Write the full results here.")
    p.add_argument(
        "--variants", default="",
        help="Comma-separated cheaper-SAM variants to measure against AdamW instead of exact SAM "
        "(sam-everyK, sam-only-norm, sam-bf16, sam-fp16; 'sam' adds exact SAM to the same table).",
    )  # fmt: skip
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker == "time":
        print(json.dumps(time_worker(args)))
        return
    if args.worker == "variant-time":
        print(json.dumps(variant_time_worker(args)))
        return
    if args.worker:
        print(json.dumps(mem_worker(argparse.Namespace(**{**vars(args), "method": args.worker}))))
        return
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        for name in names:
            variant(name)  # unknown names fail before any process starts
        _run_variants(args, names)
        return

    from cfbench.models.checkpoint import resolve_checkpoint

    model_path = str(resolve_checkpoint(args.model).path)
    t0 = time.time()
    mem: dict[str, list[dict[str, Any]]] = {"adamw": [], "sam": []}
    for r in range(args.mem_repeats):
        for method in ("adamw", "sam") if r % 2 == 0 else ("sam", "adamw"):
            res = _spawn(method, model_path, args, steps=1)
            mem[method].append(res)
            print(
                f"[{time.time() - t0:6.0f}s] memory {method:5s}: peak RSS {res['peak_rss_bytes'] / 2**30:.3f} GiB, "
                f"{(res['peak_rss_bytes'] - res['baseline_rss_bytes']) / 2**30:.3f} GiB above the loaded model",
                flush=True,
            )
    if args.no_timing:
        _report_memory_only(args, mem, time.time() - t0)
        return
    timing = _spawn("time", model_path, args, steps=args.steps)
    print(f"[{time.time() - t0:6.0f}s] timing done", flush=True)

    def peak(method: str, above: bool) -> float:
        if not mem[method]:
            return math.nan
        return statistics.median(r["peak_rss_bytes"] - (r["baseline_rss_bytes"] if above else 0) for r in mem[method])

    t = {m: {k: _stats(timing[m][k]) for k in ("wall_s", "cpu_s")} for m in ("adamw", "sam")}
    param_bytes = mem["adamw"][0]["param_bytes"] if mem["adamw"] else math.nan
    result = {
        "model": args.model,
        "data": args.data,
        "batch_size": args.batch_size,
        "micro_batch": args.micro_batch,
        "max_length": args.max_length,
        "tokens_per_step": timing["tokens_per_step"],
        "padded_tokens_per_step": timing["padded_tokens_per_step"],
        "threads": timing["threads"],
        "bf16": args.bf16,
        "rho": args.rho,
        "param_bytes": param_bytes,
        "peak_reset": all(r["peak_reset"] for rs in mem.values() for r in rs),
        "timing": {m: {**timing[m], "stats": t[m]} for m in ("adamw", "sam")},
        "sam_own_s_per_step": timing["sam_own_s_per_step"],
        "time_ratio_wall_min": t["sam"]["wall_s"]["min"] / t["adamw"]["wall_s"]["min"],
        "time_ratio_wall_median": t["sam"]["wall_s"]["median"] / t["adamw"]["wall_s"]["median"],
        "time_ratio_cpu_min": t["sam"]["cpu_s"]["min"] / t["adamw"]["cpu_s"]["min"],
        "time_ratio_cpu_median": t["sam"]["cpu_s"]["median"] / t["adamw"]["cpu_s"]["median"],
        # Step i of each method ran back to back, so their ratio cancels slow drifts in machine load.
        "time_ratio_wall_paired_median": statistics.median(
            b / a for a, b in zip(timing["adamw"]["wall_s"], timing["sam"]["wall_s"], strict=True)
        ),
        "time_ratio_cpu_paired_median": statistics.median(
            b / a for a, b in zip(timing["adamw"]["cpu_s"], timing["sam"]["cpu_s"], strict=True)
        ),
        "memory": mem,
        "peak_rss_ratio": peak("sam", False) / peak("adamw", False),
        "peak_above_model_ratio": peak("sam", True) / peak("adamw", True),
        "sam_extra_peak_bytes": peak("sam", False) - peak("adamw", False),
        "wall_s": time.time() - t0,
    }
    gib = 2**30
    print(
        f"\nmodel {args.model}, {args.data}: batch {args.batch_size} (micro-batch {args.micro_batch}), "
        f"{result['tokens_per_step']} tokens/step ({result['padded_tokens_per_step']} padded), "
        f"{result['threads']} threads; {args.steps} interleaved timed steps per method"
    )
    print(f"{'':26s}{'AdamW':>10s}{'SAM':>10s}{'ratio':>8s}")
    for label, key, stat in (
        ("step wall time min (s)", "wall_s", "min"),
        ("step wall time median (s)", "wall_s", "median"),
        ("step CPU time min (s)", "cpu_s", "min"),
        ("step CPU time median (s)", "cpu_s", "median"),
    ):
        a, b = t["adamw"][key][stat], t["sam"][key][stat]
        print(f"{label:26s}{a:10.2f}{b:10.2f}{b / a:8.3f}")
    print(
        f"{'paired step ratio median':26s}{'':20s}{result['time_ratio_wall_paired_median']:8.3f} wall, "
        f"{result['time_ratio_cpu_paired_median']:.3f} CPU"
    )
    for label, above in (("peak RSS (GiB)", False), ("peak above model (GiB)", True)):
        a, b = peak("adamw", above), peak("sam", above)
        print(f"{label:26s}{a / gib:10.3f}{b / gib:10.3f}{b / a:8.3f}")
    own = result["sam_own_s_per_step"]
    print(
        f"SAM's own work per step: first_step {own['first_step']:.3f}s + restore {own['restore']:.3f}s "
        f"(median SAM step {t['sam']['wall_s']['median']:.2f}s)"
    )
    print(
        f"SAM's designed extra memory: one weight-sized buffer = {result['param_bytes'] / gib:.3f} GiB; "
        f"measured extra peak = {result['sam_extra_peak_bytes'] / gib:.3f} GiB"
    )
    if not result["peak_reset"]:
        print("note: the kernel refused to reset VmHWM; peaks include model loading")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
