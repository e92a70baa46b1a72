"""In-domain gain (cfbench/train/indomain.py): the held-out split (deterministic, disjoint from training
even with duplicates, in the manifest), per-document loss with training's masks, exact match on hand
cases, the paired Signals on a synthetic store, and finetune / pair end to end on a tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import typer
from typer.testing import CliRunner

from cfbench.errors import CfbenchError
from cfbench.metrics.indomain import indomain_gain
from cfbench.report.render import to_markdown
from cfbench.store import ResultStore
from cfbench.train.data import encode_example, examples_sha256, load_data
from cfbench.train.finetune import finetune
from cfbench.train.indomain import (
    TABLE,
    HeldoutSplit,
    evaluate_split,
    exact_match,
    example_hash,
    generated_answer,
    heldout_count,
    reference_answer,
    split_data,
    split_from_manifest,
)
from cfbench.train.tiny import make_tiny_checkpoint
from cfbench.train.trainer import token_loss_sum


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cfbench-cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def arithmetic_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append({"instruction": f"Calculate {a} + {b} =", "input": "", "output": f"{a} + {b} = {a + b}"})
    return out


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------
# The split


def test_split_is_deterministic_and_content_based(tmp_path):
    recs = arithmetic_records(50)
    data = load_data(write_jsonl(tmp_path / "a.jsonl", recs))
    _, s1 = split_data(data, 8, seed=0)
    _, s2 = split_data(data, 8, seed=0)
    _, s3 = split_data(data, 8, seed=1)
    assert s1 is not None and s2 is not None and s3 is not None
    assert s1.hashes == s2.hashes and s1.split_hash == s2.split_hash and s1.n == 8
    assert s1.hashes != s3.hashes  # the seed draws another split
    shuffled = recs[:]
    random.Random(5).shuffle(shuffled)
    _, s4 = split_data(load_data(write_jsonl(tmp_path / "b.jsonl", shuffled)), 8, seed=0)
    assert s4 is not None and s4.hashes == s1.hashes  # file order does not matter, content does


def test_split_is_disjoint_from_training_including_duplicates(tmp_path):
    recs = arithmetic_records(30)
    recs += recs[:10] + recs[:3]  # ten records twice, three of them three times
    data = load_data(write_jsonl(tmp_path / "d.jsonl", recs))
    hashes = [example_hash(ex) for ex in data.examples]
    held_duplicates = 0
    for seed in range(5):
        train, split = split_data(data, 12, seed=seed)
        assert split is not None and len(set(split.hashes)) == split.n == 12
        held = set(split.hashes)
        assert not held & {example_hash(ex) for ex in train}
        assert split.n_removed == sum(h in held for h in hashes) == len(data.examples) - len(train)
        assert [example_hash(ex) for ex in split.examples] == list(split.hashes)
        held_duplicates += sum(hashes.count(h) > 1 for h in held)
    assert held_duplicates > 0  # the duplicate case was exercised: every copy left training
    # with 29 of 30 distinct documents held out, only one document (all its copies) is trained on
    train, split = split_data(data, 29, seed=0)
    assert split is not None and len({example_hash(ex) for ex in train}) == 1


def test_heldout_count_rule_and_refusals():
    assert heldout_count(None, 5) == 0  # tiny data: no split by default
    assert heldout_count(None, 200) == 20
    assert heldout_count(None, 5000) == 64
    assert heldout_count(0, 100) == 0 and heldout_count(7, 100) == 7
    with pytest.raises(CfbenchError, match="--heldout must be >= 0"):
        heldout_count(-1, 10)
    with pytest.raises(CfbenchError, match="--heldout 10 leaves no training data: the data has 10 distinct"):
        heldout_count(10, 10)


def test_split_recorded_in_manifest_and_training_never_sees_it(tiny, tmp_path):
    recs = arithmetic_records(40) + arithmetic_records(40)[:4]
    path = write_jsonl(tmp_path / "a.jsonl", recs)
    out = tmp_path / "ft"
    result = finetune(tiny, path, out, lr=1e-3, batch_size=8, max_steps=1, heldout=6, seed=3, progress=False)
    m = json.loads((out / "cfbench_manifest.json").read_text())
    info = m["heldout"]
    data = load_data(path)
    train, split = split_data(data, 6, seed=3)
    assert split is not None
    assert info["n"] == 6 and info["seed"] == 3 and info["rule"].startswith("distinct sha256")
    assert info["example_sha256"] == list(split.hashes) and info["split_hash"] == split.split_hash
    assert info["source"] == str(path) and info["data_sha256"] == data.sha256
    assert m["hyperparameters"]["heldout"] == 6
    assert m["train_set"]["n_examples"] == len(train) == len(recs) - info["n_removed_from_training"]
    assert m["train_set"]["sha256"] == examples_sha256(train)  # exactly the remaining examples were trained on
    rebuilt = split_from_manifest(result.manifest)
    assert rebuilt is not None and rebuilt.hashes == split.hashes
    # a run without a split (the default on tiny data) records none
    small = write_jsonl(tmp_path / "s.jsonl", recs[:5])
    m0 = finetune(tiny, small, tmp_path / "ft0", lr=1e-3, batch_size=8, max_steps=1, progress=False).manifest
    assert m0["heldout"] is None and "heldout" not in m0["hyperparameters"] and split_from_manifest(m0) is None
    with pytest.raises(CfbenchError, match="--heldout must be >= 0"):
        finetune(tiny, path, tmp_path / "bad", heldout=-1, progress=False)
    assert not (tmp_path / "bad").exists()
    # the data changed after training: the split cannot be rebuilt, and saying so beats a wrong split
    write_jsonl(path, recs[1:])
    with pytest.raises(CfbenchError, match="changed since training"):
        split_from_manifest(result.manifest)


# ---------------------------------------------------------------------------------------------
# What is measured


def test_exact_match_hand_cases():
    assert reference_answer("12 + 30 = 42") == ("arithmetic", "42")
    assert reference_answer("She has 3 apples.\n#### 1,234") == ("gsm8k", "1234")
    assert reference_answer("Paris") is None
    assert exact_match("12 + 30 = 42", "12 + 30 = 42") == 1.0
    assert exact_match(" 42", "12 + 30 = 42") == 1.0  # a bare number on the first line is an answer
    assert exact_match("12 + 30 = 43", "12 + 30 = 42") == 0.0
    assert exact_match("12 + 30 = 4\n= 42", "12 + 30 = 42") == 0.0  # only the first line counts
    assert exact_match("", "12 + 30 = 42") == 0.0
    assert exact_match("-7", "3 - 10 = -7") == 1.0
    assert exact_match("so 5+3=8 then #### 1234.", "#### 1,234") == 1.0
    assert exact_match("#### 12 and later #### 1234", "#### 1234") == 0.0  # the first #### answer counts
    assert exact_match("the answer is 1234", "#### 1234") == 0.0  # GSM8K strict match needs ####
    assert exact_match("anything", "Paris") is None
    assert generated_answer("1,000 = 1000", "arithmetic") == "1000"


def test_loss_uses_training_masks(tiny, tmp_path):
    """Per-document loss equals training's token_loss_sum / target tokens on the same encoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = load_data(write_jsonl(tmp_path / "a.jsonl", arithmetic_records(20)))
    _, split = split_data(data, 3, seed=0)
    assert split is not None
    rows = evaluate_split(str(tiny), split, max_length=64, device="cpu")
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    for ex, row in zip(split.examples, rows.itertuples(), strict=True):
        enc = encode_example(tok, ex, 64)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.input_ids])).logits
        expect = float(token_loss_sum(logits, torch.tensor([enc.labels]))) / enc.n_target
        assert row.n_tokens == enc.n_target and row.loss == pytest.approx(expect, rel=1e-5)
        assert row.checkable and row.em in (0.0, 1.0) and isinstance(row.generation, str)


