"""One row per run, one column per task: the table every comparison starts from.

Scale: the frame and the machine formats (csv, parquet) hold fractions in [0, 1]; every human
format (table, markdown, html) shows ×100 with two decimals and says so in its header.

Category columns (the paper's DK / Understanding / Reasoning / Exams) and AVG are computed by
:func:`cfbench.report.table.category_scores`, the same function ``compare`` uses, so both show the
same numbers for the same runs: a category is the mean of the tasks a run has, AVG the mean of the
scored categories. Where that is not the full set (judged against ``reference``, the paper's task
lists when a suite uses its category names) the value is *partial*: the ``partial`` column names
those columns and human formats mark them with †.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.metrics import registered_metrics
from cfbench.metrics.drift import OVERALL, DriftSettings, drift_signals, load_choice_frames
from cfbench.report.table import category_scores
from cfbench.store.store import ResultStore
from cfbench.tasks.registry import DEFAULT_METRIC, primary_metric

#: Run columns, before the scores. ``n`` is the number of items behind the run's task scores (blank for
#: runs that report none, e.g. the paper's); ``few-shot`` is the run's num_fewshot override (blank: each
#: task's own default).
INFO_COLUMNS = [
    "name", "run_id", "source", "checkpoint_hash", "base", "method", "suite", "limit", "n", "few-shot", "backend",
    "created_at",
]  # fmt: skip
#: Store column behind each renamed info column.
_RUN_FIELDS = {"few-shot": "num_fewshot"}
#: When a terminal table is too wide, info columns are hidden in this order (then extra tasks, then suite tasks).
DROP_ORDER = ["created_at", "checkpoint_hash", "run_id", "backend", "few-shot", "limit", "n", "suite", "base",
              "source", "method"]  # fmt: skip
AVG = "AVG"
#: Comma-separated names of the category/AVG columns that are partial for the run ("" if none).
PARTIAL_COLUMN = "partial"
SCALE_NOTE = "scores ×100; † partial (a task or category missing)"


def score_columns(df: pd.DataFrame) -> list[str]:
    """The numeric score columns of a leaderboard frame (everything but the run info and drift columns)."""
    return [c for c in df.columns if c not in INFO_COLUMNS and c != PARTIAL_COLUMN and not is_drift_column(c)]


# -- drift vs a reference run (cfbench.metrics): separate from the score columns on purpose ---------
#: Drift columns are named ``METRIC vs ref`` and hold the metric in its own unit (nats), never ×100.
DRIFT_SUFFIX = " vs ref"


def is_drift_column(col: object) -> bool:
    return str(col).endswith(DRIFT_SUFFIX)


def add_drift_columns(
    table: pd.DataFrame,
    store: ResultStore,
    reference: str,
    suite: Mapping[str, Sequence[str]],
    extras: Sequence[str] = (),
) -> pd.DataFrame:
    """One ``METRIC vs ref`` column per registered item metric: each run against ``reference``.

    The value is the overall (AVG-style) one ``compare`` shows for that run against the reference:
    items paired by fingerprint, mean of category means. No bootstrap here (a leaderboard ranks; use
    ``compare`` for CIs and the noise floor). Blank: the reference itself, or no paired log-probs.
    """
    ref = store.find_run(reference)
    tasks = [*(t for m in suite.values() for t in m), *extras]
    # Rows from elsewhere (the paper's reference runs) have no items in this store: left blank.
    stored = store.runs()
    found = {r: store.match_run(r, stored) for r in table["run_id"] if r != ref.run_id}
    others = [r for r, rec in found.items() if rec is not None and rec.run_id == r]
    records = {ref.run_id: ref, **{r: found[r] for r in others}}
    frames, _ = load_choice_frames(store, records, tasks)
    result = drift_signals(frames, ref.run_id, others, suite, extras, settings=DriftSettings(n_boot=0))
    out = table.copy()
    overall = {(run, s.name): s.value for run, sigs in result.signals.items() for s in sigs if s.scope == OVERALL}
    for m in registered_metrics():
        out[m.name + DRIFT_SUFFIX] = [overall.get((r, m.name), float("nan")) for r in out["run_id"]]
    return out


def leaderboard(
    store: ResultStore,
    suite: Mapping[str, Sequence[str]] | None = None,
    sort: str | None = None,
    metrics: Mapping[str, str] | None = None,
    reference: Mapping[str, Sequence[str]] | None = None,
    also: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    descending: bool = False,
) -> pd.DataFrame:
    """Pivot the store's task scores to one row per run and one column per task.

    Each task column holds the task's primary metric (:func:`primary_metric`); a run that lacks it
    but has ``acc`` shows ``acc`` (OpenCompass imports report only accuracy, as the paper's table
    does). ``suite`` is a category map ``{category: [task, ...]}``: its tasks come first (in its
    order, shown even when no run has them), then one column per category and ``AVG``; other tasks
    in the store follow. ``sort`` names a column (see :func:`sort_board`); the default is oldest run
    first. Partial scores (``subset`` set, e.g. MMLU groups) are not shown. ``also`` is a ``(runs,
    task_scores)`` pair from another store shown before the store's own runs (the paper's reference
    runs, :func:`cfbench.comparison.paper.paper_frames`).
    """
    runs = store.runs()
    scores = store.task_scores()
    if also is not None:
        runs = pd.concat([also[0], runs], ignore_index=True) if len(also[0]) else runs
        scores = pd.concat([also[1], scores], ignore_index=True) if len(also[1]) else scores
        # --results pointed at the paper store itself: each run once.
        runs = runs.drop_duplicates("run_id").reset_index(drop=True)
        scores = scores.drop_duplicates(["run_id", "task", "metric", "subset"])
    scores = scores[scores["subset"].isna()]

    suite_tasks: list[str] = []
    for tasks in (suite or {}).values():
        suite_tasks += [t for t in tasks if t not in suite_tasks]
    columns = suite_tasks + sorted(set(scores["task"]) - set(suite_tasks))
    chosen = {task: primary_metric(task, metrics) for task in columns}

    values: dict[tuple[str, str, str], float] = {}
    for r, t, m, v in zip(scores["run_id"], scores["task"], scores["metric"], scores["value"], strict=True):
        values[(r, t, m)] = float(v)  # later duplicates win
    table = run_info(runs, scores)
    nan = float("nan")
    for task in columns:
        m = chosen[task]
        table[task] = [values.get((r, task, m), values.get((r, task, DEFAULT_METRIC), nan)) for r in table["run_id"]]

    if suite:
        cat_values: dict[str, list[float]] = {c: [] for c in [*suite, AVG]}
        partial: list[str] = []
        for _, row in table.iterrows():
            have = {t: float(row[t]) for t in suite_tasks if not pd.isna(row[t])}
            cats, avg = category_scores(have, suite, reference)
            for cs in [*cats.values(), avg]:
                cat_values[cs.name].append(nan if cs.score is None else cs.score)
            partial.append(",".join(cs.name for cs in [*cats.values(), avg] if cs.coverage.partial))
        for name, vals in cat_values.items():
            table[name] = pd.Series(vals, index=table.index, dtype="float64")
        table[PARTIAL_COLUMN] = partial

    if sort is not None:
        table = sort_board(table, sort, descending=descending)
    return table.reset_index(drop=True)


def run_info(runs: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """The info columns of each run (``scores``: task-level rows, used for ``n``)."""
    table = pd.DataFrame({c: runs[_RUN_FIELDS.get(c, c)] for c in INFO_COLUMNS if c != "n"}).reset_index(drop=True)
    # One metric row per task carries the task's item count; several metrics of a task repeat it.
    per_task = scores.dropna(subset=["n_items"]).groupby(["run_id", "task"])["n_items"].max()
    n = per_task.groupby(level="run_id").sum()
    table.insert(INFO_COLUMNS.index("n"), "n",
                 pd.array([n.get(r, pd.NA) for r in table["run_id"]], dtype="Int64"))  # fmt: skip
    return table


def sort_board(table: pd.DataFrame, spec: str, descending: bool = False) -> pd.DataFrame:
    """Sort by column ``spec``: ``COL`` sorts scores best-first and other columns ascending;
    ``-COL`` (or ``descending``) sorts descending, ``+COL`` ascending. Missing values go last.

    An unknown column is one error line listing the valid names.
    """
    col, order = spec, None
    if spec[:1] in "+-" and spec not in table.columns:
        col, order = spec[1:], spec[0] == "+"
    if col not in table.columns:
        raise CfbenchError(
            f"can't sort by {col!r}: choose one of {', '.join(map(str, table.columns))} "
            "(prefix - for descending, + for ascending)"
        )
    if descending:
        order = False
    if order is None:  # scores best-first, everything else ascending
        order = not (col in score_columns(table) and pd.api.types.is_numeric_dtype(table[col]))
    return table.sort_values(col, ascending=order, na_position="last", kind="stable").reset_index(drop=True)


def select_columns(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Only ``columns`` (in that order; ``partial`` follows when present); unknown names are one error line."""
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        raise CfbenchError(
            f"--columns: no column {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(str(c) for c in df.columns if c != PARTIAL_COLUMN)}"
        )
    keep = list(dict.fromkeys(columns))
    return df[keep + ([PARTIAL_COLUMN] if PARTIAL_COLUMN in df.columns and PARTIAL_COLUMN not in keep else [])]


