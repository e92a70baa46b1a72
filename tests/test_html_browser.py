"""The HTML report and leaderboard opened in a real browser (headless chromium through playwright).

What a reader sees is checked on the rendered DOM, not on the HTML text: rows and columns of the
tables, that clicking a header sorts numerically with blanks last, that only significant Δ cells are
coloured, that the page fits 1400 px (wide tables scroll inside their box with the run name pinned),
that the plot is embedded and loads, and that the page makes no request beyond ``file:`` / ``data:``.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; .ci/run installs it) and the
``playwright`` package (``test`` extra); playwright's own browser download is never used. Missing
either fails the test in CI (``CI=true``) and skips it elsewhere, saying what to install.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cfbench.report import build_report
from cfbench.report.html import RunMeta, data_uri_png, report_page, run_meta_from_frame
from cfbench.report.html import leaderboard_page as to_html
from cfbench.report.leaderboard import leaderboard
from cfbench.signals import Signal
from cfbench.store import ResultStore, RunRecord, TaskScore

CATEGORIES = {"DK": ["mmlu"], "Reasoning": ["boolq", "copa", "siqa"]}
PAPER = {
    "DK": ["mmlu"],
    "Understanding": ["race_middle", "race_high", "openbookqa_fact", "csl_dev"],
    "Reasoning": ["boolq", "ax_b", "ax_g", "rte", "copa", "hellaswag", "siqa"],
    "Exams": ["arc_challenge"],
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason}: CI must run the browser tests (see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[test]'")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        _missing("no chromium binary on PATH: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])  # root in CI needs --no-sandbox
        yield b
        b.close()


class Opened:
    """A page plus every request it made (URL scheme checked by the tests)."""

    def __init__(self, browser: Any, path: Path, width: int) -> None:
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.on("request", lambda req: self.requests.append(req.url))
        # Anything but the file itself and data: URIs is aborted, so a stray fetch cannot succeed either.
        self.context.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith(("file:", "data:")) else route.abort(),
        )
        self.page = self.context.new_page()
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def column(self, table: str, index: int) -> list[str]:
        return self.page.eval_on_selector_all(
            f"#{table} tbody.sortable tr", f"rows => rows.map(r => r.cells[{index}].innerText.trim())"
        )

    def header(self, table: str) -> list[str]:
        return self.page.eval_on_selector_all(
            f"#{table} thead tr:last-child th", "ths => ths.map(t => t.innerText.replace(/\\s+/g, ''))"
        )

    def close(self) -> None:
        self.context.close()


def _nums(texts: list[str]) -> list[float | None]:
    out: list[float | None] = []
    for t in texts:
        t = t.rstrip("*†‡").split(" ")[0]
        out.append(None if t in ("", "—", "n/a") else float(t))
    return out


# -- the report --------------------------------------------------------------------------------------
def _items() -> pd.DataFrame:
    """base vs two tuned runs with known flips: 'drop' forgets 30/200 boolq (significant) and 3/100
    copa (McNemar p = 0.25, not significant); 'same' equals the base except 2 siqa gains."""
    rows = []
    base = {"mmlu": np.r_[np.ones(120), np.zeros(80)], "boolq": np.r_[np.ones(150), np.zeros(50)],
            "copa": np.r_[np.ones(60), np.zeros(40)], "siqa": np.r_[np.ones(50), np.zeros(50)]}  # fmt: skip
    drop = {k: v.copy() for k, v in base.items()}
    drop["boolq"][:30] = 0
    drop["copa"][:3] = 0
    drop["mmlu"][:40] = 0
    same = {k: v.copy() for k, v in base.items()}
    same["siqa"][50:52] = 1
    for run, scores in (("base", base), ("drop", drop), ("same", same)):
        for task, s in scores.items():
            rows.append(pd.DataFrame({"run": run, "task": task, "doc_id": np.arange(len(s)), "score": s}))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    report = build_report("base", ["drop", "same"], CATEGORIES, items=_items(), n_boot=500, seed=1)
    t = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    runs = [
        RunMeta(label=name, run_id=f"{i}" * 32, checkpoint=f"ckpt-{name}", checkpoint_hash=f"{i}abc" * 16,
                suite="unit", limit=200, n_items=600, n_tasks=4, backend="hf", dtype="float32", created_at=t,
                source="cfbench")
        for i, name in enumerate(["base", "drop", "same"])
    ]  # fmt: skip
    report.add_signals("drop", [Signal("kl", "forgot", "KL(base‖tuned)", 0.12, "nats", 600, (0.08, 0.16), 0.01, True)])
    report.add_signals("same", [Signal("kl", "forgot", "KL(base‖tuned)", 0.011, "nats", 600, (0.0, 0.02), 0.01, False)])
    diag = pd.DataFrame({"run": ["base", "drop", "same"], "checkpoint_hash": ["h0", "h1", "h2"],
                         "sc": [2.0, 9.5, float("nan")], "ag": [float("nan")] * 3, "mag": [float("nan")] * 3,
                         "hessian_trace": [float("nan")] * 3, "top_eigenvalue": [float("nan")] * 3,
                         "displacement": [0.0, 3.1, 0.2], "rel_displacement": [float("nan")] * 3})  # fmt: skip
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(report_page(report, suite="unit", runs=runs, diagnostics=diag), encoding="utf-8")
    return path


def test_report_renders_tables_metadata_and_plot_offline(browser: Any, report_file: Path, tmp_path: Path) -> None:
    view = Opened(browser, report_file, 1400)
    try:
        page = view.page
        assert page.title() == "cfbench: drop, same vs base"
        assert page.evaluate("document.characterSet") == "UTF-8"
        assert page.evaluate("document.compatMode") == "CSS1Compat"  # <!DOCTYPE html>: standards mode
        # runs: one row per run with its metadata
        assert view.column("runs", 0) == ["base", "drop", "same"]
        assert view.header("runs")[:6] == ["Run", "Role", "Checkpoint", "Hash", "Suite", "Limit"]
        assert view.column("runs", 1) == ["base", "tuned", "tuned"]
        assert view.column("runs", 3) == ["0abc0abc0abc", "1abc1abc1abc", "2abc2abc2abc"]
        assert set(view.column("runs", 4)) == {"unit"} and set(view.column("runs", 9)) == {"float32"}
        assert view.column("runs", 10)[0] == "2026-01-02 03:04"
        # the paper table: runs × categories, AVG, Δ, CI
        assert view.header("summary") == ["Model", "DK", "Reasoning", "AVG", "Δ", "Δ95%CI"]
        assert view.column("summary", 0) == ["base", "drop", "same"]
        # per task: every row names its category, even after sorting
        assert view.column("tasks-1", 1) == ["mmlu", "boolq", "copa", "siqa"]
        assert view.column("tasks-1", 0) == ["DK", "Reasoning", "Reasoning", "Reasoning"]
        # plot embedded as a data: URI and decoded by the browser
        img = page.eval_on_selector("img.plot", "i => [i.src.slice(0, 22), i.naturalWidth, i.complete]")
        assert img[0] == "data:image/png;base64," and img[1] > 600 and img[2]
        # signals and diagnostics sections, tolerant of what is present
        assert view.header("signals-1")[:2] == ["Run", "ΔAVG(95%CI)"] and "forgot:KL(base‖tuned)(nats)" in view.header(
            "signals-1"
        )
        assert view.column("signals-1", 0) == ["drop", "same"]
        assert [t.split(" ")[0] for t in view.column("signals-1", 4)] == ["0.12*", "0.011"]
        assert view.header("diagnostics") == ["Run", "ΔAVG", "sc", "displacement"]  # all-NaN metrics left out
        assert view.column("diagnostics", 2) == ["2", "9.5", "—"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # no page-level overflow
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        page.reload()
        assert view.requests and all(u.startswith(("file:", "data:")) for u in view.requests), view.requests
    finally:
        view.close()


def test_only_significant_deltas_are_coloured(browser: Any, report_file: Path) -> None:
    view = Opened(browser, report_file, 1400)
    try:
        cells = view.page.eval_on_selector_all(
            "#tasks-1 tbody tr",
            """rows => rows.map(r => { const c = r.cells[5];
                 return [r.cells[1].innerText, c.innerText, c.className, getComputedStyle(c).color]; })""",
        )
        by_task = {task: (text, cls, color) for task, text, cls, color in cells}
        # boolq: 30 forgotten of 200 (McNemar p ≈ 2e-9) → red; copa: 3 forgotten (p = 0.25) → neutral
        assert by_task["boolq"][0] == "-15.00*" and "sig-neg" in by_task["boolq"][1]
        assert by_task["boolq"][2] == "rgb(176, 0, 32)"
        assert by_task["copa"][0] == "-3.00" and "sig-" not in by_task["copa"][1]
        assert by_task["copa"][2] == by_task["siqa"][2] != by_task["boolq"][2]
        # the rule holds for every Δ cell of every table: coloured ⇔ marked significant (*)
        for table, col in (("summary", 4), ("deltas", 1), ("deltas", 3), ("signals-1", 1), ("tasks-1", 5),
                           ("tasks-2", 5)):  # fmt: skip
            rows = view.page.eval_on_selector_all(
                f"#{table} tbody tr", f"rows => rows.map(r => [r.cells[{col}].innerText, r.cells[{col}].className])"
            )
            for text, cls in rows:
                assert ("sig-" in cls) == ("*" in text), (table, text, cls)
        # signals: significant KL (a divergence: up is worse) red, the non-significant one neutral
        sig = view.page.eval_on_selector_all("#signals-1 tbody tr", "rows => rows.map(r => r.cells[4].className)")
        assert "sig-neg" in sig[0] and "sig-" not in sig[1]
    finally:
        view.close()


def test_clicking_a_header_sorts_numerically(browser: Any, report_file: Path) -> None:
    view = Opened(browser, report_file, 1400)
    try:
        heads = view.page.locator("#tasks-1 thead tr:last-child th")
        heads.nth(4).click()  # the tuned run's scores: mmlu 40, boolq 60, copa 57, siqa 50
        assert view.page.get_attribute("#tasks-1 thead th:nth-child(5)", "aria-sort") == "ascending"
        assert _nums(view.column("tasks-1", 4)) == [40.0, 50.0, 57.0, 60.0]
        assert view.column("tasks-1", 1) == ["mmlu", "siqa", "copa", "boolq"]
        assert view.column("tasks-1", 0) == ["DK", "Reasoning", "Reasoning", "Reasoning"]  # rows keep their category
        heads.nth(5).click()  # Δ ascending, then descending
        assert _nums(view.column("tasks-1", 5)) == [-20.0, -15.0, -3.0, 0.0]
        heads.nth(5).click()
        assert view.page.get_attribute("#tasks-1 thead th:nth-child(6)", "aria-sort") == "descending"
        assert _nums(view.column("tasks-1", 5)) == [0.0, -3.0, -15.0, -20.0]
        assert view.column("tasks-1", 1) == ["siqa", "copa", "boolq", "mmlu"]
    finally:
        view.close()


# -- the leaderboard ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def board_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four runs over the paper's 13 tasks and 2 extras; boolq values 9, 10, 70 and one blank, where text order
    ("10.00" < "70.00" < "9.00") and numeric order differ."""
    root = tmp_path_factory.mktemp("board")
    store = ResultStore(root / "results")
    tasks = [t for m in PAPER.values() for t in m] + ["openbookqa", "truthfulqa_mc"]
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    boolq = {"alpha": 0.70, "beta": 0.09, "gamma": None, "delta": 0.10}
    for i, (name, b) in enumerate(boolq.items()):
        scores = [TaskScore(t, "acc", round(0.30 + 0.01 * i + 0.003 * j, 4), n_items=50)
                  for j, t in enumerate(tasks) if t != "boolq"]  # fmt: skip
        if b is not None:
            scores.append(TaskScore("boolq", "acc", b, n_items=50))
        rec = RunRecord(name=name, checkpoint_name=f"m-{name}", checkpoint_hash=f"{i:x}" * 64, suite="paper",
                        backend="hf", dtype="bfloat16", limit=50, created_at=t0.replace(day=1 + i))  # fmt: skip
        store.append_run(rec, scores)
    board = leaderboard(store, suite=PAPER)
    path = root / "leaderboard.html"
    page = to_html(board, title="board", categories=list(PAPER), runs=run_meta_from_frame(store, board))
    path.write_text(page, encoding="utf-8")
    return path


