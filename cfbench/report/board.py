"""``cfbench leaderboard`` as a library call: the board a set of options asks for, and its renderings.

:func:`build_board` applies the suite's categories (judged against its reference suite, as
``compare`` does), the drift columns against a reference run, the sort and the column choice to
:func:`cfbench.report.leaderboard.leaderboard`; :func:`render_board` turns the frame into markdown,
csv, json or html text. The terminal table (which hides what does not fit) stays with the CLI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cfbench.csvsafe import frame_to_csv
from cfbench.errors import CfbenchError
from cfbench.report.html import leaderboard_page, run_meta_from_frame
from cfbench.report.leaderboard import (
    add_drift_columns,
    is_drift_column,
    leaderboard,
    select_columns,
    sort_board,
    to_markdown,
)
from cfbench.store import ResultStore
from cfbench.tasks.registry import load_suite


def suite_categories(name: str) -> dict[str, list[str]]:
    """Category map of suite ``name`` from the task registry."""
    return {str(cat): list(tasks) for cat, tasks in dict(load_suite(name).categories).items()}


def suite_reference(name: str) -> str:
    """The suite whose task lists judge suite ``name``'s coverage (its ``reference:``, else paper)."""
    return str(getattr(load_suite(name), "reference", "paper"))


@dataclass
class Board:
    """The leaderboard frame (fractions in [0, 1]) and the suite's category columns in it."""

    frame: pd.DataFrame
    categories: list[str]


def _check(suite: str | None, sort: str | None, descending: bool, reference: str | None) -> bool:
    """Option combinations that cannot work, refused before the store is read; returns: sort by drift."""
    if descending and sort is None:
        raise CfbenchError("--desc needs --sort COLUMN")
    if reference is not None and not suite:
        raise CfbenchError("--reference needs --suite: drift is averaged over the suite's categories as in compare")
    drift_sort = sort is not None and is_drift_column(sort.lstrip("+-"))
    if drift_sort and reference is None:
        raise CfbenchError(f"can't sort by {sort!r} without --reference RUN (the run drift is measured against)")
    return drift_sort


def build_board(
    store: ResultStore,
    *,
    suite: str | None = None,
    sort: str | None = None,
    descending: bool = False,
    columns: Sequence[str] | None = None,
    reference: str | None = None,
    also: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> Board:
    """One row per run of ``store`` (after ``also``'s runs, e.g. the paper's), one column per task.

    ``suite`` adds its categories and AVG. A suite that reuses the paper's category names (offline) is
    judged against its reference suite's task lists (the paper's by default), exactly as ``compare``
    does, so both show the same partial (†) categories and AVG. ``reference`` (a stored run) adds one
    drift column per item metric; ``sort`` may name one of them.
    """
    drift_sort = _check(suite, sort, descending, reference)
    cats = suite_categories(suite) if suite else None
    ref_name = suite_reference(suite) if suite else "paper"
    paper = suite_categories(ref_name) if cats and suite != ref_name else {}
    paper_ref = {k: v for k, v in paper.items() if k in (cats or {})} or None
    board = leaderboard(store, suite=cats, sort=None if drift_sort else sort, reference=paper_ref, also=also,
                        descending=descending)  # fmt: skip
    if reference is not None and cats:
        board = add_drift_columns(board, store, reference, cats, load_suite(suite or "").extras)
        if drift_sort and sort is not None:
            board = sort_board(board, sort, descending=descending)
    if columns:
        board = select_columns(board, list(columns))
    return Board(board, list(cats or {}))


def _plain(v: Any) -> Any:
    """A JSON-ready cell: missing or non-finite → None, numpy scalars → Python, times → ISO 8601."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def board_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts: the csv's columns and values (fractions in [0, 1]), missing values None."""
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def render_board(board: Board, fmt: str, *, title: str, store: ResultStore | None = None) -> str:
    """``fmt`` markdown, csv (fractions, plus ``partial``), json (the csv's rows as objects) or html (a
    page with each run's metadata from ``store``)."""
    if fmt == "markdown":
        return to_markdown(board.frame)
    if fmt == "csv":
        return frame_to_csv(board.frame)
    if fmt == "html":
        runs = run_meta_from_frame(store, board.frame) if store is not None else None
        return leaderboard_page(board.frame, title=title, categories=board.categories, runs=runs)
    if fmt == "json":
        return json.dumps(board_records(board.frame), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    raise CfbenchError(f"leaderboard format {fmt!r} is not a text format: use markdown, csv, json or html")
