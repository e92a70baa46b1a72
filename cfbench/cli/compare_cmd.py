"""``cfbench compare`` (the forgetting report) and ``cfbench regress`` (the nightly gate)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

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
    check_out_path,
    make_pool,
    parse_model_args,
    parse_task_limits,
)
from cfbench.cli.output import Format, OutputFormat, emit, to_csv, to_json, write_atomic
from cfbench.errors import CfbenchError


class ReportFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    html = "html"
    csv = "csv"
    json = "json"


def _eval_kwargs(
    limit: int | None,
    task_limit: list[str] | None,
    backend: str,
    model_args: str | None,
    dtype: str,
    num_fewshot: int | None,
    base: str | None,
    data_dir: Path | None,
) -> dict[str, Any]:
    return {
        "limit": limit,
        "task_limits": parse_task_limits(task_limit),
        "backend": backend,
        "backend_options": parse_model_args(model_args, dtype),
        "num_fewshot": num_fewshot,
        "base": base,
        "data_dir": data_dir,
        "progress": "auto",  # a bar on a terminal, plain periodic lines in CI logs
    }


CBase = Annotated[str, typer.Argument(help="Base checkpoint or stored run name/id.")]
CTuned = Annotated[list[str], typer.Argument(help="One or more tuned checkpoints or stored runs.")]
CLabels = Annotated[str | None, typer.Option("--labels", help="Comma-separated row labels, base first.")]
CPair = Annotated[
    bool,
    typer.Option(
        "--pair",
        help="The last two tuned runs are a w/o–w/ pair: add their accuracy Δ and their contrast on every signal "
        "(their seed groups' contrast when both are seeds of two methods).",
    ),
]
CContrast = Annotated[
    list[str] | None,
    typer.Option(
        "--contrast",
        help="B-A: B − A on every signal with a paired CI (repeatable); A and B are tuned run labels or --group names.",
    ),
]
CGroup = Annotated[
    list[str] | None,
    typer.Option(
        "--group",
        help="NAME=run1,run2,…: runs that are seeds of one method (repeatable): mean and seed SD of every signal; "
        "contrasts of groups use a two-level (seeds, items) CI. Seeds from `pair --seeds` are recognised.",
    ),
]
CFormat = Annotated[ReportFormat, typer.Option("--format", help="table, markdown, html, csv or json.")]
COut = Annotated[Path | None, typer.Option("--out", help="Write the report here instead of stdout.")]
CPlot = Annotated[Path | None, typer.Option("--plot", help="Also write a PNG of Δ with CI error bars.")]
CDiagnostics = Annotated[
    bool,
    typer.Option("--diagnostics", help="Also show stored flatness/sharpness/displacement (cfbench landscape/diff)."),
]
CDiagnosticsPlot = Annotated[
    Path | None, typer.Option("--diagnostics-plot", help="PNG: forgetting (Δ AVG) vs each diagnostic.")
]
CNBoot = Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates for the CIs.")]
CSeed = Annotated[int, typer.Option("--seed", help="Bootstrap seed.")]
CNoiseFloor = Annotated[
    str | None,
    typer.Option(
        "--noise-floor",
        help="Noise floor divergences (kl, js) must clear: `dtype` (re-score the base in bfloat16; float32 for a "
        "bfloat16 base), `dtype:NAME`, `plain` (scoring_path=plain: numerically nil), or a stored run of the base "
        "scored another way (run:NAME).",
    ),
]
CPpl = Annotated[
    str | None, typer.Option("--ppl", help="Also held-out perplexity drift on this text (as cfbench ppl --data).")
]
CPplLimit = Annotated[int | None, typer.Option("--ppl-limit", help="Documents of the --ppl text.")]


def compare_cmd(
    base: CBase,
    tuned: CTuned,
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
    labels: CLabels = None,
    pair: CPair = False,
    contrast: CContrast = None,
    group: CGroup = None,
    fmt: CFormat = ReportFormat.table,
    out: COut = None,
    plot: CPlot = None,
    diagnostics: CDiagnostics = False,
    diagnostics_plot: CDiagnosticsPlot = None,
    n_boot: CNBoot = 2000,
    seed: CSeed = 0,
    noise_floor: CNoiseFloor = None,
    workers: Workers = None,
    devices: Devices = None,
    runner: Runner = "local",
    ray_address: RayAddress = None,
    ppl: CPpl = None,
    ppl_limit: CPplLimit = None,
) -> None:
    """Paper-style forgetting table: DK, Understanding, Reasoning, Exams, AVG, Δ (+ CIs, McNemar, flips)."""
    from cfbench.comparison import PplDrift, compare
    from cfbench.comparison.contrasts import parse_groups

    for path, flag in ((out, "--out"), (plot, "--plot"), (diagnostics_plot, "--diagnostics-plot")):
        check_out_path(path, flag)
    label_list = [x.strip() for x in labels.split(",")] if labels is not None else None
    if pair and len(tuned) < 2:
        raise CfbenchError(f"--pair needs at least two tuned runs (w/o, then w/), got {len(tuned)}")
    names = label_list[1:] if label_list else tuned
    groups = parse_groups(group or [])
    res = compare(
        base, tuned, suite=suite, results=results, labels=label_list, n_boot=n_boot, seed=seed,
        pairs=[(names[-2], names[-1])] if pair else None, groups=groups, pair_contrast=pair,
        contrasts=list(contrast or []),
        eval_kwargs=_eval_kwargs(limit, task_limit, backend, model_args, dtype, num_fewshot, arch, data_dir),
        noise_floor=noise_floor, runner=make_pool(workers, devices, runner, ray_address),
        ppl=None if ppl is None else PplDrift(ppl, ppl_limit, backend, parse_model_args(model_args, dtype)),
    )  # fmt: skip
    print_compare(res, results, fmt, out, plot, pair, diagnostics, diagnostics_plot)


def print_compare(
    res: Any, results: Path, fmt: ReportFormat, out: Path | None, plot: Path | None, pair: bool, diagnostics: bool,
    diagnostics_plot: Path | None,
) -> None:  # fmt: skip
    """The report in ``fmt`` (stdout or ``out``), notes on stderr, then the Δ plot and the diagnostics."""
    if fmt is ReportFormat.html:
        _emit_html_page(res, results, out, plot, pair, diagnostics or diagnostics_plot is not None)
    else:
        emit_report(res.report, fmt, out)
    err = Console(stderr=True)
    for note in res.notes:
        err.print(f"[yellow]note:[/yellow] {note}")
    scored = sum(r.scored_items for r in res.runs)
    err.print(f"[dim]{scored} items scored now; everything else served from {results}[/dim]")
    if plot and fmt is not ReportFormat.html:  # the html page already wrote (and embedded) it
        from cfbench.report import plot_report

        plot_report(res.report, plot, include_pairs=pair, suite=res.suite.name)
    if plot:
        err.print(f"wrote {plot}")
    if diagnostics or diagnostics_plot:
        # an html page already holds the table (and stdout may be that page): only the plot then
        _show_diagnostics(res, results, diagnostics_plot, err, show=fmt is not ReportFormat.html)


RBaseline = Annotated[str, typer.Option("--baseline", help="Stored run name/id or checkpoint to compare to.")]
RCandidate = Annotated[str, typer.Option("--candidate", help="Checkpoint (or stored run) under test.")]
RMaxDrop = Annotated[
    list[str] | None, typer.Option("--max-drop", help="CATEGORY=POINTS allowed drop (repeatable; AVG allowed).")
]
RMaxDrift = Annotated[
    list[str] | None,
    typer.Option(
        "--max-drift",
        help="[SCOPE:]METRIC=VALUE allowed item-metric drift, e.g. kl=0.01 or DK:kl=0.02 (repeatable); "
        "fails when the CI lies past it.",
    ),
]
RPrevious = Annotated[
    list[str] | None,
    typer.Option(
        "--previous",
        help="The last accepted candidate (stored run or checkpoint; repeat for its seeds): --max-worse gates "
        "the contrast candidate − previous.",
    ),
]
RCandidateSeed = Annotated[
    list[str] | None,
    typer.Option("--candidate-seed", help="More seeds of the candidate (repeatable): a two-level CI for --max-worse."),
]
RMaxWorse = Annotated[
    list[str] | None,
    typer.Option(
        "--max-worse",
        help="[SCOPE:]SIGNAL=VALUE: how much worse than --previous the candidate may be, in the signal's unit "
        "(accuracy in points, flips in items), e.g. kl=0.01 or DK:accuracy=1; fails when the contrast's CI lies "
        "past it (repeatable).",
    ),
]
RSignificance = Annotated[
    float, typer.Option("--significance", help="Fail only when the drop's CI excludes 0 at this level.")
]
RSummary = Annotated[
    Path | None, typer.Option("--summary", help="Markdown summary file (default: $GITHUB_STEP_SUMMARY).")
]
RNBoot = Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates.")]


def regress_cmd(
    baseline: RBaseline,
    candidate: RCandidate,
    max_drop: RMaxDrop = None,
    max_drift: RMaxDrift = None,
    previous: RPrevious = None,
    candidate_seed: RCandidateSeed = None,
    max_worse: RMaxWorse = None,
    significance: RSignificance = 0.05,
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
    summary: RSummary = None,
    n_boot: RNBoot = 2000,
    fmt: Format = OutputFormat.table,
) -> None:
    """Nightly gate: exit 1 if a category dropped more than its budget (significantly), 0 if not, 2 on bad input."""
    from cfbench.comparison import regress

    res = regress(
        baseline, candidate, max_drop=max_drop or [], max_drift=max_drift or [], significance=significance,
        suite=suite, results=results, n_boot=n_boot, previous=previous or [], candidate_seeds=candidate_seed or [],
        max_worse=max_worse or [],
        eval_kwargs=_eval_kwargs(limit, task_limit, backend, model_args, dtype, num_fewshot, arch, data_dir),
    )  # fmt: skip
    md = res.markdown()
    target = summary or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            from cfbench.report.render import to_markdown

            f.write(md + "\n" + to_markdown(res.report) + "\n")
    if fmt is OutputFormat.json:
        emit(to_json(res.to_dict(), ensure_ascii=False))
    elif fmt is OutputFormat.csv:
        emit(to_csv(res.tidy_rows()))
    else:
        typer.echo(md)
    if res.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``compare`` and ``regress`` to the cfbench app."""
    app.command("compare")(compare_cmd)
    app.command("regress")(regress_cmd)


