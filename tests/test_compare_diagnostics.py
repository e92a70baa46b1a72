"""`cfbench compare --diagnostics`: stored flatness/displacement shown next to each run's forgetting (issue 10.5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cfbench.store import ResultStore, RunRecord, TaskScore
from cfbench.store.diagnostics import write_diagnostics


def _run(store: ResultStore, name: str, ckpt_hash: str, acc: float) -> None:
    run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=ckpt_hash, suite="offline")
    store.append_run(run, [TaskScore(task=t, metric="acc", value=acc) for t in ("mmlu", "boolq", "arc_challenge")])


def test_compare_shows_stored_diagnostics_and_plots_forgetting_against_them(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    _run(store, "base", "h-base", 0.50)
    _run(store, "wo", "h-wo", 0.40)
    _run(store, "ws", "h-ws", 0.48)
    for name, h, sc, disp in (("base", "h-base", 2.0, 0.0), ("wo", "h-wo", 9.0, 3.15), ("ws", "h-ws", 4.0, 2.46)):
        write_diagnostics(store, checkpoint_name=name, checkpoint_hash=h, source="test",
                          values={"sc": sc, "displacement": disp}, settings={}, base_hash="h-base")  # fmt: skip
    png = tmp_path / "diag.png"
    res = subprocess.run(
        [sys.executable, "-m", "cfbench", "compare", "run:base", "run:wo", "run:ws", "--suite", "offline",
         "--results", str(tmp_path), "--diagnostics-plot", str(png)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Diagnostics" in out and "displacement" in out and "sc" in out
    diag = out[out.index("Diagnostics") :]
    row = next(line for line in diag.splitlines() if "│ wo " in line)
    assert "-10.00" in row and "3.15" in row and "9" in row, out
    assert png.is_file() and png.stat().st_size > 0


def test_compare_diagnostics_says_when_none_are_stored(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    _run(store, "base", "h-base", 0.5)
    _run(store, "wo", "h-wo", 0.4)
    res = subprocess.run(
        [sys.executable, "-m", "cfbench", "compare", "run:base", "run:wo", "--suite", "offline", "--results",
         str(tmp_path), "--diagnostics"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "no stored diagnostics" in res.stderr and "cfbench landscape" in res.stderr
