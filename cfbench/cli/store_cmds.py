"""``cfbench leaderboard``, ``cfbench import`` and ``cfbench store compact``: read and fill the store.

The store and importers are imported inside the commands so ``cfbench --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cfbench.cli.common import Results
from cfbench.errors import CfbenchError


class BoardFormat(str, Enum):
    """table/markdown/html are for people (scores ×100, said in their header); parquet/csv for tools
    (fractions in [0, 1], plus a ``partial`` column naming the partial category/AVG columns)."""

    table = "table"
    markdown = "markdown"
    html = "html"
    parquet = "parquet"
    csv = "csv"


class PaperRows(str, Enum):
    """Which of the paper's reference runs the leaderboard shows next to the store's runs."""

    auto = "auto"  # Table 2(a)'s rows with --suite paper, none otherwise
    table2a = "table2a"
    all = "all"
    none = "none"


class ImportFormat(str, Enum):
    """Which harness wrote the file; ``auto`` tells from its name and contents."""

    auto = "auto"
    lm_eval = "lm-eval"
    opencompass = "opencompass"


def suite_categories(name: str) -> dict[str, list[str]]:
    """Category map of suite ``name`` from the task registry (imported lazily: it is optional here)."""
    try:
        registry = importlib.import_module("cfbench.tasks.registry")
    except ModuleNotFoundError as exc:
        if exc.name not in ("cfbench.tasks.registry", "cfbench.tasks"):
            raise
        raise CfbenchError(
            "--suite needs the task registry (cfbench.tasks.registry), which this cfbench lacks: "
            "drop --suite to list every task without categories"
        ) from exc
    suite = registry.load_suite(name)
    return {str(cat): list(tasks) for cat, tasks in dict(suite.categories).items()}


def suite_reference(name: str) -> str:
    """The suite whose task lists judge suite ``name``'s coverage (its ``reference:``, else paper)."""
    registry = importlib.import_module("cfbench.tasks.registry")
    return str(getattr(registry.load_suite(name), "reference", "paper"))


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")


def _print_table(board: object, title: str, out: Path | None, categories: list[str], chosen: bool) -> None:
    """Rich table, one line per run: columns that don't fit the terminal are hidden (and named on stderr).

    ``chosen`` (the user gave --columns) shows exactly those columns, however wide.
    """
    from rich.console import Console

    from cfbench.report.leaderboard import fit_width, to_rich_table

    if out is not None:
        with open(out, "w", encoding="utf-8") as f:
            Console(file=f, width=1000).print(to_rich_table(board, title))  # type: ignore[arg-type]
        return
    console = Console()
    hidden: list[str] = []
    if not chosen:
        board, hidden = fit_width(board, console.width, categories)  # type: ignore[arg-type]
    console.print(to_rich_table(board, title))  # type: ignore[arg-type]
    if hidden:
        typer.echo(
            f"hidden to fit {console.width} columns: {', '.join(hidden)} (choose with --columns, or use "
            "--format markdown/csv for everything)",
            err=True,
        )