# ---------------------------------------------------------------------------------------------
# Signals on a synthetic store


def synthetic_rows(ckpt: str, split_hash: str, losses, ems, settings: str = "s1") -> pa.Table:
    n = len(losses)
    df = pd.DataFrame({
        "checkpoint_hash": ckpt, "split_hash": split_hash, "settings_hash": settings, "doc_id": range(n),
        "created_at": pd.Timestamp("2026-01-01", tz="UTC"), "checkpoint_name": ckpt, "data": "builtin:x",
        "example_hash": [f"h{i}" for i in range(n)], "n_tokens": 5, "loss_sum": np.asarray(losses) * 5,
        "loss": losses, "checkable": [e is not None for e in ems], "em": ems, "answer": None, "generation": None,
        "settings_json": "{}",
    })  # fmt: skip
    return pa.Table.from_pandas(df, preserve_index=False)


def test_signals_on_a_synthetic_case(tmp_path):
    store = ResultStore(tmp_path / "res")
    rng = np.random.default_rng(0)
    base_loss = rng.uniform(2.0, 3.0, 40)
    shift = rng.normal(-0.5, 0.05, 40)
    base_em = [float(x) for x in rng.integers(0, 2, 40)]
    tuned_em = [1.0] * 30 + base_em[30:]
    base_em[35] = None  # one document not checkable: left out of the EM pairing only
    store.append_table(TABLE, synthetic_rows("base", "sp", base_loss, base_em))
    store.append_table(TABLE, synthetic_rows("tuned", "sp", base_loss + shift, tuned_em))
    store.append_table(TABLE, synthetic_rows("same", "sp", base_loss, base_em))
    loss, em = indomain_gain(store, "base", "tuned", "sp", n_boot=500)
    assert (loss.name, loss.kind, loss.better, loss.n) == ("indomain_loss", "learned", "lower", 40)
    assert loss.unit == "Δ nats/token"
    assert loss.value == pytest.approx(float(np.mean(shift)))
    assert loss.ci is not None and loss.ci[0] < loss.value < loss.ci[1] < 0 and loss.significant is True
    pairs = [(b, t) for b, t in zip(base_em, tuned_em, strict=True) if b is not None]
    expect_em = 100.0 * (np.mean([t for _, t in pairs]) - np.mean([b for b, _ in pairs]))
    assert (em.name, em.kind, em.unit, em.better, em.n) == ("indomain_em", "learned", "Δ pts", "higher", 39)
    assert em.value == pytest.approx(expect_em) and em.value > 0
    assert em.ci is not None and em.ci[0] <= em.value <= em.ci[1]
    assert loss.to_dict()["ci"] == list(loss.ci)
    # identical checkpoints: exactly zero, a [0, 0] interval, not significant
    same_loss, same_em = indomain_gain(store, "base", "same", "sp", n_boot=200)
    assert same_loss.value == 0.0 and same_loss.ci == (0.0, 0.0) and same_loss.significant is False
    assert same_em.value == 0.0 and same_em.significant is False
    # the CI is reproducible (seeded from the data keys)
    assert indomain_gain(store, "base", "tuned", "sp", n_boot=500)[0].ci == loss.ci
    # a split without checkable answers gives only the loss signal
    store.append_table(TABLE, synthetic_rows("base", "txt", [1.0, 2.0, 3.0], [None] * 3))
    store.append_table(TABLE, synthetic_rows("tuned", "txt", [0.5, 1.0, 2.5], [None] * 3))
    (only,) = indomain_gain(store, "base", "tuned", "txt", n_boot=100)
    assert only.name == "indomain_loss" and only.value == pytest.approx(-2.0 / 3.0)


