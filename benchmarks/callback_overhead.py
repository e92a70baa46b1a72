"""What ``ForgettingCallback`` costs: training wall time with and without it, on the built-in model.

Trains SmolLM2-135M-Instruct (``smollm2-135m``, offline) with ``transformers.Trainer`` for ``--steps``
optimizer steps, plain and with ``ForgettingCallback(every=--every)`` at the default probe (64
offline-suite items + 32 LAMBADA passages, built and scored on the base at train begin, then scored
every ``--every`` steps). The runs are interleaved (plain, watched, plain, watched, ...; ``--repeats``
of each) so that a change of machine load hits both sides alike. Prints every wall time, the median
of each side, the overhead ratio (median watched / median plain − 1; the target is ≤ 10 %), the time
the probe itself took (built + base score, and each check), and whether the loss curves of all runs
are bit-identical. A benchmark, not a test: numbers depend on the machine. Example::

    OMP_NUM_THREADS=1 python benchmarks/callback_overhead.py --steps 48 --every 24 --repeats 2

Per check, the probe costs about ``check_s``; at another ``every`` the overhead is roughly
``(setup_s + check_s * steps / every) / plain_s``. ``--model`` takes any checkpoint cfbench
resolves; ``--items/--passages`` shrink the probe (the defaults are the callback's).
``--max-overhead`` is the callback's overhead budget (default 0.1, as the callback's; ``none``: a
check at every ``--every``-th step whatever it costs, as before the budget existed); the callback's
own measurement (checks run and deferred, their share of training time, the base score apart) is
printed under ``callback_overhead``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _rows(model_path: Path, args: argparse.Namespace) -> tuple[Any, list[dict[str, list[int]]]]:
    """The tokenizer and ``steps * batch`` training rows of ``--data`` (cut to ``--seq`` tokens)."""
    from transformers import AutoTokenizer

    from cfbench.train.data import load_data

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:  # the collator pads batches
        tok.pad_token = tok.eos_token
    rows = []
    for ex in load_data(args.data).examples[: args.steps * args.batch]:
        text = ex.text if ex.text is not None else "\n".join(content for _, content in ex.messages)
        ids = tok.encode(text, add_special_tokens=False)[: args.seq]
        rows.append({"input_ids": ids, "labels": list(ids)})
    return tok, rows


def _train(model_path: Path, args: argparse.Namespace, callbacks: list, out: Path) -> tuple[float, list[float]]:
    """One training run's wall time (``trainer.train()`` only: model load excluded) and its losses."""
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok, rows = _rows(model_path, args)
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


def _timed_callback(every: int, items: int, passages: int, max_overhead: float | None) -> Any:
    """A ForgettingCallback that records how long its train-begin set-up and each check take."""
    from cfbench.integrations.probe import Probe
    from cfbench.integrations.transformers import ForgettingCallback

    class Timed(ForgettingCallback):
        def __init__(self) -> None:
            default = (items, passages) == (64, 32)  # the callback builds its default probe itself, timed
            probe = None if default else Probe.default(items, passages)
            super().__init__(probe=probe, every=every, max_overhead=max_overhead)
            self.setup_s = 0.0
            self.check_s: list[float] = []

        def on_train_begin(self, *a: Any, **kw: Any) -> None:
            t0 = time.perf_counter()
            super().on_train_begin(*a, **kw)
            self.setup_s = time.perf_counter() - t0

        def on_step_end(self, *a: Any, **kw: Any) -> Any:
            n = len(self.history)
            t0 = time.perf_counter()
            out = super().on_step_end(*a, **kw)
            if len(self.history) > n:
                self.check_s.append(time.perf_counter() - t0)
            return out

    return Timed()


def main() -> None:
    from cfbench.models.checkpoint import resolve_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="builtin:arithmetic")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--every", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, interleaved")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--passages", type=int, default=32)
    ap.add_argument("--max-overhead", default="0.1", help="the callback's budget (0 < x <= 1), or none")
    args = ap.parse_args()
    budget = None if args.max_overhead.lower() == "none" else float(args.max_overhead)
    path = resolve_checkpoint(args.model).path
    plain: list[float] = []
    watched: list[float] = []
    curves: list[list[float]] = []
    cbs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            wall, losses = _train(path, args, [], Path(tmp) / f"plain{rep}")
            plain.append(wall)
            curves.append(losses)
            cb = _timed_callback(args.every, args.items, args.passages, budget)
            wall, losses = _train(path, args, [cb], Path(tmp) / f"watched{rep}")
            watched.append(wall)
            curves.append(losses)
            cbs.append(cb)
            print(f"[bench] repeat {rep + 1}: plain {plain[-1]:.1f}s, watched {watched[-1]:.1f}s", file=sys.stderr)
    med_p, med_w = statistics.median(plain), statistics.median(watched)
    checks = [c for cb in cbs for c in cb.check_s]
    result = {
        "model": args.model, "steps": args.steps, "every": args.every, "batch": args.batch, "seq": args.seq,
        "probe_items": args.items, "probe_passages": args.passages, "repeats": args.repeats, "max_overhead": budget,
        "plain_s": [round(x, 2) for x in plain], "watched_s": [round(x, 2) for x in watched],
        "plain_median_s": round(med_p, 2), "watched_median_s": round(med_w, 2),
        "overhead": round(med_w / med_p - 1, 4), "checks_per_run": len(cbs[0].check_s),
        "setup_s": [round(cb.setup_s, 2) for cb in cbs], "check_s_median": round(statistics.median(checks), 2)
        if checks else None, "step_s": round(med_p / args.steps, 3),
        "callback_overhead": [cb.overhead for cb in cbs],
        "losses_bit_identical": all(c == curves[0] for c in curves), "last": cbs[-1].history[-1] if cbs[-1].history
        else None,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(f"overhead {100 * result['overhead']:.1f}% of training wall time (target <= 10%)", file=sys.stderr)


if __name__ == "__main__":
    main()
