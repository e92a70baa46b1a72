"""Wise-FT merge (maths, errors, atomic output) and rehearsal mixing (ratio, seeding)."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cfbench.errors import CfbenchError
from cfbench.train.data import Example, load_data, mix_rehearsal, rehearsal_count
from cfbench.train.finetune import finetune
from cfbench.train.merge import merge, merge_state_dicts, merge_sweep, parse_alphas
from cfbench.train.tiny import make_tiny_checkpoint

merge_module = importlib.import_module("cfbench.train.merge")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cfbench-cache"))


@pytest.fixture(scope="module")
def pair_of_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny checkpoints with the same architecture and different random weights."""
    root = tmp_path_factory.mktemp("models")
    return make_tiny_checkpoint(root / "base", seed=0), make_tiny_checkpoint(root / "tuned", seed=1)


def with_extra_tensor(src: Path, dst: Path, name: str, tensor: torch.Tensor) -> Path:
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    sd[name] = tensor
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_merge_is_the_interpolation(pair_of_models, tmp_path, alpha):
    base, tuned = pair_of_models
    b, t = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    result = merge(base, tuned, alpha, tmp_path / "m")
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert got.keys() == t.keys()
    for k in t:
        want = (1 - alpha) * b[k].double() + alpha * t[k].double()
        assert got[k].dtype == t[k].dtype
        torch.testing.assert_close(got[k].double(), want, atol=1e-7, rtol=0)
        if alpha == 0.0:
            assert torch.equal(got[k], b[k])
        if alpha == 1.0:
            assert torch.equal(got[k], t[k])
    assert max(float((b[k] - t[k]).abs().max()) for k in t) > 1e-2  # the two really differ
    m = json.loads((tmp_path / "m" / "cfbench_manifest.json").read_text())
    assert m["alpha"] == alpha and m["method"] == "wise-ft" and m["n_interpolated"] == len(t)
    assert m["base"]["path"] == str(base.resolve()) and m == json.loads(json.dumps(result.manifest, default=str))
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}


def test_non_float_tensors_come_from_tuned(pair_of_models, tmp_path):
    base, tuned = pair_of_models
    b = with_extra_tensor(base, tmp_path / "b", "counter", torch.tensor([1, 2, 3]))
    t = with_extra_tensor(tuned, tmp_path / "t", "counter", torch.tensor([7, 8, 9]))
    merge(b, t, 0.5, tmp_path / "m")
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert torch.equal(got["counter"], torch.tensor([7, 8, 9]))


def test_merge_state_dicts_errors():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    with pytest.raises(CfbenchError, match=r"different tensors \(only in tuned: \['c'\]; only in base: \['b'\]\)"):
        merge_state_dicts(a, {"w": torch.zeros(2, 3), "c": torch.zeros(3)}, 0.5)
    with pytest.raises(CfbenchError, match=r"tensor w has shape \(2, 3\) in base but \(3, 2\) in tuned"):
        merge_state_dicts(a, {"w": torch.zeros(3, 2), "b": torch.zeros(3)}, 0.5)
    with pytest.raises(CfbenchError, match=r"is torch\.int64 in base but torch\.float32 in tuned: they must both be"):
        merge_state_dicts({"w": torch.zeros(2, 3, dtype=torch.long), "b": torch.zeros(3)}, a, 0.5)


def test_merge_refuses_mismatched_checkpoints(pair_of_models, tmp_path):
    base, tuned = pair_of_models
    bigger = make_tiny_checkpoint(tmp_path / "bigger", hidden_size=64)
    with pytest.raises(CfbenchError, match=r"config hidden_size differs .* merge a fine-tune with the base"):
        merge(base, bigger, 0.5, tmp_path / "m1")
    extra = with_extra_tensor(tuned, tmp_path / "extra", "extra.weight", torch.zeros(2))
    with pytest.raises(CfbenchError, match=r"only in tuned: \['extra.weight'\]"):
        merge(base, extra, 0.5, tmp_path / "m2")
    with pytest.raises(CfbenchError, match=r"--alpha must be in \[0, 1\]"):
        merge(base, tuned, 1.5, tmp_path / "m3")
    no_weights = tmp_path / "noweights"
    shutil.copytree(tuned, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CfbenchError, match=r"but no weights"):
        merge(base, no_weights, 0.5, tmp_path / "m4")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("m", ".m"))]