def _emit_html_page(res: Any, results: Path, out: Path | None, plot: Path | None, pair: bool, diag: bool) -> None:
    """The whole page: run metadata from the store, the Δ plot embedded (also written to --plot)."""
    from cfbench.report import html as html_page
    from cfbench.report.plot import plot_report
    from cfbench.store import ResultStore
    from cfbench.store.diagnostics import diagnostics_for_runs

    store = ResultStore(results)
    records = [(r.label, r.record) for r in res.runs]
    plots: list[Any] | bool = True
    if plot is not None:
        plots = [plot_report(res.report, plot, include_pairs=pair, suite=res.suite.name)]
    text = html_page.report_page(
        res.report,
        suite=res.suite.name,
        runs=html_page.run_meta(store, records),
        plots=plots,
        include_pairs=pair,
        diagnostics=diagnostics_for_runs(store, records) if diag else None,
    )
    if out:
        write_atomic(out, text)
    else:
        typer.echo(text)


def _show_diagnostics(res: Any, results: Path, plot: Path | None, err: Console, show: bool = True) -> None:
    """Flatness/sharpness/displacement columns of the compared runs, next to their forgetting (Δ AVG)."""
    from rich.table import Table

    from cfbench.report.render import report_console
    from cfbench.store import ResultStore
    from cfbench.store.diagnostics import DIAGNOSTIC_COLUMNS, diagnostics_for_runs

    frame = diagnostics_for_runs(ResultStore(results), [(r.label, r.record) for r in res.runs])
    forgetting = {
        c.run: 100 * c.avg.delta for c in res.report.base_comparisons if c.avg.delta is not None
    }  # Δ AVG in points; partial AVGs are marked in the report above
    present = [m for m in DIAGNOSTIC_COLUMNS if frame[m].notna().any()]
    if not present:
        err.print(
            "[yellow]note:[/yellow] no stored diagnostics for these checkpoints: run `cfbench landscape` / "
            "`cfbench diff` on them first"
        )
        return
    table = Table(title="Diagnostics (cfbench landscape / diff) vs forgetting")
    for col in ("run", "Δ AVG (points)", *present):
        table.add_column(col, justify="left" if col == "run" else "right")
    for _, row in frame.iterrows():
        d = forgetting.get(row["run"])
        table.add_row(
            str(row["run"]), "-" if d is None else f"{d:+.2f}",
            *("-" if row[m] != row[m] else f"{row[m]:.4g}" for m in present),
        )  # fmt: skip
    if show:
        report_console().print(table)
    if plot:
        from cfbench.analysis.plot import plot_forgetting_vs

        plot_forgetting_vs(frame, forgetting, plot, present)
        err.print(f"wrote {plot}")


def emit_report(report: Any, fmt: ReportFormat, out: Path | None) -> None:
    """Render in the chosen format; files are written atomically."""
    # report pulls in pandas and scipy: imported here so `cfbench --help` stays fast
    from cfbench.report import render
    from cfbench.report.html import to_html
    from cfbench.report.render import print_report, to_markdown

    if fmt is ReportFormat.table and out is None:
        print_report(report)
        return
    text = {
        ReportFormat.table: lambda: to_markdown(report),
        ReportFormat.markdown: lambda: to_markdown(report),
        ReportFormat.html: lambda: to_html(report),
        ReportFormat.csv: lambda: render.to_csv(report),
        ReportFormat.json: lambda: render.to_json(report),
    }[fmt]()
    if out:
        write_atomic(out, text)
    else:
        typer.echo(text)
