"""``cfbench compare`` in a terminal or a pipe stays ≤ 120 columns (issue 19 item 9).

The report's tables were already split into ≤ 120-column parts, but the command printed them on a
160-column console when stdout is not a terminal, so the summary sentences, footnotes and legend
ran to 160 columns in every log and CI page. Measured here on the command's real stdout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from rich.cells import cell_len

from cfbench.store import ResultStore, RunRecord, TaskScore

TASKS = ("mmlu", "boolq", "rte", "copa", "hellaswag", "siqa", "arc_challenge", "openbookqa")


def _store(root: Path) -> None:
    """A base and two tuned runs with items and per-choice log-probs (so drift signals are attached)."""
    store = ResultStore(root)
    rng = np.random.default_rng(0)
    n = 120
    base = {t: rng.random(n) < 0.6 for t in TASKS}
    for name, flip in (("base", 0.0), ("w/o SAM lr 3e-5", 0.15), ("w/ SAM lr 3e-5 rho 0.05", 0.08)):
        run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=name.replace("/", "_"), suite="offline")
        frames, scores = [], []
        for task, correct in base.items():
            c = correct ^ (rng.random(n) < flip)
            key = f"test:{name}:{task}"
            lp = np.where(c[:, None], [[-0.5, -1.5]], [[-1.5, -0.5]]) + rng.normal(0, 0.2, (n, 2))
            frames.append(pd.DataFrame({
                "cache_key": key, "run_id": run.run_id, "task": task, "task_hash": "t", "doc_id": np.arange(n),
                "subset": "abstract_algebra" if task == "mmlu" else None, "gold": 0, "pred": np.where(c, 0, 1),
                "acc": c.astype(float), "acc_norm": c.astype(float), "mc1": None, "mc2": None,
                "logprobs": [list(x) for x in lp], "n_tokens": [[1, 1]] * n, "is_greedy": [[True, False]] * n,
            }))  # fmt: skip
            metric = "acc_norm" if task == "hellaswag" else "acc"
            scores.append(TaskScore(task=task, metric=metric, value=float(c.mean()), n_items=n, cache_key=key))
        store.append_run(run, scores, pd.concat(frames, ignore_index=True))


def test_compare_table_output_fits_120_columns_when_piped(tmp_path: Path) -> None:
    _store(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "cfbench", "compare", "base", "w/o SAM lr 3e-5", "w/ SAM lr 3e-5 rho 0.05",
         "--suite", "offline", "--results", str(tmp_path), "--n-boot", "200"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any("Per task: w/o SAM lr 3e-5 − base" in x for x in lines)  # the wide per-task tables are there
    assert any(len(x) > 100 for x in lines)  # and prose fills the width: the limit is what binds
    widths = [cell_len(x.rstrip()) for x in lines]
    assert max(widths) <= 120, max(zip(widths, lines, strict=True))  # before: 160
