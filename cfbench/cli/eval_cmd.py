"""``cfbench eval``: score one checkpoint and store per-item and per-task results."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

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
    make_pool,
    parse_model_args,
    parse_task_limits,
)
from cfbench.cli.output import Format, OutputFormat, emit, to_csv, to_json

if TYPE_CHECKING:
    from cfbench.engine import EvalResult

Checkpoint = Annotated[str, typer.Argument(help="HF folder, .gguf, hub id, state dict (+--base) or smollm2-135m.")]
RunName = Annotated[str | None, typer.Option("--name", help="Run name in the store (default: checkpoint).")]
#: Columns of ``cfbench eval --format csv``: one row per (task, metric).
EVAL_COLUMNS = ("run_id", "name", "checkpoint_hash", "task", "metric", "value", "primary", "n_items", "n_scored",
                "missing")  # fmt: skip


def eval_(
    checkpoint: Checkpoint,
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
    name: RunName = None,
    fmt: Format = OutputFormat.table,
    workers: Workers = None,
    devices: Devices = None,
    runner: Runner = "local",
    ray_address: RayAddress = None,
) -> None:
    """Score CHECKPOINT on a suite; cached items are never scored twice, interrupted runs resume."""
    from cfbench.engine import evaluate

    pool = make_pool(workers, devices, runner, ray_address)
    if pool is not None:
        from functools import partial

        from cfbench.scale.workers import evaluate_parallel

        evaluate = partial(evaluate_parallel, devices=pool)  # type: ignore[assignment]
    res = evaluate(
        checkpoint, tasks=tasks.split(",") if tasks is not None else None, suite=suite, limit=limit,
        task_limits=parse_task_limits(task_limit), num_fewshot=num_fewshot, backend=backend,
        backend_options=parse_model_args(model_args, dtype), base=base, data_dir=data_dir, results=results,
        name=name, progress="auto",  # a bar on a terminal, plain periodic lines in CI logs
    )  # fmt: skip
    if fmt is OutputFormat.json:
        emit(to_json(eval_dict(res)))
    elif fmt is OutputFormat.csv:
        emit(to_csv(eval_rows(res), EVAL_COLUMNS))
    else:
        print_eval(res, results)


def eval_dict(res: EvalResult) -> dict[str, Any]:
    return {
        "run_id": res.run_id,
        "name": res.name,
        "checkpoint_hash": res.checkpoint_hash,
        "reused_run": res.reused_run,
        "seconds": round(res.seconds, 3),
        "scored_items": res.scored_items,
        "tasks": [o.__dict__ for o in res.outcomes],
    }


def eval_rows(res: EvalResult) -> list[dict[str, Any]]:
    """Tidy rows: one per (task, metric); a task without data is one row naming why (``missing``)."""
    run = {"run_id": res.run_id, "name": res.name, "checkpoint_hash": res.checkpoint_hash}
    rows: list[dict[str, Any]] = []
    for o in res.outcomes:
        common = {**run, "task": o.task, "n_items": o.n_items, "n_scored": o.n_scored}
        if o.missing:
            rows.append({**common, "metric": o.primary_metric, "primary": True, "missing": o.missing})
        for m, v in o.metrics.items():
            rows.append({**common, "metric": m, "value": v, "primary": m == o.primary_metric})
    return rows


def print_eval(res: EvalResult, results: str) -> None:
    """The rich table (scores ×100), where the run is stored, and which tasks had no data."""
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


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the cfbench app."""
    app.command("eval")(eval_)