def test_leaderboard_columns_rows_and_metadata(browser: Any, board_file: Path, tmp_path: Path) -> None:
    view = Opened(browser, board_file, 1400)
    try:
        head = view.header("leaderboard")
        assert head[:6] == ["Run", "AVG", "DK", "Und.", "Reas.", "Exams"]
        assert len(head) == 1 + 5 + 15 and "arc_challenge" in head and "truthfulqa_mc" in head
        assert view.column("leaderboard", 0) == ["alpha", "beta", "gamma", "delta"]
        assert all(v for v in view.column("leaderboard", 1))  # AVG never blank
        boolq = head.index("boolq")
        assert view.column("leaderboard", boolq) == ["70.00", "9.00", "", "10.00"]
        assert view.column("runs", 0) == ["alpha", "beta", "gamma", "delta"]
        assert view.column("runs", 4) == ["50"] * 4 and view.column("runs", 5) == ["750", "750", "700", "750"]
        assert set(view.column("runs", 8)) == {"bfloat16"} and set(view.column("runs", 3)) == {"paper"}
        shot = tmp_path / "board.png"
        view.page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert all(u.startswith(("file:", "data:")) for u in view.requests), view.requests
    finally:
        view.close()


def test_leaderboard_sorts_numbers_with_blanks_last(browser: Any, board_file: Path) -> None:
    view = Opened(browser, board_file, 1400)
    try:
        boolq = view.header("leaderboard").index("boolq")
        th = view.page.locator("#leaderboard thead tr:last-child th").nth(boolq)
        th.click()
        assert view.column("leaderboard", boolq) == ["9.00", "10.00", "70.00", ""]
        assert view.column("leaderboard", 0) == ["beta", "delta", "alpha", "gamma"]
        th.click()
        assert view.column("leaderboard", boolq) == ["70.00", "10.00", "9.00", ""]  # blank still last
        name = view.page.locator("#leaderboard thead tr:last-child th").first
        name.click()
        assert view.column("leaderboard", 0) == ["alpha", "beta", "delta", "gamma"]
    finally:
        view.close()