#: The terminal table shortens run names (keeping both ends) to no fewer characters than this.
NAME_MIN = 16


def fit_width(
    df: pd.DataFrame, width: int, categories: Sequence[str] = (), keep: Sequence[str] = ("name", AVG)
) -> tuple[pd.DataFrame, list[str]]:
    """Hide columns until one row per run fits ``width`` characters; returns (frame, hidden columns).

    Info columns go first (:data:`DROP_ORDER`), then task columns from the right (tasks outside the
    suite before suite tasks), then drift columns; then the run names are shortened in the middle
    (:func:`_shorten_names`) and only then ``categories`` go, from the right — so no category is
    hidden while any other column still shows, or while a long run name is shown in full. ``keep``
    (the run name and AVG) are never hidden.
    """
    hidden: list[str] = []
    cats = [c for c in categories if c in df.columns]
    tasks = [c for c in score_columns(df) if c not in cats and c != AVG]
    drift = [c for c in df.columns if is_drift_column(c)]
    order = [c for c in [*(c for c in DROP_ORDER if c in df.columns), *tasks[::-1], *drift] if c not in keep]
    for col in order:
        if natural_width(df) <= width:
            break
        df = df.drop(columns=[col])
        hidden.append(col)
    full = df
    df = _shorten_names(full, width)
    for col in [c for c in cats[::-1] if c not in keep]:
        if natural_width(df) <= width:
            break
        full = full.drop(columns=[col])
        hidden.append(col)
        df = _shorten_names(full, width)  # a hidden category gives room back to the names
    return df, hidden


