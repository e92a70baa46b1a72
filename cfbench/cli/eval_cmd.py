"""``cfbench eval``: score one checkpoint and store per-item and per-task results."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cfbench.cli.common import (
    Backend,
    BaseArch,
    DataDir,
    Devices,
    Dtype,
    Limit,
    ModelArgs,
    NumFewshot,
    RayAddress,
    Results,
    Runner,
    Suite,
    TaskLimit,
    Tasks,
    Workers,
    parse_model_args,
    parse_task_limits,
)


class EvalFormat(str, Enum):
    table = "table"
    json = "json"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        checkpoint: Annotated[
            str, typer.Argument(help="HF folder, .gguf, hub id, state dict (+--base) or smollm2-135m.")
        ],
        suite: Suite = "paper",
        tasks: Tasks = None,
        limit: Limit = None,
        task_limit: TaskLimit = None,
        backend: Backend = "hf",
        model_args: ModelArgs = None,
        dtype: Dtype = "float32",
        num_fewshot: NumFewshot = None,
        base: BaseArch = None,
        data_dir: DataDir = None,
        results: Results = "results",  # type: ignore[assignment]
        name: Annotated[str | None, typer.Option("--name", help="Run name in the store (default: checkpoint).")] = None,
        fmt: Annotated[EvalFormat, typer.Option("--format", help="table or json.")] = EvalFormat.table,
        workers: Workers = None,
        devices: Devices = None,
        runner: Runner = "local",
        ray_address: RayAddress = None,
    ) -> None:
        """Score CHECKPOINT on a suite; cached items are never scored twice, interrupted runs resume."""
        from cfbench.engine import evaluate

        if workers is not None or devices is not None or runner != "local" or ray_address:
            from functools import partial

            from cfbench.scale.workers import evaluate_parallel, make_runner

            pool = make_runner(workers, devices, runner, ray_address)
            evaluate = partial(evaluate_parallel, devices=pool)  # type: ignore[assignment]
        res = evaluate(
            checkpoint,
            tasks=tasks.split(",") if tasks else None,
            suite=suite,
            limit=limit,
            task_limits=parse_task_limits(task_limit),
            num_fewshot=num_fewshot,
            backend=backend,
            backend_options=parse_model_args(model_args, dtype),
            base=base,
            data_dir=data_dir,
            results=results,
            name=name,
            progress="auto",  # a bar on a terminal, plain periodic lines in CI logs
        )
        if fmt is EvalFormat.json:
            typer.echo(
                json.dumps(
                    {
                        "run_id": res.run_id,
                        "name": res.name,
                        "checkpoint_hash": res.checkpoint_hash,
                        "reused_run": res.reused_run,
                        "seconds": round(res.seconds, 3),
                        "scored_items": res.scored_items,
                        "tasks": [o.__dict__ for o in res.outcomes],
                    },
                    indent=2,
                )
            )
            return
        console = Console(width=None if sys.stdout.isatty() else 140)
        table = Table(title=f"{res.name}  ({res.checkpoint_hash[:12]})")
        for col in ("task", "metric", "score", "items", "scored now"):
            table.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for o in res.outcomes:
            if o.missing:
                table.add_row(o.task, o.primary_metric, "[yellow]missing data[/yellow]", "-", "-")
                continue
            for m, v in o.metrics.items():
                star = "" if m == o.primary_metric else "[dim]"
                table.add_row(o.task, f"{star}{m}", f"{100 * v:.2f}", str(o.n_items), str(o.n_scored))
        console.print(table)
        how = "reused stored run" if res.reused_run else "stored run"
        console.print(f"{how} {res.run_id} in {results} — {res.scored_items} items scored in {res.seconds:.1f}s")
        missing = [o.task for o in res.outcomes if o.missing]
        if missing:
            console.print(
                f"[yellow]skipped (no data):[/yellow] {', '.join(missing)} — see `cfbench tasks` for how to add them"
            )
