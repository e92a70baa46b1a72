"""``cfbench demo``: the whole product in one command on the built-in model and offline data.

A thin wrapper over :func:`cfbench.demo.run_demo`: SmolLM2-135M-Instruct fine-tuned compute-matched
w/o and w/ SAM, the w/o SAM run Wise-FT-merged with the base, all compared on the offline suite,
and the learning-vs-forgetting picture. Defaults are the measured sweep's choice (docs/demo.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cfbench.cli.common import Results
from cfbench.cli.output import Format, OutputFormat, emit
from cfbench.demo import DemoConfig

_D = DemoConfig()


_Data = Annotated[str, typer.Option("--data", help="Fine-tuning data: builtin:gsm8k, builtin:arithmetic or a file.")]
_Steps = Annotated[int, typer.Option("--steps", help="SAM optimizer steps (AdamW gets 2x).")]
_Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate (the paper used 5e-6 at 7B scale).")]
_Batch = Annotated[int, typer.Option("--batch-size", help="Global batch (examples per step).")]
_MaxLen = Annotated[int, typer.Option("--max-length", help="Truncate examples to this many tokens.")]
_SamOpt = Annotated[str, typer.Option("--sam-optimizer", help="sam or asam for the w/ SAM run.")]
_Rho = Annotated[float, typer.Option("--rho", help="SAM radius (docs/demo.md: plain SAM and ASAM use other scales).")]
_Alpha = Annotated[str, typer.Option("--alpha", help="Wise-FT weight(s) of w/o SAM vs base, e.g. 0.5 or 0.25,0.5.")]
_Limit = Annotated[int, typer.Option("--limit", help="Documents scored per task.")]
_MmluLimit = Annotated[int, typer.Option("--mmlu-limit", help="Documents per MMLU subject (57).")]
_Heldout = Annotated[int, typer.Option("--heldout", help="Fine-tune documents held out for the in-domain gain.")]
_Floor = Annotated[
    str,
    typer.Option(
        "--floor",
        help="Drift noise floor: dtype (the base re-scored in bfloat16), plain (scoring_path=plain: numerically "
        "nil, stars nothing) or none.",
    ),
]
_PplLimit = Annotated[int, typer.Option("--ppl-limit", help="LAMBADA passages for perplexity drift (0: skip).")]


DemoOut = Annotated[Path, typer.Option("--out", help="Where checkpoints, report.md, demo.png and frontier.png go.")]
_Seed = Annotated[int, typer.Option("--seed")]


def demo(
    out: DemoOut = Path("demo"),
    results: Results = Path("results"),
    data: _Data = _D.data,
    steps: _Steps = _D.steps,
    lr: _Lr = _D.lr,
    batch_size: _Batch = _D.batch_size,
    max_length: _MaxLen = _D.max_length,
    sam_optimizer: _SamOpt = _D.sam_optimizer,
    rho: _Rho = _D.rho,
    alpha: _Alpha = ",".join(f"{a:g}" for a in _D.alphas),
    limit: _Limit = _D.limit,
    mmlu_limit: _MmluLimit = _D.mmlu_limit,
    seed: _Seed = _D.seed,
    heldout: _Heldout = _D.heldout,
    floor: _Floor = _D.floor,
    ppl_limit: _PplLimit = _D.ppl_limit,
    fmt: Format = OutputFormat.table,
) -> None:
    """Fine-tune SmolLM2-135M w/o and w/ SAM on offline data, merge, and print the forgetting table."""
    from cfbench.demo import run_demo
    from cfbench.train.merge import parse_alphas

    cfg = DemoConfig(
        data=data, steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, sam_optimizer=sam_optimizer,
        rho=rho, alphas=tuple(parse_alphas(alpha)), limit=limit, mmlu_limit=mmlu_limit, seed=seed,
        heldout=heldout, floor=floor, ppl_limit=ppl_limit,
    )  # fmt: skip
    console = Console(stderr=True)
    result = run_demo(cfg, out, results, progress=console)
    from cfbench.report import render  # pandas and scipy: not at `cfbench --help` start-up

    if fmt is OutputFormat.json:
        emit(render.to_json(result.report))
    elif fmt is OutputFormat.csv:
        emit(render.to_csv(result.report))
    else:
        render.print_report(result.report)
    for note in result.notes:
        console.print(f"note: {note}")
    s = result.seconds
    console.print(
        f"fine-tuning {s['fine-tuning']:.0f}s, merging {s['merging']:.0f}s, in-domain {s['in-domain']:.0f}s, "
        f"scoring {s['scoring']:.0f}s, "
        f"signals {s['signals']:.0f}s, total {s['total']:.0f}s; wrote {', '.join(map(str, result.files))}; "
        f"results in {results}/"
    )


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the cfbench app."""
    app.command("demo")(demo)