def _shorten_names(df: pd.DataFrame, width: int) -> pd.DataFrame:
    """Names cut in the middle (``head…tail``) just enough to fit ``width``, to no fewer than
    :data:`NAME_MIN` characters and never so far that two runs read the same."""
    excess = natural_width(df) - width
    if excess <= 0 or "name" not in df.columns:
        return df
    names = ["" if pd.isna(n) else str(n) for n in df["name"]]
    longest = max([len(n) for n in names] + [len("name")])
    for target in range(max(NAME_MIN, longest - excess), longest):
        tail = (target - 1) // 2
        head = target - 1 - tail
        short = [n if len(n) <= target else f"{n[:head]}…{n[len(n) - tail :]}" for n in names]
        if len(set(short)) == len(set(names)):
            return df.assign(name=short)
    return df


def runs_listing(runs: pd.DataFrame) -> str:
    """Plain aligned text, one line per run (``cfbench runs``): name, short id, source, checkpoint, method, base."""
    cols = {"name": "name", "run_id": "id", "source": "source", "checkpoint_name": "checkpoint", "method": "method",
            "base": "base"}  # fmt: skip
    cells = [[("" if pd.isna(v) else str(v)[:8] if c == "run_id" else str(v)) for c, v in row.items()]
             for _, row in runs[list(cols)].iterrows()]  # fmt: skip
    header = list(cols.values())
    widths = [max(len(x) for x in col) for col in zip(header, *cells, strict=False)]
    return "".join(
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in [header, *cells]
    )


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Scores ×100 with two decimals, short run ids, readable times, blanks for missing values."""
    out = pd.DataFrame(index=df.index)
    partial = [set(str(p).split(",")) for p in df[PARTIAL_COLUMN]] if PARTIAL_COLUMN in df else None
    for col in df.columns:
        s = df[col]
        if col == PARTIAL_COLUMN:
            continue  # shown as † on the values themselves
        if is_drift_column(col):  # in the metric's own unit (nats), not a score
            out[col] = ["" if pd.isna(v) else f"{v:.4g}" for v in s]
            continue
        if col in score_columns(df):
            out[col] = [
                ("" if pd.isna(v) else f"{100 * v:.2f}" + ("†" if partial is not None and col in partial[i] else ""))
                for i, v in enumerate(s)
            ]
        elif col in ("run_id", "checkpoint_hash"):  # prefixes are enough to tell runs apart
            out[col] = [("" if v is None or pd.isna(v) else str(v)[:12 if col != "run_id" else 8]) for v in s]
        elif col == "created_at":
            out[col] = [("" if pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m-%d %H:%M")) for v in s]
        else:
            out[col] = [("" if v is None or pd.isna(v) else str(v)) for v in s]
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured markdown table (scores ×100), without a tabulate dependency."""
    shown = display_frame(df)
    cols = [str(c) for c in shown.columns]
    right = set(score_columns(df))
    lines = [f"Leaderboard ({SCALE_NOTE})", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in shown.columns) + "|"]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def natural_width(df: pd.DataFrame) -> int:
    """Characters a runs-as-rows table needs without squeezing (cells, padding and borders)."""
    shown = display_frame(df)
    widths = [max([len(str(c))] + [len(str(v)) for v in shown[c]]) for c in shown.columns]
    return sum(widths) + 3 * len(widths) + 1


def to_rich_table(df: pd.DataFrame, title: str | None = None, transpose: bool = False) -> Any:
    """A rich Table for the terminal (scores ×100); ``transpose`` puts runs in columns."""
    from rich.table import Table

    shown = display_frame(df)
    right = set(score_columns(df))
    table = Table(title=f"{title} ({SCALE_NOTE})" if title else SCALE_NOTE)
    if transpose:
        table.add_column("")
        for name in shown["name"] if "name" in shown else shown.index.astype(str):
            table.add_column(str(name), justify="right")
        for col in shown.columns:
            if col != "name":
                table.add_row(str(col), *[str(v) for v in shown[col]])
        return table
    for col in shown.columns:
        table.add_column(
            str(col), justify="right" if col in right else "left", no_wrap=True, overflow="ellipsis",
            max_width=48 if col == "name" else None,
        )  # fmt: skip
    for row in shown.itertuples(index=False):
        table.add_row(*[str(v) for v in row])
    return table
