"""Whole, self-contained HTML pages: the forgetting report and the leaderboard.

A page is one file people open from a disk, a CI artifact or an e-mail, so it must work with no
network and no other file: ``<!DOCTYPE html>``, UTF-8, inline CSS, a small inline script that sorts
tables, and plots embedded as base64 ``data:`` URIs. Both pages share this machinery so they look
and behave alike.

Cell *texts* come from the same layout every other format uses (:func:`cfbench.report.render.layout`
for the report, the leaderboard's display frame for the board), so an HTML number can never differ
from the Markdown one. What HTML adds is only machine-readable sort keys (``data-v``), colour for
significant Δ (``sig-neg`` / ``sig-pos``; a non-significant Δ stays neutral, since a red number
reads as "it forgot" even when the CI says it may not have), run metadata, and the plots.

Sorting: click a header; numbers sort numerically (by the first number in the cell, so ``-6.00*†``
sorts as -6.00 and a CI by its lower end), text alphabetically; blanks, ``—`` and ``n/a`` sort last
in both directions. Rows in a ``tbody`` without the ``sortable`` class (the w/–w/o pair rows) stay put.
"""

from __future__ import annotations

import base64
import html
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from cfbench._version import __version__
from cfbench.report.leaderboard import AVG, INFO_COLUMNS, PARTIAL_COLUMN, SCALE_NOTE, display_frame, is_drift_column
from cfbench.report.plot import plot_report
from cfbench.report.render import layout, summary_sentences
from cfbench.store.diagnostics import DIAGNOSTIC_COLUMNS

if TYPE_CHECKING:
    from cfbench.report.render import Cell, TableSpec
    from cfbench.report.table import ComparisonReport
    from cfbench.store.store import ResultStore

Align = Literal["l", "r"]

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:1.2em 1.6em;color:#1d1d1f;
 background:#fff;max-width:100%;font-size:14px;line-height:1.35}
