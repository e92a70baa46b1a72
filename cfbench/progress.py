"""Progress that people and CI logs can both read.

On a terminal a rich progress bar redraws in place; anywhere else (CI logs, ``nohup``, a pipe) a bar
would either print nothing or thousands of carriage returns, so cfbench prints one plain line every
``CFBENCH_PROGRESS_SECONDS`` seconds (default 30) and a last line when the work is done. Both forms
show the same things: what is being scored, how far it is, the rate and an ETA.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m07s``, ``42s``: short enough for a log line."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CFBENCH_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


class Progress:
    """Counts ``total`` units (requests) for one labelled job; ``advance(n)`` as units finish.

    ``mode`` is ``"bar"`` (rich, terminals), ``"lines"`` (plain periodic lines) or ``"off"``;
    ``"auto"`` picks ``bar`` on a TTY and ``lines`` otherwise.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "requests",
        mode: str = "auto",
        stream: IO[str] | None = None,
        interval: float | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if callable(isatty) and isatty() else "lines"
        self.mode = mode
        self.interval = _interval() if interval is None else interval
        self.done = 0
        self.detail = ""
        self._t0 = time.perf_counter()
        self._last_line = self._t0
        self._bar: Any = None
        self._bar_id: Any = None

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )  # fmt: skip
            self._bar.__enter__()
            self._bar_id = self._bar.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        elif self.mode == "lines" and exc[0] is None:
            self._line(final=True)

    def set_detail(self, detail: str) -> None:
        """What is being worked on now (e.g. the task); shown in the bar's label or the next line."""
        self.detail = detail
        if self._bar is not None:
            self._bar.update(self._bar_id, description=f"{self.label} · {detail}" if detail else self.label)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._bar_id, n)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self._last_line >= self.interval:
                self._line()
                self._last_line = now

    def eta_seconds(self) -> float | None:
        """Remaining time at the average rate so far; None before anything finished."""
        elapsed = time.perf_counter() - self._t0
        if self.done <= 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total - self.done) * elapsed / self.done)

    def line(self, *, final: bool = False) -> str:
        elapsed = time.perf_counter() - self._t0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        where = f" · {self.detail}" if self.detail else ""
        head = f"[cfbench] {self.label}{where}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%)"
        if final:
            return f"{head} done in {format_duration(elapsed)} ({rate:.1f} {self.unit}/s)"
        eta = self.eta_seconds()
        return f"{head}, {rate:.1f} {self.unit}/s, elapsed {format_duration(elapsed)}, ETA " + (
            format_duration(eta) if eta is not None else "?"
        )

    def _line(self, final: bool = False) -> None:
        print(self.line(final=final), file=self.stream, flush=True)


#: Environment switches read by tqdm, huggingface_hub and datasets when they are imported.
QUIET_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
#: Already-imported modules switched off directly, each with the switch that, set false by the user, keeps it on.
_QUIET_MODULES = (
    ("transformers.utils.logging", "disable_progress_bar", "HF_HUB_DISABLE_PROGRESS_BARS"),
    ("datasets.utils.logging", "disable_progress_bar", "HF_DATASETS_DISABLE_PROGRESS_BARS"),
    ("huggingface_hub.utils.tqdm", "disable_progress_bars", "HF_HUB_DISABLE_PROGRESS_BARS"),
)


def quiet_library_bars(stream: IO[str] | None = None) -> bool:
    """Silence the progress bars of transformers, datasets, huggingface_hub and tqdm when ``stream``
    (default: stderr) is not a terminal; returns whether it did.

    In a log a bar is not a bar: transformers alone writes a "Loading weights 0/272 ..." line per model
    load, which buries cfbench's own lines (:class:`Progress` prints those itself and is untouched).
    Environment switches cover libraries imported later (and child processes); libraries already
    imported are switched off directly. A switch the user set (e.g. ``HF_HUB_DISABLE_PROGRESS_BARS=0``)
    is left as it is, and so is the library it governs.
    """
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return False
    kept_on = {v for v in QUIET_ENV if os.environ.get(v, "").strip().lower() in ("0", "false", "no", "off")}
    for var in QUIET_ENV:
        os.environ.setdefault(var, "1")
    for module, switch_off, var in _QUIET_MODULES:
        if module in sys.modules and var not in kept_on:
            getattr(sys.modules[module], switch_off)()
    return True