def test_signal_refusals(tmp_path):
    store = ResultStore(tmp_path / "res")
    store.append_table(TABLE, synthetic_rows("base", "sp", [1.0, 2.0], [1.0, 0.0]))
    with pytest.raises(CfbenchError, match="no in-domain results for the tuned checkpoint"):
        indomain_gain(store, "base", "ab" * 32, "sp")
    store.append_table(TABLE, synthetic_rows("tuned", "sp", [1.0, 2.0], [1.0, 0.0], settings="s2"))
    with pytest.raises(CfbenchError, match="measured with different settings"):
        indomain_gain(store, "base", "tuned", "sp")


# ---------------------------------------------------------------------------------------------
# End to end


def cli_app() -> typer.Typer:
    from cfbench.cli.train_cmds import register

    app = typer.Typer()
    register(app)
    return app


def test_pair_cli_measures_and_prints_learned(tiny, tmp_path):
    from cfbench.models.checkpoint import resolve_checkpoint

    data = write_jsonl(tmp_path / "a.jsonl", arithmetic_records(30))
    res = tmp_path / "res"
    args = ["pair", str(tiny), "--data", str(data), "--out", str(tmp_path / "pr"), "--heldout", "5",
            "--lr", "3e-3", "--batch-size", "8", "--max-steps", "2", "--quiet", "--results", str(res),
            "--device", "cpu"]  # fmt: skip
    r = CliRunner().invoke(cli_app(), args)
    assert r.exit_code == 0, r.output
    assert "Learned (in-domain, 5 held-out docs of" in r.output
    assert r.output.count("in-domain loss Δ") == 2 and r.output.count("in-domain EM Δ") == 2
    rows = ResultStore(res).read_table(TABLE)
    assert len(rows) == 15 and rows.groupby("checkpoint_hash").size().tolist() == [5, 5, 5]  # base scored once
    manifest = json.loads((tmp_path / "pr" / "w_sam" / "cfbench_manifest.json").read_text())
    split = split_from_manifest(manifest)
    assert isinstance(split, HeldoutSplit) and set(rows["split_hash"]) == {split.split_hash}
    base_hash = resolve_checkpoint(str(tiny)).content_hash
    loss, _ = indomain_gain(ResultStore(res), base_hash, str(tmp_path / "pr" / "w_sam"), split)
    b = rows[rows.checkpoint_hash == base_hash].sort_values("doc_id")
    t = rows[rows.checkpoint_hash == resolve_checkpoint(str(tmp_path / "pr" / "w_sam")).content_hash]
    assert loss.value == pytest.approx(float(t.sort_values("doc_id")["loss"].mean() - b["loss"].mean()))
    assert f"in-domain loss Δ {loss.value:+.4f} nats/token" in r.output
    # re-running reuses the checkpoints and the stored rows: nothing new is written
    r = CliRunner().invoke(cli_app(), args)
    assert r.exit_code == 0, r.output
    assert len(ResultStore(res).read_table(TABLE)) == 15
    assert len(list((res / TABLE).glob("part-*.parquet"))) == 3


