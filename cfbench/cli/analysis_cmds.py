"""``cfbench landscape`` (loss surfaces, flatness, sharpness, interpolation) and ``cfbench diff`` (what moved).

The work is :mod:`cfbench.analysis.run` (imported inside the commands: it pulls torch); here the
options are parsed and the results printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cfbench.cli.common import Results
from cfbench.cli.output import Format, OutputFormat, emit, note, to_csv, to_json

if TYPE_CHECKING:
    from cfbench.analysis.run import DiffRun, LandscapeRow

Checkpoints = Annotated[list[str], typer.Argument(help="Checkpoints (folder, .gguf, hub id, smollm2-135m).")]
LData = Annotated[str, typer.Option("--data", help="Held-out text: lambada, squad, builtin:NAME or a file.")]
Grid = Annotated[int, typer.Option("--grid", help="Points per axis (N×N grid).")]
Span = Annotated[float, typer.Option("--span", help="α, β range [-S, S].")]
Directions = Annotated[str, typer.Option("--directions", help="gaussian (paper) or filter (Li et al. 2018).")]
Perturb1d = Annotated[bool, typer.Option("--perturb-1d", help="Also perturb norm/bias (1-D) tensors.")]
LSeed = Annotated[int, typer.Option("--seed", help="Direction and held-out sampling seed.")]
Batches = Annotated[int, typer.Option("--batches", help="Held-out batches per grid point.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Blocks per batch.")]
Length = Annotated[int, typer.Option("--length", help="Tokens per held-out block.")]
Probes = Annotated[int, typer.Option("--hutchinson", help="Hutchinson probes for the Hessian trace (0: off).")]
PowerIters = Annotated[int, typer.Option("--power-iters", help="Power iterations, top eigenvalue (0: off).")]
InterpFrom = Annotated[
    str | None, typer.Option("--interpolate-from", help="Base: also L(base + t·(ckpt − base)), t in [0, 1.5].")
]
InterpData = Annotated[
    str | None, typer.Option("--interp-data", help="Extra (in-domain) data for the interpolation curve.")
]
LPlot = Annotated[Path | None, typer.Option("--plot", help="Contour PNG (one panel per checkpoint).")]
LLabels = Annotated[str | None, typer.Option("--labels", help="Comma-separated panel titles.")]
Device = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when available).")]

DiffBase = Annotated[str, typer.Argument(help="Base checkpoint.")]
DiffTuned = Annotated[list[str], typer.Argument(help="Tuned checkpoints of the same architecture.")]
DPlot = Annotated[Path | None, typer.Option("--plot", help="Per-layer ‖ΔW‖/‖W‖ PNG.")]
Top = Annotated[int, typer.Option("--top", help="Parameters listed, by ‖ΔW‖/‖W‖.")]
DLabels = Annotated[str | None, typer.Option("--labels", help="Comma-separated names, tuned only.")]


def landscape_cmd(
    checkpoints: Checkpoints,
    data: LData = "lambada",
    grid: Grid = 11,
    span: Span = 0.5,
    directions: Directions = "filter",
    perturb_1d: Perturb1d = False,
    seed: LSeed = 0,
    batches: Batches = 2,
    batch_size: BatchSize = 4,
    length: Length = 128,
    probes: Probes = 0,
    power_iters: PowerIters = 0,
    interpolate_from: InterpFrom = None,
    interp_data: InterpData = None,
    plot: LPlot = None,
    labels: LLabels = None,
    device: Device = None,
    results: Results = Path("results"),
    fmt: Format = OutputFormat.table,
) -> None:
    """Loss surface f(α,β) = L(θ₀+αδ₁+βδ₂) per checkpoint, the paper's SC/AG/MAG; stored in the results store."""
    from cfbench.analysis.run import LANDSCAPE_COLUMNS, LandscapeSettings, landscape

    settings = LandscapeSettings(
        data=data, grid=grid, span=span, directions=directions, perturb_1d=perturb_1d, seed=seed, batches=batches,
        batch_size=batch_size, length=length, probes=probes, power_iters=power_iters, interp_data=interp_data,
        device=device,
    )  # fmt: skip
    res = landscape(
        checkpoints, settings=settings, labels=labels, interpolate_from=interpolate_from, results=results,
        plot=plot, on_row=print_landscape_row if fmt is OutputFormat.table else None,
    )  # fmt: skip
    if fmt is OutputFormat.json:
        emit(to_json(res.to_dict()))
    elif fmt is OutputFormat.csv:
        emit(to_csv(res.tidy_rows(), LANDSCAPE_COLUMNS))
    if res.plot:
        note(f"wrote {res.plot}", fmt)


