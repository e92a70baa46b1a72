"""Where cfbench's hf scorer spends its time: torch.profiler over one warm ``loglikelihood`` call.

Same requests as ``benchmarks/scoring.py`` (lm-eval's own task objects over the offline data). The
backend is loaded and warmed on the requests once, then one call is profiled; self CPU time is
grouped into matmul (``aten::mm``/``addmm``/``bmm``), attention (the sdpa kernels), log-softmax and
argmax at the scored positions, element-wise ops (norms, RoPE, activation, residuals) and the rest
(indexing, copies, Python-side planning shows up as the gap to wall time). It also prints the
achieved rate of the matmuls alone (their FLOPs counted from the shapes the profiler records).

    OMP_NUM_THREADS=1 python benchmarks/profile_scoring.py --tasks copa,boolq,mmlu --limit 20 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"),
    "log-softmax + argmax": ("aten::_log_softmax", "aten::argmax"),
    "element-wise": ("aten::mul", "aten::add", "aten::silu", "aten::pow", "aten::neg", "aten::rsqrt", "aten::mean",
                     "aten::cat", "aten::div_", "aten::sum", "aten::embedding"),
}  # fmt: skip


def mm_flops(event: object) -> float:
    """2·m·k·n of one recorded ``aten::mm``/``addmm`` call from its input shapes (0 if unknown)."""
    shapes = [s for s in getattr(event, "input_shapes", []) if len(s) == 2]
    if len(shapes) < 2:
        return 0.0
    (m, k), (_, n) = shapes[-2], shapes[-1]
    return 2.0 * m * k * n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="copa,boolq,mmlu", help="names of benchmarks/scoring.py")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--num-fewshot", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args(argv)

    import torch
    from lm_eval.tasks import TaskManager
    from scoring import lmeval_workload
    from torch.profiler import ProfilerActivity, profile

    from cfbench.backends.hf import HFBackend
    from cfbench.models import resolve_checkpoint

    torch.set_num_threads(args.threads)
    tm = TaskManager()
    be = HFBackend(resolve_checkpoint(args.model).path)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    groups = " | ".join(f"{g:>20}" for g in [*GROUPS, "other"])
    print(f"{'task':10} {'wall s':>7} {'tokens':>6} | {groups} | mm GF/s")
    for name in (t.strip() for t in args.tasks.split(",") if t.strip()):
        work = lmeval_workload(name, args.limit, tm, args.num_fewshot)
        be.loglikelihood(work.requests)  # warm-up
        be.tokens_forwarded = 0
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t = time.perf_counter()
            be.loglikelihood(work.requests)
            wall = time.perf_counter() - t
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        share = {g: 0.0 for g in [*GROUPS, "other"]}
        mm_time = mm_work = 0.0
        for e in events:
            group = next((g for g, ops in GROUPS.items() if e.key in ops), "other")
            share[group] += e.self_cpu_time_total
            if group == "matmul":
                mm_time += e.self_cpu_time_total
                mm_work += mm_flops(e) * e.count
        rate = mm_work / (mm_time * 1e-6) / 1e9 if mm_time else math.nan
        cells = " | ".join(f"{100 * share[g] / total:19.1f}%" for g in share)
        print(f"{name:10} {wall:7.2f} {be.tokens_forwarded:6d} | {cells} | {rate:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
