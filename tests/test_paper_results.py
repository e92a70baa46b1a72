"""The paper's published numbers as read-only reference runs (cfbench.comparison.paper, results/paper, paper:NAME).

The Table 2(a) check recomputes the paper's aggregates from its per-task numbers (Tables 5–8) with
cfbench's own leaderboard and compare code and holds them to the AVGs the paper printed. Tolerance:
±0.01 points (one unit of the printed last digit), and each value must also *round* to the printed
one — the recomputed AVGs are 51.9196, 45.2212 and 52.2335, so the paper rounded exactly as we do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from cfbench.cli import store_cmds
from cfbench.comparison import compare
from cfbench.comparison.paper import paper_frames, paper_names, paper_runs, paper_store, write_paper_store
from cfbench.errors import CfbenchError
from cfbench.report.leaderboard import leaderboard
from cfbench.report.render import to_markdown
from cfbench.store import ResultStore, RunRecord, TaskScore
from cfbench.store.check import BadPart, move_aside
from cfbench.tasks.registry import load_suite

ROOT = Path(__file__).resolve().parents[1]
#: Table 2(a) of the paper (Llama2-7B): AVG as printed.
TABLE_2A_AVG = {"llama2-7b-alpaca": 51.92, "llama2-7b-platypus-wo-sam": 45.22, "llama2-7b-platypus-w-sam": 52.23}
TOL = 0.01


def _categories() -> dict[str, list[str]]:
    return {k: list(v) for k, v in load_suite("paper").categories.items()}


def _cli() -> typer.Typer:
    app = typer.Typer()
    store_cmds.register(app)
    return app


def cfbench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)  # fmt: skip


def test_leaderboard_reproduces_table_2a_avg(tmp_path: Path) -> None:
    board = leaderboard(ResultStore(tmp_path / "empty"), suite=_categories(), also=paper_frames("table2a"))
    assert board["name"].tolist() == [f"paper:{n}" for n in (
        "llama2-7b-alpaca", "llama2-7b-sharegpt-wo-sam", "llama2-7b-sharegpt-w-sam", "llama2-7b-platypus-wo-sam",
        "llama2-7b-platypus-w-sam", "llama2-7b-metamath-wo-sam", "llama2-7b-metamath-w-sam")]  # fmt: skip
    avg = dict(zip(board["name"], 100 * board["AVG"], strict=True))
    for name, printed in TABLE_2A_AVG.items():
        got = avg[f"paper:{name}"]
        assert abs(got - printed) <= TOL and round(got, 2) == printed, (name, got, printed)
    assert (board["partial"] == "").all()  # every paper category complete
    assert board["source"].eq("paper").all() and board["n"].isna().all()  # no items behind them


def test_compare_of_paper_refs_is_task_level_without_ci(tmp_path: Path) -> None:
    res = compare("paper:llama2-7b-alpaca", ["paper:llama2-7b-platypus-wo-sam", "paper:llama2-7b-platypus-w-sam"],
                  results=tmp_path / "mine", n_boot=50)  # fmt: skip
    (wo, w) = res.report.base_comparisons
    assert 100 * wo.avg.delta == pytest.approx(45.22 - 51.92, abs=2 * TOL)  # Table 2's Δ for the w/o row
    assert 100 * (w.avg.delta - wo.avg.delta) == pytest.approx(52.23 - 45.22, abs=2 * TOL)  # w/ row: vs w/o
    assert wo.avg.ci is None and all(r.ci is None and r.n is None for r in wo.tasks)
    assert [r.label for r in res.runs] == ["paper:llama2-7b-alpaca", "paper:llama2-7b-platypus-wo-sam",
                                           "paper:llama2-7b-platypus-w-sam"]  # fmt: skip
    assert "n/a: task-level scores only" in to_markdown(res.report)
    assert not (tmp_path / "mine").exists()  # nothing written to the user's store


def test_paper_ref_next_to_own_run_and_unknown_name(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    scores = [TaskScore(task=t, metric="acc", value=0.5, n_items=4) for ts in _categories().values() for t in ts]
    store.append_run(RunRecord(name="mine", checkpoint_name="mine", method="sam", base="x", limit=4), scores)
    res = compare("paper:llama2-7b-alpaca", ["mine"], results=tmp_path, n_boot=50)
    assert 100 * res.report.base_comparisons[0].avg.delta == pytest.approx(50 - 51.9196, abs=1e-3)

    proc = cfbench("compare", "paper:llama2-7b-alpca", "mine", "--results", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: no paper run named 'llama2-7b-alpca'") and "paper:llama2-7b-alpaca" in line
    assert "`cfbench runs --source paper` lists all 20" in line


def test_cli_leaderboard_suite_paper_and_runs_listing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    scores = [TaskScore(task=t, metric="acc", value=0.25, n_items=3) for ts in _categories().values() for t in ts]
    store.append_run(RunRecord(name="mine", checkpoint_name="mine", method="adamw", suite="paper", limit=3), scores)
    runner = CliRunner()
    res = runner.invoke(_cli(), ["leaderboard", "--results", str(tmp_path), "--suite", "paper", "--format", "csv"])
    assert res.exit_code == 0, res.output
    board = pd.read_csv(pd.io.common.StringIO(res.stdout))
    assert board["name"].iloc[0] == "paper:llama2-7b-alpaca" and board["name"].iloc[-1] == "mine"
    assert len(board) == 8 and board["AVG"].iloc[-1] == pytest.approx(0.25)
    assert board.loc[board["name"] == "mine", "n"].item() == 3 * len(scores)
    res = runner.invoke(_cli(), ["leaderboard", "--results", str(tmp_path), "--format", "csv"])
    assert pd.read_csv(pd.io.common.StringIO(res.stdout))["name"].tolist() == ["mine"]  # no suite: own runs only
    res = runner.invoke(_cli(), ["leaderboard", "--results", str(tmp_path), "--format", "csv", "--paper", "all"])
    assert len(pd.read_csv(pd.io.common.StringIO(res.stdout))) == 21

    res = runner.invoke(_cli(), ["runs", "--source", "paper"])
    assert res.exit_code == 0
    listed = [line.split()[0] for line in res.stdout.splitlines()[1:]]
    assert listed == [f"paper:{n}" for n in paper_names()] and len(listed) == 20
    assert "paper:llama2-7b-platypus-w-sam" in listed and "paper:llama2-13b-platypus-wo-sam" in listed


def test_shipped_results_paper_is_a_fresh_build(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_results.py"), "--check"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    a, b = write_paper_store(tmp_path / "a"), write_paper_store(tmp_path / "b")
    for part in sorted(a.rglob("*")):
        if part.is_file():
            assert part.read_bytes() == (b / part.relative_to(a)).read_bytes(), part  # deterministic bytes
    runs = ResultStore(ROOT / "results" / "paper").runs()
    assert runs["name"].tolist() == paper_names() and set(runs["source"]) == {"paper"}
    assert len(paper_runs()) == 20


def test_paper_store_is_read_only(tmp_path: Path) -> None:
    root = tmp_path / "paper"
    shutil.copytree(ROOT / "results" / "paper", root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    store = ResultStore(root)
    run = RunRecord(name="x", checkpoint_name="x")
    for attempt in (
        lambda: store.append_run(run, [TaskScore(task="copa", metric="acc", value=0.5)]),
        lambda: store.append_items(pd.DataFrame({"cache_key": ["k"], "task": ["copa"], "doc_id": [0], "gold": [0],
                                                 "pred": [0]})),
        lambda: store.append_table("diagnostics", pa.table({"x": [1]})),
        store.compact,
        lambda: move_aside(root, [BadPart("runs", next((root / "runs").glob("*.parquet")), "test")]),
    ):
        with pytest.raises(CfbenchError, match="is read-only"):
            attempt()
    res = CliRunner().invoke(_cli(), ["store", "compact", "--results", str(root)])
    assert res.exit_code != 0 and "read-only" in str(res.exception)
    assert before == {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert paper_store().read_only  # the cached copy that paper: refs read is read-only too

    with pytest.raises(CfbenchError, match="source 'paper'"):  # nor can a user store take paper runs
        ResultStore(tmp_path / "mine").append_run(*paper_runs()[0])


def test_eval_into_the_paper_store_is_refused_before_scoring(tmp_path: Path) -> None:
    from cfbench.engine import plan_evaluation

    root = tmp_path / "paper"
    shutil.copytree(ROOT / "results" / "paper", root)
    with pytest.raises(CfbenchError, match=r"is read-only .*pass another --results folder"):
        plan_evaluation("no-such-checkpoint", results=root)  # refused before the checkpoint is even resolved


def test_readme_table_2a_is_the_commands_output(tmp_path: Path) -> None:
    """The docs' Table 2(a) block (docs/paper-results.md, moved from the README) is what the command next to it
    prints, row for row."""
    args = ["leaderboard", "--results", str(tmp_path), "--suite", "paper", "--format", "markdown",
            "--columns", "name,DK,Understanding,Reasoning,Exams,AVG"]  # fmt: skip
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    rows = [line for line in res.stdout.splitlines() if line.startswith("| paper:")]
    assert len(rows) == 7
    readme = (ROOT / "docs" / "paper-results.md").read_text(encoding="utf-8").splitlines()
    assert [line for line in readme if line.startswith("| paper:")] == rows