h1{font-size:1.45em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .35em}
p.sub{color:#555;margin:.1em 0 .8em}
.scroll{overflow-x:auto;width:fit-content;max-width:100%;border:1px solid #e3e3e3;border-radius:4px}
table.cf{border-collapse:separate;border-spacing:0;font-variant-numeric:tabular-nums}
table.cf th,table.cf td{padding:.28em .6em;border-bottom:1px solid #e6e6e6;white-space:nowrap;background:#fff}
table.cf thead th{position:sticky;top:0;background:#f6f6f8;border-bottom:2px solid #777;vertical-align:bottom;z-index:2}
table.cf thead tr.groups th{border-bottom:1px solid #bbb;text-align:center;color:#444;font-weight:600;z-index:2}
table.cf th.c0,table.cf td.c0{position:sticky;left:0;z-index:1;border-right:1px solid #ccc}
table.cf thead th.c0{z-index:3}
table.cf th.task{white-space:normal}
table.cf th[data-col]{cursor:pointer;user-select:none}
table.cf th[data-col]:hover{background:#ececf2}
table.cf th[aria-sort=ascending]::after{content:" \\25B2";font-size:.75em}
table.cf th[aria-sort=descending]::after{content:" \\25BC";font-size:.75em}
table.cf tbody.fixed td{background:#fafafa;font-style:italic}
.r{text-align:right}.l{text-align:left}
td.sig-neg{color:#b00020;font-weight:700}td.sig-pos{color:#1b7f3b;font-weight:700}
td.muted{color:#888}
p.note{color:#555;font-size:.88em;margin:.15em 0;max-width:150ch}
p.summary{max-width:120ch}
.legend{color:#444;font-size:.9em;max-width:95ch}
img.plot{max-width:100%;height:auto;border:1px solid #e3e3e3;margin:.3em 0}
footer{margin-top:2em;color:#777;font-size:.85em}
code{background:#f3f3f5;padding:0 .25em;border-radius:3px}
"""

# Sorts every tbody.sortable of the clicked header's table. Keys are data-v (numbers when the
# column is data-type=num); a cell without data-v is blank and goes last whichever the direction.
JS = """
document.addEventListener('click',function(ev){
 var th=ev.target.closest('th[data-col]');if(!th)return;
 var table=th.closest('table'),col=+th.dataset.col,num=th.dataset.type==='num';
 var dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending';
 table.querySelectorAll('th[data-col]').forEach(function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',dir);var sgn=dir==='ascending'?1:-1;
 table.querySelectorAll('tbody.sortable').forEach(function(tb){
  var rows=Array.prototype.slice.call(tb.rows).map(function(r,i){
   var c=r.cells[col],v=c&&c.hasAttribute('data-v')?c.getAttribute('data-v'):null;
   if(v!==null&&num){v=parseFloat(v);if(isNaN(v))v=null;}
   return {r:r,v:v,i:i};});
  rows.sort(function(a,b){
   if(a.v===null||b.v===null)return a.v===null?(b.v===null?a.i-b.i:1):-1;
   var d=num?a.v-b.v:a.v.localeCompare(b.v);return d?sgn*d:a.i-b.i;});
  rows.forEach(function(x){tb.appendChild(x.r);});});
});
"""

_BLANKS = {"", "—", "-", "n/a", "unpaired"}
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_ABBREV = {"Understanding": "Und.", "Reasoning": "Reas."}


# -- small pieces ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    """A table column: header text, alignment, sort type, an optional tooltip and header group."""

    label: str
    align: Align = "r"
    numeric: bool = True
    title: str | None = None
    group: str | None = None
    wrap: bool = False  # a long task name may break at '_' in its header


@dataclass(frozen=True)
class HCell:
    """A cell: shown text, sort key (None: blank, sorts last), extra classes, tooltip."""

    text: str
    sort: float | str | None = None
    cls: str = ""
    title: str | None = None


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def sort_key(text: str, numeric: bool) -> float | str | None:
    """The key a cell sorts by: the first number of a numeric cell (``<0.001`` just below 0.001)."""
    t = text.strip()
    if t in _BLANKS:
        return None
    if not numeric:
        return t.lower()
    m = _NUMBER.search(t.replace("−", "-"))
    if m is None:
        return None
    v = float(m.group())
    return v - 1e-9 if t.startswith("<") else v


def data_uri_png(png: bytes | str | Path) -> str:
    """A PNG (bytes or a file) as a ``data:`` URI, so the page needs no file next to it."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _header_html(cols: Sequence[Col]) -> str:
    out = []
    if any(c.group for c in cols):
        cells, i = [], 0
        while i < len(cols):
            j = i
            while j + 1 < len(cols) and cols[j + 1].group == cols[i].group:
                j += 1
            cls = ' class="c0"' if i == 0 else ""
            cells.append(f'<th colspan="{j - i + 1}"{cls}>{esc(cols[i].group or "")}</th>')
            i = j + 1
        out.append('<tr class="groups">' + "".join(cells) + "</tr>")
    ths = []
    for i, c in enumerate(cols):
        classes = [c.align] + (["c0"] if i == 0 else []) + (["task"] if c.wrap else [])
        label = esc(c.label).replace("_", "_<wbr>") if c.wrap else esc(c.label)
        title = f' title="{esc(c.title)}"' if c.title else ""
        typ = "num" if c.numeric else "text"
        ths.append(f'<th class="{" ".join(classes)}" data-col="{i}" data-type="{typ}" scope="col"{title}>{label}</th>')
    out.append("<tr>" + "".join(ths) + "</tr>")
    return "<thead>" + "".join(out) + "</thead>"


def _row_html(cells: Sequence[HCell], cols: Sequence[Col]) -> str:
    tds = []
    for i, (cell, col) in enumerate(zip(cells, cols, strict=True)):
        classes = " ".join(x for x in (col.align, "c0" if i == 0 else "", cell.cls) if x)
        v = "" if cell.sort is None else f' data-v="{esc(cell.sort)}"'
        title = f' title="{esc(cell.title)}"' if cell.title else ""
        tds.append(f'<td class="{classes}"{v}{title}>{esc(cell.text)}</td>')
    return "<tr>" + "".join(tds) + "</tr>"


def table_html(
    cols: Sequence[Col],
    rows: Sequence[Sequence[HCell]],
    *,
    fixed_rows: Sequence[Sequence[HCell]] = (),
    table_id: str | None = None,
    caption: str | None = None,
) -> str:
    """A sortable table inside a horizontal-scroll container (the page itself never overflows).

    ``fixed_rows`` go to a second, unsorted tbody (e.g. w/–w/o Δ rows under the runs they compare).
    """
    ident = f' id="{esc(table_id)}"' if table_id else ""
    parts = [f'<div class="scroll"><table class="cf"{ident}>']
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    parts.append(_header_html(cols))
    parts.append('<tbody class="sortable">' + "".join(_row_html(r, cols) for r in rows) + "</tbody>")
    if fixed_rows:
        parts.append('<tbody class="fixed">' + "".join(_row_html(r, cols) for r in fixed_rows) + "</tbody>")
    parts.append("</table></div>")
    return "".join(parts)


def notes_html(notes: Sequence[str]) -> str:
    return "".join(f'<p class="note">{esc(n)}</p>' for n in dict.fromkeys(notes))


def page(title: str, body: str, *, subtitle: str | None = None) -> str:
    """The whole document: doctype, charset, title, inline CSS and the sorting script."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = f'<p class="sub">{esc(subtitle)}</p>' if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>{sub}\n{body}\n"
        f"<footer>Generated by cfbench {esc(__version__)} on {now}. Self-contained: no network, "
        "no external files. Click a column header to sort.</footer>\n"
        f"<script>{JS}</script>\n</body>\n</html>\n"
    )


# -- run metadata -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunMeta:
    """What a reader needs to tell whether two runs are comparable; shown for every run."""

    label: str
    run_id: str | None = None
    checkpoint: str | None = None
    checkpoint_hash: str | None = None
    suite: str | None = None
    limit: int | None = None
    n_items: int | None = None
    n_tasks: int | None = None
    backend: str | None = None
    dtype: str | None = None
    created_at: datetime | None = None
    source: str | None = None
    method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _opt(v: Any) -> Any:
    """None for every missing marker a store column can hold (None, NaN, NaT, pd.NA)."""
    try:
        return None if v is None or bool(pd.isna(v)) else v
    except (TypeError, ValueError):  # a list-like value is never "missing"
        return v


def _items_per_run(store: ResultStore, run_ids: Sequence[str]) -> dict[str, tuple[int | None, int]]:
    """(items, tasks) per run from its stored task scores; items is None when no task counted them."""
    scores = store.task_scores(run_ids)
    scores = scores[scores["subset"].isna()] if "subset" in scores else scores
    out: dict[str, tuple[int | None, int]] = {}
    for rid, g in scores.groupby("run_id"):
        per_task = g.groupby("task")["n_items"].max()  # every metric of a task counts the same items
        known = per_task.dropna()
        out[str(rid)] = (int(known.sum()) if len(known) else None, len(per_task))
    return out


def run_meta(store: ResultStore, records: Sequence[tuple[str, Any]]) -> list[RunMeta]:
    """Metadata of ``(label, RunRecord)`` pairs, with item and task counts from the store."""
    counts = _items_per_run(store, [r.run_id for _, r in records])
    out = []
    for label, r in records:
        n_items, n_tasks = counts.get(r.run_id, (None, 0))
        out.append(
            RunMeta(
                label=label,
                run_id=r.run_id,
                checkpoint=r.checkpoint_name,
                checkpoint_hash=r.checkpoint_hash,
                suite=r.suite,
                limit=r.limit,
                n_items=n_items,
                n_tasks=n_tasks or None,
                backend=r.backend,
                dtype=r.dtype,
                created_at=r.created_at,
                source=r.source,
                method=r.method,
            )
        )
    return out


def _labels(board: pd.DataFrame) -> list[str]:
    """What names a leaderboard row: its run name, else (``--columns`` without it) its run id."""
    for col in ("name", "run_id"):
        if col in board.columns:
            return ["" if _opt(v) is None else str(v) for v in board[col]]
    return [str(i + 1) for i in range(len(board))]


def run_meta_from_frame(store: ResultStore, board: pd.DataFrame) -> list[RunMeta]:
    """Metadata of every leaderboard row (by ``run_id``), in the board's order."""
    if board.empty:
        return []
    all_runs = store.runs()
    if "run_id" in board.columns:
        ids = [str(x) for x in board["run_id"]]
    else:  # `leaderboard --columns` left the id out: find the runs by name (names are unique in a board)
        by_name = dict(zip(all_runs["name"], all_runs["run_id"], strict=True))
        ids = [str(by_name.get(n, "")) for n in board["name"]] if "name" in board.columns else [""] * len(board)
    runs = all_runs.set_index("run_id")
    counts = _items_per_run(store, ids)
    out = []
    for i, (rid, label) in enumerate(zip(ids, _labels(board), strict=True)):
        # the store's record where it has the run; else what the board row says (e.g. the paper's rows)
        r = runs.loc[rid] if rid in runs.index else board.iloc[i]
        n_items, n_tasks = counts.get(rid, (None, 0))
        if n_items is None and "n" in board.columns:
            n_items = _opt(board["n"].iloc[i])
            n_items = None if n_items is None else int(n_items)
        limit = _opt(r.get("limit"))
        created = _opt(r.get("created_at"))
        out.append(
            RunMeta(
                label=str(label),
                run_id=rid,
                checkpoint=_opt(r.get("checkpoint_name")),
                checkpoint_hash=_opt(r.get("checkpoint_hash")),
                suite=_opt(r.get("suite")),
                limit=None if limit is None else int(limit),
                n_items=n_items,
                n_tasks=n_tasks or None,
                backend=_opt(r.get("backend")),
                dtype=_opt(r.get("dtype")),
                created_at=None if created is None else pd.Timestamp(created).to_pydatetime(),
                source=_opt(r.get("source")),
                method=_opt(r.get("method")),
            )
        )
    return out


def _fmt_date(d: datetime | None) -> str:
    return "" if d is None else pd.Timestamp(d).strftime("%Y-%m-%d %H:%M")


def _short(text: str | None, width: int = 28) -> HCell:
    """Long names (a converted GGUF's folder) are cut with … and shown whole on hover."""
    s = text or ""
    shown = s if len(s) <= width else s[: width - 1] + "…"
    return HCell(shown, s.lower() or None, title=s if shown != s else None)


def runs_table(metas: Sequence[RunMeta], roles: Mapping[str, str] | None = None) -> str:
    """One row per run: checkpoint (hash), suite, limit, items, backend, dtype, date, source."""
    cols = [Col("Run", "l", False)]
    if roles:
        cols.append(Col("Role", "l", False))
    cols += [
        Col("Checkpoint", "l", False),
        Col("Hash", "l", False, "checkpoint content hash (first 12 hex digits; full hash in the tooltip)"),
        Col("Suite", "l", False),
        Col("Limit", "r", True, "--limit: items per task (blank: all)"),
        Col("n", "r", True, "items scored, summed over the run's tasks"),
        Col("Tasks", "r", True),
        Col("Backend", "l", False),
        Col("dtype", "l", False),
        Col("Date (UTC)", "l", False, "when the run was scored or imported"),
        Col("Source", "l", False),
        Col("Method", "l", False),
        Col("Run id", "l", False),
    ]

    def txt(v: Any) -> HCell:
        s = "" if v is None else str(v)
        return HCell(s, s.lower() or None)

    def num(v: int | None, blank: str = "") -> HCell:
        return HCell(blank if v is None else str(v), None if v is None else float(v))

    rows = []
    for m in metas:
        row = [txt(m.label)]
        if roles:
            row.append(txt(roles.get(m.label, "")))
        h = m.checkpoint_hash or ""
        row += [
            _short(m.checkpoint),
            HCell(h[:12], h or None, title=h or None),
            txt(m.suite),
            num(m.limit, "all"),
            num(m.n_items),
            num(m.n_tasks),
            txt(m.backend),
            txt(m.dtype),
            HCell(_fmt_date(m.created_at), _fmt_date(m.created_at) or None),
            txt(m.source),
            txt(m.method),
            HCell((m.run_id or "")[:8], m.run_id, title=m.run_id),
        ]
        rows.append(row)
    return table_html(cols, rows, table_id="runs")


# -- the forgetting report --------------------------------------------------------------------------
def _cell_class(cell: Cell) -> str:
    """Colour only a significant Δ: tone says the sign, strong says the test rejected 0."""
    if cell.strong and cell.tone:
        return f"sig-{cell.tone}"
    return ""


def spec_table(spec: TableSpec, table_id: str) -> str:
    """A render.TableSpec as a sortable table; the same texts as every other format.

    The per-task table prints a category once per block and sub-groups as ``↳ group``; sorting
    would strip them of their context, so here every row names its category and its task.
    """
    wrap = getattr(spec, "wrap", set())  # long signal headers may break
    cols = [Col(c, a, a == "r", wrap=i in wrap) for i, (c, a) in enumerate(zip(spec.columns, spec.align, strict=True))]
    per_task = spec.columns[:2] == ["Category", "Task"]
    body, fixed = [], []
    last_cat, last_task = "", ""
    for row in spec.rows:
        cells = []
        for i, (cell, col) in enumerate(zip(row, cols, strict=True)):
            text = cell.text
            if per_task and i == 0:
                last_cat = text or last_cat
                text = last_cat
            elif per_task and i == 1:
                if text.startswith("↳"):
                    text = f"{last_task} {text}"
                else:
                    last_task = text
            cells.append(HCell(text, sort_key(text, col.numeric), _cell_class(cell)))
        (fixed if row[0].text.startswith("Δ ") and not per_task else body).append(cells)
    return table_html(cols, body, fixed_rows=fixed, table_id=table_id)


def diagnostics_section(frame: pd.DataFrame | None, forgetting: Mapping[str, float] | None = None) -> str:
    """Stored flatness/sharpness/displacement per run (``compare --diagnostics``); '' when none."""
    if frame is None or frame.empty:
        return ""

    present = [m for m in DIAGNOSTIC_COLUMNS if m in frame and frame[m].notna().any()]
    if not present:
        return (
            '<h2>Diagnostics</h2><p class="note">No stored diagnostics for these checkpoints: run '
            "<code>cfbench landscape</code> / <code>cfbench diff</code> on them first.</p>"
        )
    cols = [Col("Run", "l", False), Col("Δ AVG", "r", True, "forgetting: Δ AVG vs base, points ×100")]
    cols += [Col(m, "r", True) for m in present]
    rows = []
    for _, r in frame.iterrows():
        d = (forgetting or {}).get(str(r["run"]))
        cells = [HCell(str(r["run"]), str(r["run"]).lower()), HCell("—" if d is None else f"{d:+.2f}", d)]
        cells += [HCell("—", None) if pd.isna(r[m]) else HCell(f"{r[m]:.4g}", float(r[m])) for m in present]
        rows.append(cells)
    return (
        "<h2>Diagnostics (cfbench landscape / diff)</h2>"
        '<p class="legend">Latest stored value per checkpoint (by content hash); — : none stored. '
        "Definitions: docs/analysis.md.</p>" + table_html(cols, rows, table_id="diagnostics")
    )


def _plot_png(report: ComparisonReport, include_pairs: bool, suite: str | None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="cfbench-plot-") as tmp:
        return plot_report(report, Path(tmp) / "delta.png", include_pairs=include_pairs, suite=suite).read_bytes()


def report_body(
    report: ComparisonReport,
    *,
    runs: Sequence[RunMeta] | None = None,
    plots: Sequence[bytes | str | Path] | bool = True,
    include_pairs: bool = True,
    diagnostics: pd.DataFrame | None = None,
    suite: str | None = None,
) -> str:
    """The report's sections (no ``<html>`` wrapper): runs, tables, diagnostics, plots.

    The tables are :func:`cfbench.report.render.layout`'s, learned/forgot signals included when the
    report has them (``ComparisonReport.add_signals``). ``plots=True`` renders the Δ chart
    (:func:`cfbench.report.plot.plot_report`) and embeds it; pass PNGs (bytes or paths) to embed
    those instead, or ``False`` for none.
    """
    parts: list[str] = []
    roles = {report.base: "base", **{t: "tuned" for t in report.tuned}}
    parts.append("<h2>Runs</h2>")
    if runs:
        parts.append(runs_table(runs, roles))
    else:
        parts.append(
            '<p class="note">Run metadata (checkpoint hash, suite, limit, backend, dtype, date) not attached: '
            "`cfbench compare --format html` adds it; from Python pass <code>runs=run_meta(store, ...)</code>.</p>"
        )
    specs = layout(report)
    parts.append("<h2>Summary</h2>")
    parts.extend(f'<p class="summary">{esc(x)}</p>' for x in summary_sentences(report))
    parts.append(f'<p class="legend">{esc(specs[0].notes[-1])}</p>')  # the legend: scale, CI, markers
    n_tasks = n_signals = 0
    for i, spec in enumerate(specs):
        if i < 2:
            ident = ["summary", "deltas"][i]
        elif spec.title.startswith("Per task"):
            n_tasks += 1
            ident = f"tasks-{n_tasks}"
        else:  # learned/forgot signal tables
            n_signals += 1
            ident = f"signals-{n_signals}"
        parts.append(f"<h2>{esc(spec.title)}</h2>")
        parts.append(spec_table(spec, ident))
        notes = spec.notes[:-1] if i == 0 else spec.notes
        parts.append(notes_html(notes))
    if diagnostics is not None:
        forgetting = {c.run: 100 * c.avg.delta for c in report.base_comparisons if c.avg.delta is not None}
        parts.append(diagnostics_section(diagnostics, forgetting))
    pngs: list[bytes | str | Path] = []
    if plots is True:
        pngs = [_plot_png(report, include_pairs, suite)]
    elif plots:
        pngs = list(plots)
    if pngs:
        parts.append("<h2>Plots</h2>")
        parts.extend(
            f'<img class="plot" alt="Δ by category and task with CI error bars" src="{data_uri_png(p)}">' for p in pngs
        )
    return "\n".join(p for p in parts if p)


def report_title(report: ComparisonReport) -> str:
    return f"cfbench: {', '.join(report.tuned)} vs {report.base}"


def report_page(report: ComparisonReport, *, suite: str | None = None, **kwargs: Any) -> str:
    """The whole report page; keyword arguments as :func:`report_body`."""
    s = report.settings
    subtitle = (
        (f"Suite {suite}. " if suite else "")
        + f"Forgetting of {len(report.tuned)} tuned run(s) against base {report.base}; "
        f"{100 * s.confidence:g}% paired bootstrap CIs (B={s.n_boot}, seed {s.seed}), α={s.alpha:g}."
    )
    return page(report_title(report), report_body(report, suite=suite, **kwargs), subtitle=subtitle)


# -- the leaderboard --------------------------------------------------------------------------------
def leaderboard_page(
    board: pd.DataFrame,
    *,
    title: str = "cfbench leaderboard",
    categories: Sequence[str] | None = None,
    runs: Sequence[RunMeta] | None = None,
) -> str:
    """The leaderboard as a page: scores table (run name sticky, Summary / Tasks header groups) and
    a runs table with each run's metadata. ``board`` is :func:`cfbench.report.leaderboard.leaderboard`'s
    frame; columns it gains later land in the scores table (numeric) or the runs table (text).
    """
    shown = display_frame(board)
    cats = [c for c in (categories or []) if c in board.columns]
    summary = ([AVG] if AVG in board.columns else []) + cats
    numeric = [c for c in board.columns if c not in INFO_COLUMNS and c != PARTIAL_COLUMN
               and pd.api.types.is_numeric_dtype(board[c])]  # fmt: skip
    drift = [c for c in numeric if is_drift_column(c)]  # own unit (nats), never ×100
    tasks = [c for c in numeric if c not in summary and c not in drift]
    cols = [Col("Run", "l", False, group="")]
    cols += [Col(_ABBREV.get(c, c), "r", True, c if c in _ABBREV else None, "Summary (×100)") for c in summary]
    cols += [Col(c, "r", True, c, "Drift vs reference (own unit)", wrap=True) for c in drift]
    cols += [Col(c, "r", True, c, "Tasks (×100, primary metric)", wrap=True) for c in tasks]
    labels = _labels(board)
    rows = []
    for i in range(len(board)):
        row = [HCell(labels[i], labels[i].lower())]
        for c in [*summary, *drift, *tasks]:
            v = board[c].iloc[i]
            text = str(shown[c].iloc[i])
            scale = 1.0 if c in drift else 100.0  # the sort key is the number shown
            row.append(HCell(text, None if pd.isna(v) else round(scale * float(v), 6)))
        rows.append(row)
    body = [
        f'<p class="legend">{esc(SCALE_NOTE)}. Categories are means of the tasks a run has, AVG the mean '
        "of its scored categories (the numbers <code>cfbench compare</code> prints). Blank: not scored.</p>",
        table_html(cols, rows, table_id="leaderboard"),
    ]
    if AVG not in board.columns:
        body.insert(
            1,
            '<p class="note">No categories or AVG: the board was built without a suite; add '
            "<code>--suite paper</code> (or another suite) to get them.</p>",
        )
    partial = [
        f"† {labels[i]}: {p.replace(',', ', ')} partial (a task or category missing)"
        for i, p in enumerate(board.get(PARTIAL_COLUMN, []))
        if p
    ]
    body.append(notes_html(partial))
    if runs is None:  # only what the board itself holds
        runs = [
            RunMeta(label, _opt(r.get("run_id")), None, _opt(r.get("checkpoint_hash")), suite=_opt(r.get("suite")),
                    backend=_opt(r.get("backend")), source=_opt(r.get("source")), method=_opt(r.get("method")),
                    created_at=_opt(r.get("created_at")))
            for label, (_, r) in zip(labels, board.iterrows(), strict=True)
        ]  # fmt: skip
    body += ["<h2>Runs</h2>", runs_table(runs)]
    extra_text = [c for c in board.columns if c not in INFO_COLUMNS and c != PARTIAL_COLUMN and c not in numeric]
    if extra_text:
        xcols = [Col("Run", "l", False)] + [Col(str(c), "l", False) for c in extra_text]
        xrows = [
            [HCell(labels[i], labels[i].lower())]
            + [HCell(str(shown[c].iloc[i]), str(shown[c].iloc[i]).lower() or None) for c in extra_text]
            for i in range(len(board))
        ]
        body += ["<h2>More</h2>", table_html(xcols, xrows, table_id="more")]
    n = len(board)
    return page(title, "\n".join(body), subtitle=f"{n} run{'s' if n != 1 else ''}; {SCALE_NOTE}.")


def to_html(report: ComparisonReport, *, full_page: bool = True) -> str:
    """A whole self-contained page, or its sections only (to embed) if not ``full_page``."""
    if not full_page:
        return report_body(report, plots=False) + "\n"
    return report_page(report)
