"""``cfbench sweep BASE RUN_DIR``: learned vs forgot at every checkpoint of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
    Workers,
    make_pool,
)
from cfbench.cli.compare_cmd import _eval_kwargs
from cfbench.cli.output import Format, OutputFormat, emit, note, to_csv, to_json
from cfbench.errors import CfbenchError

SBase = Annotated[str, typer.Argument(help="The base checkpoint the run was trained from.")]
SRunDir = Annotated[Path, typer.Argument(help="The run's output folder, holding checkpoint-N/ or step-N/ folders.")]
SBudget = Annotated[
    list[str] | None,
    typer.Option(
        "--budget", help="METRIC=VALUE forgetting budget (repeatable; default kl=0.05): names the first step past it."
    ),
]
SPlot = Annotated[Path | None, typer.Option("--plot", help="Folder for one PNG per signal against step (base at 0).")]
SNBoot = Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates for the CIs.")]


def sweep_cmd(
    base: SBase,
    run_dir: SRunDir,
    suite: Suite = "paper",
    limit: Limit = None,
    task_limit: TaskLimit = None,
    backend: Backend = "hf",
    model_args: ModelArgs = None,
    dtype: Dtype = "float32",
    num_fewshot: NumFewshot = None,
    arch: BaseArch = None,
    data_dir: DataDir = None,
    results: Results = Path("results"),
    budget: SBudget = None,
    plot: SPlot = None,
    n_boot: SNBoot = 2000,
    fmt: Format = OutputFormat.table,
    workers: Workers = None,
    devices: Devices = None,
    runner: Runner = "local",
    ray_address: RayAddress = None,
) -> None:
    """Score every checkpoint of a training run (cached) and show learned vs forgot per step."""
    from cfbench.comparison.sweep import sweep
    from cfbench.train.indomain import measure_checkpoints

    if plot is not None and plot.exists() and not plot.is_dir():  # before any scoring
        raise CfbenchError(f"--plot {plot} is a file: give a folder (one PNG per signal is written there)")
    res = sweep(
        base, run_dir, suite=suite, results=results, budgets=budget or ["kl=0.05"], n_boot=n_boot,
        eval_kwargs=_eval_kwargs(limit, task_limit, backend, model_args, dtype, num_fewshot, arch, data_dir),
        runner=make_pool(workers, devices, runner, ray_address),
        learned=lambda paths: measure_checkpoints(results, paths),
    )  # fmt: skip
    if fmt is OutputFormat.json:
        emit(to_json(res.to_dict()))
    elif fmt is OutputFormat.csv:
        emit(to_csv([s.row() for s in res.steps]))
    else:
        typer.echo(_table(res))
    for line in res.notes:
        note(f"note: {line}", fmt)
    if plot is not None:
        for path in _plot(res, plot):
            note(f"wrote {path}", fmt)


def _fmt(value: float | None, ci: tuple[float, float] | None, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    text = f"{value * scale:+.4f}"
    return text + (f" [{ci[0] * scale:+.4f}, {ci[1] * scale:+.4f}]" if ci else "")


def _table(res: Any) -> str:
    """A plain text table: step, Δ accuracy (pts), each signal with its CI; then the verdicts."""
    names = sorted({n for s in res.steps for n in s.signals})
    head = ["step", "Δ acc (pts)", *names]
    rows = [[str(s.step), _fmt(s.acc_delta, s.acc_ci, 100.0),
             *(_fmt(s.signals[n].value, s.signals[n].ci) if n in s.signals else "-" for n in names)]
            for s in res.steps]  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    budgets = ", ".join(f"{b.label}={b.value:g}" for b in res.budgets)
    over = "none" if res.first_over is None else f"step {res.first_over[0]} ({res.first_over[1]})"
    lines.append(f"first step over budget ({budgets}): {over}")
    lines.append(f"best learned-per-forgot step: {res.best if res.best is not None else 'none'} ({res.best_note})")
    return "\n".join(lines)


def _plot(res: Any, folder: Path) -> list[Path]:
    from cfbench.report.sweep_plot import plot_sweep

    series: dict[str, list[Any]] = {"acc_delta": [(0, 0.0, None, None)]}
    units = {"acc_delta": "Δ fraction"}
    for s in res.steps:
        series["acc_delta"].append((s.step, s.acc_delta, *(s.acc_ci or (None, None))))
        for name, sig in s.signals.items():
            series.setdefault(name, [(0, 0.0, None, None)]).append((s.step, sig.value, *(sig.ci or (None, None))))
            units[name] = sig.unit
    budgets = {b.metric: b.value for b in res.budgets if b.scope == "all"}
    return plot_sweep(series, folder, budgets=budgets, units=units)


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the cfbench app."""
    app.command("sweep")(sweep_cmd)