@pytest.mark.parametrize("width", [1400, 900])
def test_leaderboard_fits_the_window_and_pins_the_run_name(browser: Any, board_file: Path, width: int) -> None:
    view = Opened(browser, board_file, width)
    try:
        page = view.page
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # the page never scrolls sideways
        box = page.locator("#leaderboard").locator("xpath=..")
        inner, outer = box.evaluate("b => [b.scrollWidth, b.clientWidth]")
        if width == 900:
            assert inner > outer  # the wide table scrolls inside its box instead
        box.evaluate("b => { b.scrollLeft = 400; }")
        left = box.evaluate("b => b.getBoundingClientRect().left")
        first = page.locator("#leaderboard tbody tr td").first.evaluate("c => c.getBoundingClientRect().left")
        assert math.isclose(first, left + box.evaluate("b => b.clientLeft"), abs_tol=1.5)  # sticky first column
    finally:
        view.close()


# -- the commands ------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))  # fmt: skip


def test_compare_and_leaderboard_commands_write_whole_pages(browser: Any, tmp_path: Path) -> None:
    """`compare --format html --diagnostics --plot` and `leaderboard --format html`, end to end."""
    from cfbench.store.diagnostics import write_diagnostics

    store = ResultStore(tmp_path / "results")
    for name, h, acc in (("base", "h-base", 0.50), ("wo", "h-wo", 0.40)):
        rec = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=h, suite="offline", limit=7, dtype="bfloat16")
        store.append_run(rec, [TaskScore(t, "acc", acc, n_items=7) for t in ("mmlu", "boolq", "arc_challenge")])
    write_diagnostics(store, checkpoint_name="wo", checkpoint_hash="h-wo", source="test", values={"sc": 9.0},
                      settings={}, base_hash="h-base")  # fmt: skip
    page, png = tmp_path / "report.html", tmp_path / "delta.png"
    res = _cli("compare", "run:base", "run:wo", "--suite", "offline", "--results", str(store.root), "--format", "html",
               "--out", str(page), "--plot", str(png), "--diagnostics")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and png.is_file()  # the page went to --out, the diagnostics table into the page
    view = Opened(browser, page, 1400)
    try:
        assert view.column("runs", 0) == ["base", "wo"] and view.column("runs", 3) == ["h-base", "h-wo"]
        assert view.column("runs", 5) == ["7", "7"] and view.column("runs", 6) == ["21", "21"]  # limit, n
        assert view.column("runs", 9) == ["bfloat16", "bfloat16"]
        assert view.column("diagnostics", 2) == ["—", "9"] and view.column("diagnostics", 1) == ["—", "-10.00"]
        src = view.page.eval_on_selector("img.plot", "i => i.src")
        assert src == data_uri_png(png)  # the very PNG --plot wrote
        assert all(u.startswith(("file:", "data:")) for u in view.requests)
    finally:
        view.close()

    board = tmp_path / "board.html"
    res = _cli("leaderboard", "--results", str(store.root), "--suite", "offline", "--format", "html", "--out",
               str(board))  # fmt: skip
    assert res.returncode == 0, res.stderr
    view = Opened(browser, board, 1400)
    try:
        assert view.column("leaderboard", 0) == ["base", "wo"]
        assert view.header("leaderboard")[1] == "AVG" and view.column("leaderboard", 1) == ["50.00†", "40.00†"]
        assert view.column("runs", 2) == ["h-base", "h-wo"] and view.column("runs", 8) == ["bfloat16"] * 2
    finally:
        view.close()


def test_table_boxes_hug_their_tables_and_prose_keeps_a_reading_width(browser: Any, report_file: Path) -> None:
    """Seen in Chromium (issue 19 item 9): every table's bordered box spanned the whole window, so a
    narrow table (runs, summary, Δ by category) sat at the left of a wide empty frame. The box now
    fits its table (and still scrolls, pinned, when the table is wider than the window), and summary
    sentences stop at a readable measure instead of running 1,400 px wide."""
    view = Opened(browser, report_file, 1400)
    try:
        boxes = view.page.eval_on_selector_all(
            "div.scroll > table",
            "ts => ts.map(t => [t.id, t.parentElement.getBoundingClientRect().width, t.getBoundingClientRect().width])",
        )
        assert len(boxes) >= 4
        for table_id, box, table in boxes:
            assert box <= table + 2, (table_id, box, table)  # 2 px: the box's own border
        widths = view.page.eval_on_selector_all("p.summary", "ps => ps.map(p => p.getBoundingClientRect().width)")
        assert widths and max(widths) < 1100
    finally:
        view.close()
