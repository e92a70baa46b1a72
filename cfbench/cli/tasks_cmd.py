"""``cfbench tasks``: list the suite with categories, data source, split, rows and config hash."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cfbench.cli.output import Format, OutputFormat, emit, to_csv, to_json
from cfbench.tasks.listing import TaskStatus, task_statuses

TaskSuite = Annotated[str, typer.Option(help="Suite to list ('all' for every registered task).")]
TaskDataDir = Annotated[
    Path | None, typer.Option("--data-dir", envvar="CFBENCH_DATA_DIR", help="OpenCompass-style data/ folder.")
]


def tasks(suite: TaskSuite = "paper", data_dir: TaskDataDir = None, fmt: Format = OutputFormat.table) -> None:
    """List tasks: category, where the data was found, split, rows, config hash (missing ones with the fix)."""
    statuses = task_statuses(None if suite == "all" else suite, data_dir)
    if fmt is OutputFormat.json:
        emit(to_json([s.to_dict() for s in statuses], ensure_ascii=False))
    elif fmt is OutputFormat.csv:
        emit(to_csv([s.to_dict() for s in statuses]))
    else:
        print_tasks(statuses, suite)


def print_tasks(statuses: list[TaskStatus], suite: str) -> None:
    """The rich table, then one line per missing task saying how to get its data."""
    table = Table(title=f"cfbench tasks — suite {suite}")
    for col in ("task", "category", "prompt", "split", "source", "rows", "config hash"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for s in statuses:
        src = s.source if s.source != "missing" else "[red]missing[/red]"
        rows = f"{s.rows:,}" if s.rows is not None else "-"
        table.add_row(s.task, s.category, s.prompt_source, s.split, src, rows, s.config_hash)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for s in statuses:
        if s.fix:
            console.print(f"[yellow]missing[/yellow] {s.fix}", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``tasks`` to the cfbench app."""
    app.command("tasks")(tasks)
