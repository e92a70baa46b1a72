"""What ``ForgettingCallback`` costs: training wall time with and without it, on the built-in model.

Trains SmolLM2-135M-Instruct (``smollm2-135m``, offline) with ``transformers.Trainer`` for ``--steps``
optimizer steps twice, from the same seed: once plain and once with
``ForgettingCallback(every=--every)`` at the default probe (64 offline-suite items + 32 LAMBADA
passages, scored once at train begin and every ``--every`` steps). Prints both wall times, the
overhead ratio (watched / plain − 1; the target is ≤ 10 % at the defaults) and whether the two loss
curves are bit-identical. A benchmark, not a test: numbers depend on the machine. Example::

    OMP_NUM_THREADS=2 python benchmarks/callback_overhead.py --steps 100 --every 50

``--model`` takes any checkpoint cfbench resolves; ``--items/--passages`` shrink the probe.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _train(model_path: Path, args: argparse.Namespace, callbacks: list, out: Path) -> tuple[float, list[float]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from cfbench.train.data import load_data

    tok = AutoTokenizer.from_pretrained(model_path)
    rows = []
    for ex in load_data(args.data).examples[: args.steps * args.batch]:
        text = ex.text if ex.text is not None else "\n".join(content for _, content in ex.messages)
        ids = tok.encode(text, add_special_tokens=False)[: args.seq]
        rows.append({"input_ids": ids, "labels": list(ids)})
    model = AutoModelForCausalLM.from_pretrained(model_path)
    targs = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
        logging_steps=1, report_to=[], save_strategy="no", seed=0, disable_tqdm=True, lr_scheduler_type="constant",
    )  # fmt: skip
    trainer = Trainer(model=model, args=targs, train_dataset=rows, processing_class=tok,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True), callbacks=callbacks)  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return wall, [h["loss"] for h in trainer.state.log_history if "loss" in h]


def main() -> None:
    from cfbench.integrations.probe import Probe
    from cfbench.integrations.transformers import ForgettingCallback
    from cfbench.models.checkpoint import resolve_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="builtin:arithmetic")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--passages", type=int, default=32)
    args = ap.parse_args()
    path = resolve_checkpoint(args.model).path
    with tempfile.TemporaryDirectory() as tmp:
        plain, losses_a = _train(path, args, [], Path(tmp) / "plain")
        cb = ForgettingCallback(probe=Probe.default(args.items, args.passages), every=args.every)
        watched, losses_b = _train(path, args, [cb], Path(tmp) / "watched")
    result = {
        "model": args.model, "steps": args.steps, "every": args.every, "probe_items": args.items,
        "probe_passages": args.passages, "plain_s": round(plain, 2), "watched_s": round(watched, 2),
        "overhead": round(watched / plain - 1, 4), "probes": 1 + args.steps // args.every,
        "losses_bit_identical": losses_a == losses_b, "last": cb.history[-1] if cb.history else None,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(f"overhead {100 * result['overhead']:.1f}% of training wall time (target <= 10%)", file=sys.stderr)


if __name__ == "__main__":
    main()