def _with_drift(board: object, store: object, reference: str, suite: str, cats: dict[str, list[str]]) -> object:
    """``--reference``: one ``METRIC vs ref`` column per registered item metric (cfbench.metrics)."""
    from cfbench.report.leaderboard import add_drift_columns
    from cfbench.tasks.registry import load_suite

    return add_drift_columns(board, store, reference, cats, load_suite(suite).extras)  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    """Add ``leaderboard``, ``import`` and ``store compact`` to the cfbench app."""

    @app.command("leaderboard")
    def leaderboard_cmd(
        results: Results = "results",  # type: ignore[assignment]
        suite: Annotated[
            str | None, typer.Option("--suite", help="Add the suite's categories and AVG (e.g. paper).")
        ] = None,
        fmt: Annotated[BoardFormat, typer.Option("--format", help="Output format.")] = BoardFormat.table,
        sort: Annotated[
            str | None,
            typer.Option(
                "--sort",
                help="Sort by this shown column: scores best first, other columns ascending; -COL descending, "
                "+COL ascending.",
            ),
        ] = None,
        desc: Annotated[bool, typer.Option("--desc", help="Sort --sort's column descending.")] = False,
        columns: Annotated[
            str | None,
            typer.Option("--columns", help="Comma-separated columns to show, in this order (default: all that fit)."),
        ] = None,
        paper_rows: Annotated[
            PaperRows,
            typer.Option(
                "--paper",
                help="The paper's reference runs to show first: auto = Table 2(a)'s rows with --suite paper.",
            ),
        ] = PaperRows.auto,
        out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
        reference: Annotated[
            str | None,
            typer.Option(
                "--reference",
                help="Stored run to measure item-metric drift against (kl, js, gold_margin columns); needs --suite.",
            ),
        ] = None,
    ) -> None:
        """One row per run, one column per task's primary metric (plus categories and AVG with --suite)."""
        from cfbench.report.html import leaderboard_page as to_html
        from cfbench.report.leaderboard import leaderboard, select_columns, to_markdown
        from cfbench.store import ResultStore

        if desc and sort is None:
            raise CfbenchError("--desc needs --sort COLUMN")
        cats = suite_categories(suite) if suite else None
        # A suite that reuses the paper's category names (offline) is judged against its reference
        # suite's task lists (the paper's by default), exactly as `compare` does, so both show the
        # same partial (†) categories and AVG.
        ref_name = suite_reference(suite) if suite else "paper"
        paper = suite_categories(ref_name) if cats and suite != ref_name else {}
        paper_ref = {k: v for k, v in paper.items() if k in (cats or {})} or None
        drift_ref = reference
        from cfbench.cli.common import check_out_path

        check_out_path(out, "--out")
        which = paper_rows.value if paper_rows is not PaperRows.auto else ("table2a" if suite == "paper" else "none")
        also = None
        if which != "none":
            from cfbench.comparison.paper import paper_frames

            also = paper_frames(which)
        from cfbench.report.leaderboard import is_drift_column, sort_board

        if drift_ref is not None and not cats:
            raise CfbenchError("--reference needs --suite: drift is averaged over the suite's categories as in compare")
        drift_sort = sort is not None and is_drift_column(sort.lstrip("+-"))
        if drift_sort and drift_ref is None:
            raise CfbenchError(f"can't sort by {sort!r} without --reference RUN (the run drift is measured against)")
        store = ResultStore(results)
        board = leaderboard(store, suite=cats, sort=None if drift_sort else sort, reference=paper_ref, also=also,
                            descending=desc)  # fmt: skip
        if drift_ref is not None and cats:
            board = _with_drift(board, store, drift_ref, suite or "", cats)
            if drift_sort:
                board = sort_board(board, sort, descending=desc)  # type: ignore[arg-type]
        if columns:
            board = select_columns(board, [c.strip() for c in columns.split(",") if c.strip()])
        if board.empty:
            typer.echo(f"no runs in {results} yet: add some with `cfbench eval` or `cfbench import`", err=True)
        if fmt is BoardFormat.parquet:
            if out is None:
                raise CfbenchError("--format parquet writes a binary file: add --out FILE.parquet")
            board.to_parquet(out, index=False)
        elif fmt is BoardFormat.csv:
            _emit(board.to_csv(index=False), out)
        elif fmt is BoardFormat.markdown:
            _emit(to_markdown(board), out)
        elif fmt is BoardFormat.html:
            from cfbench.report.html import run_meta_from_frame

            title = f"cfbench leaderboard ({results})" + (f", suite {suite}" if suite else "")
            _emit(to_html(board, title=title, categories=list(cats or {}), runs=run_meta_from_frame(store, board)), out)
        else:
            title = f"cfbench leaderboard ({results})" + (f", suite {suite}" if suite else "")
            _print_table(board, title, out, list(cats or {}), chosen=bool(columns))
        if out is not None:
            typer.echo(f"wrote {out}", err=True)

    @app.command("runs")
    def runs_cmd(
        results: Results = "results",  # type: ignore[assignment]
        source: Annotated[
            str | None,
            typer.Option("--source", help="Only runs of this source: cfbench, lm-eval, opencompass or paper."),
        ] = None,
    ) -> None:
        """List stored runs (name, id, source, checkpoint, method, base); --source paper lists the paper's."""
        from cfbench.store import ResultStore
        from cfbench.store.schema import SOURCES

        if source is not None and source not in SOURCES:
            raise CfbenchError(f"--source {source!r} is unknown: use one of {', '.join(SOURCES)}")
        if source == "paper":
            from cfbench.comparison.paper import paper_frames

            runs = paper_frames("all")[0]
            where = "cfbench's read-only paper store (docs/paper-results.md)"
        else:
            runs = ResultStore(results).runs()
            runs = runs if source is None else runs[runs["source"] == source]
            where = str(results)
        if runs.empty:
            typer.echo(f"no {source + ' ' if source else ''}runs in {where}", err=True)
            return
        from cfbench.report.leaderboard import runs_listing

        typer.echo(runs_listing(runs), nl=False)
        typer.echo(f"{len(runs)} run(s) in {where}", err=True)

    @app.command("import")
    def import_cmd(
        file: Annotated[
            Path, typer.Argument(help="lm-eval results_*.json (or its folder), or an OpenCompass summary CSV.")
        ],
        name: Annotated[
            str | None,
            typer.Option("--name", help="Run name (default: lm-eval's model name / the CSV's model columns)."),
        ] = None,
        results: Results = "results",  # type: ignore[assignment]
        fmt: Annotated[ImportFormat, typer.Option("--format", help="Input format.")] = ImportFormat.auto,
    ) -> None:
        """Add another harness's scores to the store as runs (source lm-eval or opencompass)."""
        from cfbench.importers import import_file
        from cfbench.store import ResultStore

        result = import_file(file, ResultStore(results), name=name, fmt=fmt.value)
        for warning in result.warnings:
            typer.echo(f"warning: {warning}", err=True)
        for run_name, run_id in zip(result.names, result.run_ids, strict=True):
            typer.echo(f"imported {run_name} (run {run_id[:8]})")
        typer.echo(f"{result.n_scores} task scores, {result.n_items} items -> {results}")

    store_app = typer.Typer(help="Maintain the results store.", no_args_is_help=True)

    @store_app.command("compact")
    def compact_cmd(results: Results = "results") -> None:  # type: ignore[assignment]
        """Merge each table's part files into one (faster reads); safe while others write."""
        from cfbench.store import ResultStore

        store = ResultStore(results)
        store.compact()
        typer.echo(f"compacted {results}")

    @store_app.command("check")
    def check_cmd(
        results: Results = "results",  # type: ignore[assignment]
        fix: Annotated[bool, typer.Option("--fix", help="Move bad parts to RESULTS/_quarantine/.")] = False,
    ) -> None:
        """Verify every Parquet part (readable, right schema); exit 1 if any is bad and --fix was not given."""
        from cfbench.store.check import check_store, move_aside

        bad = check_store(Path(results))
        for b in bad:
            typer.echo(f"bad part {b.path}: {b.problem}")
        if not bad:
            typer.echo(f"{results}: all parts readable")
            return
        if fix:
            moved = move_aside(Path(results), bad)
            typer.echo(f"moved {len(moved)} bad part(s) to {Path(results) / '_quarantine'}; re-run eval to re-score")
            return
        typer.echo("run again with --fix to move them aside")
        raise typer.Exit(1)

    app.add_typer(store_app, name="store")
