"""``cfbench leaderboard``, ``runs``, ``import`` and ``store compact|check``: read and fill the store.

The store and importers are imported inside the commands so ``cfbench --help`` stays fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cfbench.cli.common import Results, check_out_path
from cfbench.cli.output import Format, OutputFormat, emit, to_csv, to_json
from cfbench.errors import CfbenchError


class BoardFormat(str, Enum):
    """table/markdown/html are for people (scores ×100, said in their header); parquet/csv/json for tools
    (fractions in [0, 1], plus a ``partial`` column naming the partial category/AVG columns)."""

    table = "table"
    markdown = "markdown"
    html = "html"
    parquet = "parquet"
    csv = "csv"
    json = "json"


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


def _paper_frames(which: str) -> Any:
    """The paper's reference runs (``--paper``, ``runs --source paper``); imported only when asked for."""
    from cfbench.comparison.paper import paper_frames

    return paper_frames(which)


BoardSuite = Annotated[str | None, typer.Option("--suite", help="Add the suite's categories and AVG (e.g. paper).")]
BoardFmt = Annotated[BoardFormat, typer.Option("--format", help="Output format.")]
BoardSort = Annotated[
    str | None,
    typer.Option(
        "--sort",
        help="Sort by this shown column: scores best first, other columns ascending; -COL descending, +COL ascending.",
    ),
]
BoardDesc = Annotated[bool, typer.Option("--desc", help="Sort --sort's column descending.")]
BoardColumns = Annotated[
    str | None,
    typer.Option("--columns", help="Comma-separated columns to show, in this order (default: all that fit)."),
]
BoardPaper = Annotated[
    PaperRows,
    typer.Option(
        "--paper", help="The paper's reference runs to show first: auto = Table 2(a)'s rows with --suite paper."
    ),
]
BoardOut = Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")]
BoardReference = Annotated[
    str | None,
    typer.Option(
        "--reference",
        help="Stored run to measure item-metric drift against (kl, js, gold_margin columns); needs --suite.",
    ),
]


def leaderboard_cmd(
    results: Results = "results",  # type: ignore[assignment]
    suite: BoardSuite = None,
    fmt: BoardFmt = BoardFormat.table,
    sort: BoardSort = None,
    desc: BoardDesc = False,
    columns: BoardColumns = None,
    paper_rows: BoardPaper = PaperRows.auto,
    out: BoardOut = None,
    reference: BoardReference = None,
) -> None:
    """One row per run, one column per task's primary metric (plus categories and AVG with --suite)."""
    from cfbench.report.board import build_board, render_board
    from cfbench.store import ResultStore

    check_out_path(out, "--out")
    which = paper_rows.value if paper_rows is not PaperRows.auto else ("table2a" if suite == "paper" else "none")
    store = ResultStore(results)
    board = build_board(
        store, suite=suite, sort=sort, descending=desc, reference=reference,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        also=_paper_frames(which) if which != "none" else None,
    )  # fmt: skip
    if board.frame.empty:
        typer.echo(f"no runs in {results} yet: add some with `cfbench eval` or `cfbench import`", err=True)
    title = f"cfbench leaderboard ({results})" + (f", suite {suite}" if suite else "")
    if fmt is BoardFormat.parquet:
        if out is None:
            raise CfbenchError("--format parquet writes a binary file: add --out FILE.parquet")
        board.frame.to_parquet(out, index=False)
    elif fmt is BoardFormat.table:
        _print_table(board.frame, title, out, board.categories, chosen=bool(columns))
    else:
        _emit(render_board(board, fmt.value, title=title, store=store), out)
    if out is not None:
        typer.echo(f"wrote {out}", err=True)


RunsSource = Annotated[
    str | None,
    typer.Option("--source", help="Only runs of this source: cfbench, lm-eval, opencompass or paper."),
]
#: Columns of ``cfbench runs --format json/csv``.
RUN_COLUMNS = ("name", "run_id", "source", "checkpoint_name", "checkpoint_hash", "method", "base", "suite",
               "created_at")  # fmt: skip