def test_merge_output_is_atomic(pair_of_models, tmp_path, monkeypatch):
    base, tuned = pair_of_models
    merge(base, tuned, 0.5, tmp_path / "m")
    with pytest.raises(CfbenchError, match="already exists and is not empty"):
        merge(base, tuned, 0.25, tmp_path / "m")

    def broken_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(merge_module.shutil, "copy2", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        merge(base, tuned, 0.25, tmp_path / "m", overwrite=True)
    # The failed overwrite left the previous complete merge untouched and no temp folder behind.
    assert json.loads((tmp_path / "m" / "cfbench_manifest.json").read_text())["alpha"] == 0.5
    with pytest.raises(OSError):
        merge(base, tuned, 0.25, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ---------------------------------------------------------------------------------------------
# Rehearsal


def examples(prefix: str, n: int) -> list[Example]:
    return [Example(messages=(("user", f"{prefix}{i}"), ("assistant", "x")), where=str(i)) for i in range(n)]


@pytest.mark.parametrize("n_task,ratio,n_general", [(80, 0.2, 20), (100, 0.5, 100), (30, 0.0, 0), (9, 0.25, 3)])
def test_rehearsal_fraction_of_the_mixed_set(n_task, ratio, n_general):
    task, general = examples("t", n_task), examples("g", 500)
    mixed, n = mix_rehearsal(task, general, ratio, seed=0)
    assert n == n_general == rehearsal_count(n_task, ratio)
    assert len(mixed) == n_task + n_general
    assert sum(ex.messages[0][1].startswith("g") for ex in mixed) == n_general
    assert sum(ex.messages[0][1].startswith("t") for ex in mixed) == n_task
    if n_general:
        assert n_general / len(mixed) == pytest.approx(ratio, abs=0.5 / len(mixed) + 1e-9)
        assert len({ex.messages[0][1] for ex in mixed if ex.messages[0][1].startswith("g")}) == n_general


def test_rehearsal_is_seeded_and_repeats_a_small_pool():
    task, general = examples("t", 40), examples("g", 200)
    a, _ = mix_rehearsal(task, general, 0.2, seed=1)
    b, _ = mix_rehearsal(task, general, 0.2, seed=1)
    c, _ = mix_rehearsal(task, general, 0.2, seed=2)
    assert a == b and a != c
    small = examples("g", 3)
    mixed, n = mix_rehearsal(task, small, 0.5, seed=0)
    drawn = [ex.messages[0][1] for ex in mixed if ex.messages[0][1].startswith("g")]
    assert n == 40 and len(drawn) == 40
    assert max(drawn.count(x) for x in set(drawn)) - min(drawn.count(x) for x in set(drawn)) <= 1  # evenly reused
    with pytest.raises(CfbenchError, match=r"rehearsal ratio 1.0 is outside \[0, 1\)"):
        mix_rehearsal(task, general, 1.0, seed=0)
    with pytest.raises(CfbenchError, match="rehearsal data has no examples"):
        mix_rehearsal(task, [], 0.2, seed=0)


def test_finetune_records_rehearsal(pair_of_models, tmp_path):
    base, _ = pair_of_models
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(8)))
    general = tmp_path / "general.txt"
    general.write_text("\n\n".join(f"general document {i}" for i in range(10)))
    result = finetune(
        base, task, tmp_path / "out", rehearsal=general, rehearsal_ratio=0.2, batch_size=16, max_steps=1,
        lr=1e-3, progress=False,
    )  # fmt: skip
    m = result.manifest
    assert m["rehearsal"]["n_mixed_in"] == 2 and m["rehearsal"]["format"] == "text"
    assert m["rehearsal"]["sha256"] == load_data(general).sha256
    assert m["train_set"]["n_examples"] == 10 and m["hyperparameters"]["rehearsal_ratio"] == 0.2


def test_merge_sweep_one_checkpoint_per_alpha(pair_of_models, tmp_path):
    base, tuned = pair_of_models
    results = merge_sweep(base, tuned, "0.25,0.5,0.75", tmp_path / "sw")
    assert [r.path for r in results] == [tmp_path / "sw" / f"alpha-{a}" for a in ("0.25", "0.5", "0.75")]
    b, t = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    for alpha, r in zip((0.25, 0.5, 0.75), results, strict=True):
        got = load_file(str(r.path / "model.safetensors"))
        for k in t:
            torch.testing.assert_close(
                got[k].double(), (1 - alpha) * b[k].double() + alpha * t[k].double(), atol=1e-7, rtol=0
            )
        assert json.loads((r.path / "cfbench_manifest.json").read_text())["alpha"] == alpha
    # One sweep equals separate single merges, byte for byte in the weights.
    single = merge(base, tuned, 0.5, tmp_path / "one")
    assert (single.path / "model.safetensors").read_bytes() == (results[1].path / "model.safetensors").read_bytes()
    # Refused before anything is written: an existing alpha folder, bad or repeated values.
    with pytest.raises(CfbenchError, match=r"alpha-0.5 already exists"):
        merge_sweep(base, tuned, "0.1,0.5", tmp_path / "sw")
    assert not (tmp_path / "sw" / "alpha-0.1").exists()
    bad_alphas = [
        ("0.2,1.5", r"in \[0, 1\].*got 1.5"),
        ("0.2,0.2", "repeats a value"),
        ("0.2,x", "not a number list"),
        ("0.2,", "comma-separated list"),
        ("nan", r"in \[0, 1\]"),
    ]
    for bad, msg in bad_alphas:
        with pytest.raises(CfbenchError, match=msg):
            merge_sweep(base, tuned, bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert parse_alphas(0.3) == [0.3] and parse_alphas([0.1, 0.9]) == [0.1, 0.9]
    merge_sweep(base, tuned, "0.25,0.5,0.75", tmp_path / "sw", overwrite=True)


def test_cli_merge_several_alphas(pair_of_models, tmp_path):
    import typer
    from typer.testing import CliRunner

    from cfbench.cli.train_cmds import register

    app = typer.Typer()
    register(app)
    base, tuned = pair_of_models
    r = CliRunner().invoke(app, ["merge", str(base), str(tuned), "--alpha", "0.5,1", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "Wise-FT α=0.5: " in r.output and str(tmp_path / "m" / "alpha-1") in r.output
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"alpha-0.5", "alpha-1"}
    r = CliRunner().invoke(app, ["merge", str(base), str(tuned), "--alpha", "0.5", "--out", str(tmp_path / "single")])
    assert r.exit_code == 0 and (tmp_path / "single" / "model.safetensors").is_file()