def print_landscape_row(row: LandscapeRow) -> None:
    """The table view of one checkpoint, printed as soon as it is measured."""
    m, sh = row.surface.metrics, row.sharpness
    line = (
        f"{row.label}: SC {m['sc']:.4g}  AG {m['ag']:.4g}  MAG {m['mag']:.4g}  loss(θ₀) {m['loss_center']:.4f}"
        f"  [{row.seconds_per_point:.2f}s/point]"
    )
    if sh is not None:
        if sh.trace is not None:
            line += f"  tr(H) {sh.trace:.4g}±{sh.trace_stderr:.2g}"
        if sh.top_eigenvalue is not None:
            line += f"  λmax {sh.top_eigenvalue:.4g}"
        line += f" ({sh.method}, {sh.seconds:.0f}s)"
    for curve in row.interpolations:
        points = " ".join(f"{t:g}:{v:.3f}" for t, v in curve.points)
        typer.echo(f"{row.label}: interpolation on {curve.data}: {points}")
    typer.echo(line)


def diff_cmd(
    base: DiffBase,
    tuned: DiffTuned,
    plot: DPlot = None,
    top: Top = 8,
    labels: DLabels = None,
    results: Results = Path("results"),
    fmt: Format = OutputFormat.table,
) -> None:
    """What moved: per-layer ‖ΔW‖, ‖ΔW‖/‖W‖, effective rank of ΔW, total displacement (no evaluation)."""
    from cfbench.analysis.run import DIFF_COLUMNS, diff_checkpoints

    def show(run: DiffRun) -> None:
        print_diff_run(run, base, top)

    res = diff_checkpoints(
        base, tuned, labels=labels, results=results, plot=plot, on_run=show if fmt is OutputFormat.table else None
    )
    if fmt is OutputFormat.json:
        emit(to_json(res.to_dict()))
    elif fmt is OutputFormat.csv:
        emit(to_csv(res.tidy_rows(), DIFF_COLUMNS))
    if res.plot:
        note(f"wrote {res.plot}", fmt)
    note(f"stored in {results}/ (tables weight_diff, diagnostics)", fmt)


def print_diff_run(run: DiffRun, base: str, top: int) -> None:
    """The table view of one tuned checkpoint: displacement, then its ``top`` most-moved tensors."""
    typer.echo(
        f"{run.label} vs {base}: displacement ‖Δθ‖ = {run.displacement:.6g} (relative {run.rel_displacement:.3e})"
        f" over {len(run.layers)} tensors"
    )
    for r in run.top(top):
        er = "-" if r.effective_rank is None else f"{r.effective_rank:.1f}"
        sv = ", ".join(f"{x:.3g}" for x in r.top_singular[:3])
        typer.echo(
            f"  {r.param:<48} ‖ΔW‖ {r.norm_delta:.4g}  ‖ΔW‖/‖W‖ {r.rel_delta:.3e}  eff.rank {er}"
            f"  σ[:3] {sv}  ({r.svd})"
        )


def register(app: typer.Typer) -> None:
    """Add ``landscape`` and ``diff`` to the cfbench app."""
    app.command("landscape")(landscape_cmd)
    app.command("diff")(diff_cmd)
