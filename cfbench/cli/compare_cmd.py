"""``cfbench compare`` (the forgetting report) and ``cfbench regress`` (the nightly gate)."""

from __future__ import annotations

import os
import sys
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
    parse_model_args,
    parse_task_limits,
)
from cfbench.errors import CfbenchError
from cfbench.report.html import to_html
from cfbench.report.render import print_report, to_csv, to_json, to_markdown


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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_cmd(
        base: Annotated[str, typer.Argument(help="Base checkpoint or stored run name/id.")],
        tuned: Annotated[list[str], typer.Argument(help="One or more tuned checkpoints or stored runs.")],
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
        labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated row labels, base first.")] = None,
        pair: Annotated[
            bool, typer.Option("--pair", help="Treat the two tuned runs as a w/o–w/ pair and add their Δ.")
        ] = False,
        fmt: Annotated[ReportFormat, typer.Option("--format", help="table, markdown, html, csv or json.")] = (
            ReportFormat.table
        ),
        out: Annotated[Path | None, typer.Option("--out", help="Write the report here instead of stdout.")] = None,
        plot: Annotated[Path | None, typer.Option("--plot", help="Also write a PNG of Δ with CI error bars.")] = None,
        diagnostics: Annotated[
            bool,
            typer.Option(
                "--diagnostics", help="Also show stored flatness/sharpness/displacement (cfbench landscape/diff)."
            ),
        ] = False,
        diagnostics_plot: Annotated[
            Path | None, typer.Option("--diagnostics-plot", help="PNG: forgetting (Δ AVG) vs each diagnostic.")
        ] = None,
        n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates for the CIs.")] = 2000,
        seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
        noise_floor: Annotated[
            str | None,
            typer.Option(
                "--noise-floor",
                help="Stored run of the base scored another way (backend/dtype/scoring path): divergences "
                "(kl, js) are significant only above this floor.",
            ),
        ] = None,
        workers: Workers = None,
        devices: Devices = None,
        runner: Runner = "local",
        ray_address: RayAddress = None,
        ppl: Annotated[
            str | None,
            typer.Option("--ppl", help="Also held-out perplexity drift on this text (as cfbench ppl --data)."),
        ] = None,
        ppl_limit: Annotated[int | None, typer.Option("--ppl-limit", help="Documents of the --ppl text.")] = None,
    ) -> None:
        """Paper-style forgetting table: DK, Understanding, Reasoning, Exams, AVG, Δ (+ CIs, McNemar, flips)."""
        from cfbench.comparison import compare

        if ppl is not None:  # a bad --ppl is refused before anything is scored
            from cfbench.data.text import load_text_source

            load_text_source(ppl)
            if ppl_limit is not None and ppl_limit <= 0:
                raise CfbenchError(f"--ppl-limit must be a positive number of documents, got {ppl_limit}")
        check_out_path(out, "--out")
        check_out_path(plot, "--plot")
        check_out_path(diagnostics_plot, "--diagnostics-plot")
        label_list = [x.strip() for x in labels.split(",")] if labels else None
        if pair and len(tuned) != 2:
            raise CfbenchError(f"--pair needs exactly two tuned runs (w/o, then w/), got {len(tuned)}")
        names = label_list[1:] if label_list else tuned
        pool = None
        if workers is not None or devices is not None or runner != "local" or ray_address:
            from cfbench.scale.workers import make_runner

            pool = make_runner(workers, devices, runner, ray_address)
        res = compare(
            base,
            tuned,
            suite=suite,
            results=results,
            labels=label_list,
            n_boot=n_boot,
            seed=seed,
            pairs=[(names[0], names[1])] if pair else None,
            eval_kwargs=_eval_kwargs(limit, task_limit, backend, model_args, dtype, num_fewshot, arch, data_dir),
            noise_floor=noise_floor,
            runner=pool,
        )
        if ppl is not None:  # held-out perplexity drift, one forgot-signal per tuned run
            from cfbench.metrics.ppl_drift import ppl_drift_for_runs

            for row in ppl_drift_for_runs(
                [(r.label, r.record) for r in res.runs], data=ppl, limit=ppl_limit, backend=backend,
                backend_options=parse_model_args(model_args, dtype), results=results, n_boot=n_boot, seed=seed,
                progress="auto",
            ):  # fmt: skip
                res.report.add_signals(row.label, [row.signal])
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

    @app.command("regress")
    def regress_cmd(
        baseline: Annotated[str, typer.Option("--baseline", help="Stored run name/id or checkpoint to compare to.")],
        candidate: Annotated[str, typer.Option("--candidate", help="Checkpoint (or stored run) under test.")],
        max_drop: Annotated[
            list[str] | None,
            typer.Option("--max-drop", help="CATEGORY=POINTS allowed drop (repeatable; AVG allowed)."),
        ] = None,
        max_drift: Annotated[
            list[str] | None,
            typer.Option(
                "--max-drift",
                help="[SCOPE:]METRIC=VALUE allowed item-metric drift, e.g. kl=0.01 or DK:kl=0.02 (repeatable); "
                "fails when the CI lies past it.",
            ),
        ] = None,
        significance: Annotated[
            float, typer.Option("--significance", help="Fail only when the drop's CI excludes 0 at this level.")
        ] = 0.05,
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
        summary: Annotated[
            Path | None, typer.Option("--summary", help="Markdown summary file (default: $GITHUB_STEP_SUMMARY).")
        ] = None,
        n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates.")] = 2000,
    ) -> None:
        """Nightly gate: exit 1 if a category dropped more than its budget (significantly), 0 if not, 2 on bad input."""
        from cfbench.comparison import compare, drift_gate, gate, gate_markdown, parse_budgets, parse_drift_budgets
        from cfbench.tasks.registry import load_suite

        if not 0 < significance < 1:
            raise CfbenchError(f"--significance {significance} must be in (0, 1), e.g. 0.05")
        if not max_drop and not max_drift:
            raise CfbenchError(
                "give at least one --max-drop CATEGORY=POINTS or --max-drift METRIC=VALUE budget, "
                "e.g. --max-drop DK=1.5"
            )
        suite_obj = load_suite(suite)
        budgets = parse_budgets(max_drop, suite_obj) if max_drop else []  # validate before any scoring
        drift_budgets = parse_drift_budgets(max_drift or [], suite_obj)
        res = compare(
            baseline,
            [candidate],
            suite=suite,
            results=results,
            n_boot=n_boot,
            confidence=1 - significance,
            pairs=[],
            eval_kwargs=_eval_kwargs(limit, task_limit, backend, model_args, dtype, num_fewshot, arch, data_dir),
        )
        lines = gate(res.report, budgets, significance)
        drift_lines = drift_gate(res.report, res.runs[1].label, drift_budgets)
        md = gate_markdown(res.runs[0].label, res.runs[1].label, lines, significance, drift_lines)
        target = summary or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
        if target:
            with open(target, "a", encoding="utf-8") as f:
                f.write(md + "\n" + to_markdown(res.report) + "\n")
        typer.echo(md)
        if any(x.failed for x in [*lines, *drift_lines]):
            raise typer.Exit(1)


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
        _write_atomic(out, text)
    else:
        typer.echo(text)


def _show_diagnostics(res: Any, results: Path, plot: Path | None, err: Console, show: bool = True) -> None:
    """Flatness/sharpness/displacement columns of the compared runs, next to their forgetting (Δ AVG)."""
    from rich.table import Table

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
        Console(width=None if sys.stdout.isatty() else 160).print(table)
    if plot:
        from cfbench.analysis.plot import plot_forgetting_vs

        plot_forgetting_vs(frame, forgetting, plot, present)
        err.print(f"wrote {plot}")


def emit_report(report: Any, fmt: ReportFormat, out: Path | None) -> None:
    """Render in the chosen format; files are written atomically."""
    if fmt is ReportFormat.table and out is None:
        print_report(report, Console(width=None if sys.stdout.isatty() else 160))
        return
    text = {
        ReportFormat.table: lambda: to_markdown(report),
        ReportFormat.markdown: lambda: to_markdown(report),
        ReportFormat.html: lambda: to_html(report),
        ReportFormat.csv: lambda: to_csv(report),
        ReportFormat.json: lambda: to_json(report),
    }[fmt]()
    if out:
        _write_atomic(out, text)
    else:
        typer.echo(text)
