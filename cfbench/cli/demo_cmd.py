"""``cfbench demo``: the whole product in one command on the built-in model and offline data.

SmolLM2-135M-Instruct is fine-tuned on the narrow offline ``builtin:arithmetic`` set twice, compute-
matched as in the paper (AdamW for 2× the steps vs SAM), then base, w/o SAM and w/ SAM are compared
on the offline suite. Sized to finish within 15 minutes on a 2-core CPU; every number is real.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cfbench.cli.common import Results


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option("--out", help="Where checkpoints, report.md and demo.png go.")] = Path(
            "demo"
        ),
        results: Results = Path("results"),
        steps: Annotated[int, typer.Option("--steps", help="SAM optimizer steps (AdamW gets 2x).")] = 8,
        lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (the paper used 5e-6 at 7B scale).")] = 1e-4,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch (examples per step).")] = 8,
        rho: Annotated[float, typer.Option("--rho", help="SAM radius (the paper's full fine-tuning value).")] = 2.0,
        limit: Annotated[int, typer.Option("--limit", help="Documents scored per task.")] = 100,
        mmlu_limit: Annotated[int, typer.Option("--mmlu-limit", help="Documents per MMLU subject (57).")] = 4,
        seed: Annotated[int, typer.Option("--seed")] = 0,
    ) -> None:
        """Fine-tune SmolLM2-135M w/o and w/ SAM on offline arithmetic data, then print the forgetting table."""
        from cfbench.compare import compare
        from cfbench.report import plot_report
        from cfbench.train.finetune import pair

        console = Console(stderr=True)
        t0 = time.perf_counter()
        console.rule("1/2  fine-tune: w/o SAM (AdamW, 2x steps) and w/ SAM (1x steps), compute-matched")
        pr = pair(
            "smollm2-135m", "builtin:arithmetic", out / "pair", rho=rho, lr=lr, batch_size=batch_size,
            micro_batch=min(8, batch_size), max_length=128, warmup=0.1, max_steps=steps, seed=seed,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
        t_train = time.perf_counter() - t0
        console.rule("2/2  score base, w/o SAM, w/ SAM on the offline suite")
        res = compare(
            "ckpt:smollm2-135m", [f"ckpt:{pr.wo_sam.path}", f"ckpt:{pr.w_sam.path}"], suite="offline", results=results,
            labels=["SmolLM2-135M-Instruct", "w/o SAM", "w/ SAM"], pairs=[("w/o SAM", "w/ SAM")],
            eval_kwargs={"limit": limit, "task_limits": {"mmlu": mmlu_limit}, "progress": "auto"},
        )  # fmt: skip
        res.report.print(Console(width=None if sys.stdout.isatty() else 160))
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(res.report.to_markdown(), encoding="utf-8")
        res.report.to_json(out / "report.json")
        plot_report(res.report, out / "demo.png", include_pairs=True)
        total = time.perf_counter() - t0
        console.print(
            f"fine-tuning {t_train:.0f}s, scoring {total - t_train:.0f}s, total {total:.0f}s; "
            f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'demo.png'}; results in {results}/"
        )