def runs_cmd(
    results: Results = "results",  # type: ignore[assignment]
    source: RunsSource = None,
    fmt: Format = OutputFormat.table,
) -> None:
    """List stored runs (name, id, source, checkpoint, method, base); --source paper lists the paper's."""
    from cfbench.report.leaderboard import runs_listing
    from cfbench.store import ResultStore
    from cfbench.store.schema import SOURCES

    if source is not None and source not in SOURCES:
        raise CfbenchError(f"--source {source!r} is unknown: use one of {', '.join(SOURCES)}")
    if source == "paper":
        runs = _paper_frames("all")[0]
        where = "cfbench's read-only paper store (docs/paper-results.md)"
    else:
        runs = ResultStore(results).runs()
        runs = runs if source is None else runs[runs["source"] == source]
        where = str(results)
    if runs.empty and fmt is OutputFormat.table:
        typer.echo(f"no {source + ' ' if source else ''}runs in {where}", err=True)
        return
    rows = runs[[c for c in RUN_COLUMNS if c in runs.columns]].to_dict(orient="records")
    if fmt is OutputFormat.json:
        emit(to_json(rows, ensure_ascii=False))
    elif fmt is OutputFormat.csv:
        emit(to_csv(rows, RUN_COLUMNS))
    else:
        typer.echo(runs_listing(runs), nl=False)
    typer.echo(f"{len(runs)} run(s) in {where}", err=True)


ImportFile = Annotated[
    Path, typer.Argument(help="lm-eval results_*.json (or its folder), or an OpenCompass summary CSV.")
]
ImportName = Annotated[
    str | None,
    typer.Option("--name", help="Run name (default: lm-eval's model name / the CSV's model columns)."),
]
ImportFmt = Annotated[ImportFormat, typer.Option("--from", help="Which harness wrote FILE (auto: from its content).")]


def import_cmd(
    file: ImportFile,
    name: ImportName = None,
    results: Results = "results",  # type: ignore[assignment]
    fmt: ImportFmt = ImportFormat.auto,
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


def compact_cmd(results: Results = "results") -> None:  # type: ignore[assignment]
    """Merge each table's part files into one (faster reads); safe while others write."""
    from cfbench.store import ResultStore

    store = ResultStore(results)
    store.compact()
    typer.echo(f"compacted {results}")


Fix = Annotated[
    bool, typer.Option("--fix", help="Move bad parts to RESULTS/_quarantine/ and delete killed writers' temps.")
]


def check_cmd(results: Results = "results", fix: Fix = False) -> None:  # type: ignore[assignment]
    """Verify every Parquet part (readable, right schema), that every run's items are all there and that no
    killed writer left temp files; exit 1 if anything is wrong (--fix moves bad parts aside and deletes the
    temps; missing items need a re-score)."""
    from cfbench.store.check import check_store, dead_temps, missing_items, move_aside, remove_dead_temps

    root = Path(results)
    bad, temps = check_store(root), dead_temps(root)
    for b in bad:
        typer.echo(f"bad part {b.path}: {b.problem}")
    for t in temps:
        typer.echo(f"temp {t}: left by a writer that was killed (its process is gone)")
    if (bad or temps) and not fix:
        typer.echo("run again with --fix to move bad parts aside and delete the temps")
        raise typer.Exit(1)
    if temps:
        typer.echo(f"deleted {len(remove_dead_temps(root))} temp(s) of killed writers")
    if bad:
        moved = move_aside(root, bad)
        typer.echo(f"moved {len(moved)} bad part(s) to {root / '_quarantine'}; re-run eval to re-score")
    short = missing_items(root)
    for s in short:
        typer.echo(f"missing items: {s.message(root)}")
    if short:
        raise typer.Exit(1)
    if not bad and not temps:
        typer.echo(f"{results}: all parts readable, every run's items present")


def register(app: typer.Typer) -> None:
    """Add ``leaderboard``, ``runs``, ``import`` and ``store compact|check`` to the cfbench app."""
    app.command("leaderboard")(leaderboard_cmd)
    app.command("runs")(runs_cmd)
    app.command("import")(import_cmd)
    store_app = typer.Typer(help="Maintain the results store.", no_args_is_help=True)
    store_app.command("compact")(compact_cmd)
    store_app.command("check")(check_cmd)
    app.add_typer(store_app, name="store")
