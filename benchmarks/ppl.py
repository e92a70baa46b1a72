"""Perplexity-probe throughput: cfbench's hf ``loglikelihood_rolling`` vs lm-eval's ``HFLM`` on the same texts.

Both score the same documents (the first ``--limit`` of a ``cfbench ppl --data`` source) with the same
model in float32 on the CPU, in lm-eval's windows of ``--max-length`` tokens (default: the model's
own length, so short passages are one window each). Each scorer is warmed up on one document, then
timed once over all of them; the table gives tokens/s (document tokens scored, not tokens forwarded)
and the largest per-document |Δ log p| between the two (the parity the tests require is ≤ 1e-3).

    python benchmarks/ppl.py --limit 64 --threads 1
    python benchmarks/ppl.py --data squad --limit 16 --max-length 128   # windows that roll
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="smollm2-135m")
    ap.add_argument("--data", default="lambada")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=None, help="window length on both sides (default: model's)")
    ap.add_argument("--lmeval-batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from cfbench.backends.hf import HFBackend
    from cfbench.data.text import load_text_source
    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.requests import RollingRequest

    ck = resolve_checkpoint(args.checkpoint)
    texts = list(load_text_source(args.data).docs[: args.limit])
    extra = {} if args.max_length is None else {"max_length": args.max_length}

    ours = HFBackend(ck.path, dtype="float32", device="cpu", **extra)
    ours.loglikelihood_rolling([RollingRequest(texts[0])])  # warm-up
    t0 = time.perf_counter()
    got = ours.loglikelihood_rolling([RollingRequest(t) for t in texts])
    ours_s = time.perf_counter() - t0
    max_length = ours.max_length
    ours.close()

    lm = HFLM(pretrained=str(ck.path), dtype="float32", batch_size=args.lmeval_batch_size, device="cpu", **extra)

    def insts(ts: list[str]) -> list[Instance]:
        return [Instance("loglikelihood_rolling", {}, (t,), idx=0, metadata=("ppl", i, 1)) for i, t in enumerate(ts)]

    lm.loglikelihood_rolling(insts(texts[:1]), disable_tqdm=True)  # warm-up
    t0 = time.perf_counter()
    want = lm.loglikelihood_rolling(insts(texts), disable_tqdm=True)
    lmeval_s = time.perf_counter() - t0

    tokens = sum(r.n_tokens for r in got)
    out = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "docs": len(texts),
        "tokens": tokens,
        "max_length": max_length,
        "threads": torch.get_num_threads(),
        "lmeval_batch_size": args.lmeval_batch_size,
        "cfbench_s": round(ours_s, 3),
        "lmeval_s": round(lmeval_s, 3),
        "cfbench_tokens_per_s": round(tokens / ours_s, 1),
        "lmeval_tokens_per_s": round(tokens / lmeval_s, 1),
        "speedup": round(lmeval_s / ours_s, 2),
        "max_abs_delta_logprob": max(abs(g.logprob - w) for g, w in zip(got, want, strict=True)),
        "nats_per_token": -sum(r.logprob for r in got) / tokens,
        "load_average": os.getloadavg()[0],
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(f"{'scorer':<22} {'seconds':>8} {'tokens/s':>9}")
    print(f"{'cfbench hf':<22} {ours_s:>8.2f} {out['cfbench_tokens_per_s']:>9.1f}")
    print(f"{'lm-eval HFLM':<22} {lmeval_s:>8.2f} {out['lmeval_tokens_per_s']:>9.1f}")
    print(f"{len(texts)} docs, {tokens} tokens, max_length {max_length}; speedup {out['speedup']}x; "
          f"max |Δ log p| {out['max_abs_delta_logprob']:.2e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