def _runs_store(root: Path) -> ResultStore:
    """Three stored runs with MMLU/ARC/BoolQ items (what compare needs), as in test_compare."""
    from cfbench.store import RunRecord, TaskScore

    store = ResultStore(root)
    rng = np.random.default_rng(0)
    n = 60
    for name in ("ckpt-base", "ckpt-tuned", "ckpt-other"):
        run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=name, suite="offline")
        frames, scores = [], []
        for task in ("mmlu", "arc_challenge", "boolq"):
            c = rng.random(n) < 0.6
            key = f"test:{name}:{task}"
            frames.append(pd.DataFrame({
                "cache_key": key, "run_id": run.run_id, "task": task, "task_hash": "t", "doc_id": np.arange(n),
                "subset": "abstract_algebra" if task == "mmlu" else None, "gold": 0, "pred": np.where(c, 0, 1),
                "acc": c.astype(float), "acc_norm": c.astype(float), "mc1": None, "mc2": None,
                "logprobs": [[-1.0, -2.0]] * n, "n_tokens": [[1, 1]] * n, "is_greedy": [[True, False]] * n,
            }))  # fmt: skip
            scores.append(TaskScore(task=task, metric="acc", value=float(c.mean()), n_items=n, cache_key=key))
        store.append_run(run, scores, pd.concat(frames, ignore_index=True))
    return store


def test_compare_attaches_indomain_signals(tmp_path):
    from cfbench.comparison import compare

    store = _runs_store(tmp_path / "res")
    store.append_table(TABLE, synthetic_rows("ckpt-base", "sp", [2.0, 2.5, 3.0, 2.2], [0.0, 0.0, 1.0, 0.0]))
    store.append_table(TABLE, synthetic_rows("ckpt-tuned", "sp", [1.0, 1.6, 2.1, 1.2], [1.0, 1.0, 1.0, 0.0]))
    res = compare("ckpt-base", ["ckpt-tuned", "ckpt-other"], suite="offline", results=tmp_path / "res", n_boot=200)
    got = {s.name: s for s in res.report.signals.get("ckpt-tuned", []) if s.kind == "learned"}
    expect = {s.name: s for s in indomain_gain(store, "ckpt-base", "ckpt-tuned", "sp", n_boot=200)}
    assert set(got) == {"indomain_loss", "indomain_em"} and got == expect
    assert got["indomain_loss"].value == pytest.approx(-0.95) and got["indomain_em"].value == pytest.approx(50.0)
    # a run without in-domain rows gets no in-domain signals, and nothing breaks
    assert not [s for s in res.report.signals.get("ckpt-other", []) if s.name.startswith("indomain")]
    assert "in-domain loss" in to_markdown(res.report)
    # results that cannot be paired are a note, not a failed compare
    store.append_table(TABLE, synthetic_rows("ckpt-other", "sp", [1.0, 1.0, 1.0, 1.0], [None] * 4, settings="s2"))
    res = compare("ckpt-base", ["ckpt-other"], suite="offline", results=tmp_path / "res", n_boot=200)
    assert any("in-domain gain of ckpt-other: not shown" in n and "different settings" in n for n in res.notes)
