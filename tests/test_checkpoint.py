"""Checkpoint resolution: every spec form, stable hashes, state dicts on a base, clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from cfbench.backends.hf import HFBackend
from cfbench.errors import CfbenchError
from cfbench.models import ResolvedCheckpoint, resolve_checkpoint
from cfbench.models.checkpoint import _atomic_build, _builtin_gguf
from cfbench.models.tiny import make_tiny_llama
from cfbench.requests import LoglikRequest

REQS = [LoglikRequest("The quick brown fox", " jumps over the lazy dog."), LoglikRequest("A man is", " on a roof.")]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-base", seed=0)


@pytest.fixture(scope="module")
def finetuned_sd(base: Path) -> dict[str, torch.Tensor]:
    """The base weights plus a deterministic perturbation, as a training loop would save them."""
    model = AutoModelForCausalLM.from_pretrained(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_hf_folder_and_hash_cache(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run1" / "checkpoint-500"
    shutil.copytree(base, folder)
    cache = tmp_path / "cache"
    r = resolve_checkpoint(str(folder), cache_dir=cache)
    assert r == ResolvedCheckpoint("run1/checkpoint-500", str(folder), folder.resolve(), "hf-folder", r.content_hash)
    assert len(r.content_hash) == 64
    assert resolve_checkpoint(str(folder), cache_dir=cache).content_hash == r.content_hash
    # Same bytes elsewhere: same hash; trainer side files do not count.
    other = tmp_path / "copy"
    shutil.copytree(base, other)
    (other / "optimizer.pt").write_bytes(b"not part of the model")
    assert resolve_checkpoint(str(other), cache_dir=cache).content_hash == r.content_hash

    # Re-resolving trusts the (size, mtime, ctime, inode) cache instead of re-reading the weights (issue 22
    # item 8 added ctime and inode to the freshness key)...
    entries = json.loads((cache / "hashes.json").read_text())
    weights = str((folder / "model.safetensors").resolve())
    assert set(entries[weights]) == {"size", "mtime_ns", "ctime_ns", "ino", "sha256"}
    entries[weights]["sha256"] = "0" * 64
    (cache / "hashes.json").write_text(json.dumps(entries))
    assert resolve_checkpoint(str(folder), cache_dir=cache).content_hash != r.content_hash
    # ...and a rewritten file (new mtime) is hashed again.
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data)
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert resolve_checkpoint(str(folder), cache_dir=cache).content_hash == r.content_hash
    # Changing the tokenizer changes the hash.
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<other>"
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    assert resolve_checkpoint(str(folder), cache_dir=cache).content_hash != r.content_hash


@pytest.mark.parametrize("form", ["pt", "ckpt-lightning-ddp", "bin-model", "safetensors"])
def test_state_dict_on_base_round_trip(
    form: str, base: Path, finetuned_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    sd = finetuned_sd
    if form == "pt":
        path = tmp_path / "ft.pt"
        torch.save(sd, path)
    elif form == "ckpt-lightning-ddp":  # {"state_dict": {"module.model.<name>": ...}, "epoch": ...}
        path = tmp_path / "epoch=1.ckpt"
        torch.save({"epoch": 1, "state_dict": {f"module.model.{k}": v for k, v in sd.items()}}, path)
    elif form == "bin-model":
        path = tmp_path / "pytorch_model.bin"
        torch.save({"model": {k: v for k, v in sd.items() if k != "lm_head.weight"}}, path)
    else:
        path = tmp_path / "ft.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}, str(path))
    cache = tmp_path / "cache"
    r = resolve_checkpoint(str(path), base=str(base), cache_dir=cache)
    assert r.kind == "state-dict" and r.base == str(base)
    assert r.path.parent == cache / "state-dicts" and (r.path / "config.json").is_file()
    assert not [p for p in r.path.parent.iterdir() if p.name.startswith(".tmp")]
    loaded = AutoModelForCausalLM.from_pretrained(r.path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    # Stable: resolving again reuses the folder, and the folder's hash depends on content only.
    again = resolve_checkpoint(str(path), base=str(base), cache_dir=cache)
    assert again == r
    reference = tmp_path / "ref.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}, str(reference))
    assert resolve_checkpoint(str(reference), base=str(base), cache_dir=cache).content_hash == r.content_hash
    # The fine-tune scores differently from its base.
    ft = HFBackend(r.path).loglikelihood(REQS)
    b = HFBackend(base).loglikelihood(REQS)
    assert all(abs(x.logprob - y.logprob) > 1e-3 for x, y in zip(ft, b, strict=True))


def test_vocab_mismatch_is_one_clear_error(base: Path, tmp_path: Path) -> None:
    other = make_tiny_llama(tmp_path / "bigger-vocab", vocab_size=340)
    path = tmp_path / "ft.pt"
    torch.save(AutoModelForCausalLM.from_pretrained(other).state_dict(), path)
    expected = r"vocab size mismatch: ft.pt has 340 embedding rows but base .* 320.*--base"
    with pytest.raises(CfbenchError, match=expected):
        resolve_checkpoint(str(path), base=str(base), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "state-dicts").exists() or not any((tmp_path / "cache" / "state-dicts").iterdir())


def test_tokenizer_mismatch_is_one_clear_error(
    base: Path, finetuned_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save(finetuned_sd, run / "model.pt")
    shutil.copy(base / "tokenizer_config.json", run)
    tok = json.loads((base / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]  # same size, two ids swapped: shapes fit, ids mean other things
    a, b = (next(k for k, v in vocab.items() if v == i) for i in (100, 101))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (run / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CfbenchError, match="tokenizer mismatch"):
        resolve_checkpoint(str(run / "model.pt"), base=str(base), cache_dir=tmp_path / "cache")


def test_state_dict_of_another_architecture(base: Path, tmp_path: Path) -> None:
    deeper = make_tiny_llama(tmp_path / "deeper", layers=3)
    torch.save(AutoModelForCausalLM.from_pretrained(deeper).state_dict(), tmp_path / "deep.pt")
    with pytest.raises(CfbenchError, match=r"does not fit base .*unexpected \['model.layers.2"):
        resolve_checkpoint(str(tmp_path / "deep.pt"), base=str(base), cache_dir=tmp_path / "cache")


def test_state_dict_needs_base(tmp_path: Path, finetuned_sd: dict[str, torch.Tensor]) -> None:
    torch.save(finetuned_sd, tmp_path / "ft.pt")
    with pytest.raises(CfbenchError, match="--base"):
        resolve_checkpoint(str(tmp_path / "ft.pt"), cache_dir=tmp_path / "cache")


def test_unknown_and_missing_specs(tmp_path: Path) -> None:
    with pytest.raises(CfbenchError, match=r"unknown checkpoint 'smollm3'.*built-in name \(smollm2-135m\)"):
        resolve_checkpoint("smollm3", cache_dir=tmp_path)
    with pytest.raises(CfbenchError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope.safetensors"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CfbenchError, match=r"without config\.json"):
        resolve_checkpoint(str(tmp_path / "empty"), cache_dir=tmp_path)


def test_hub_id_offline_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CfbenchError, match=r"HF_HUB_OFFLINE.*local folder"):
        resolve_checkpoint("cfbench-test/does-not-exist", cache_dir=tmp_path)


def test_conversion_is_atomic(tmp_path: Path) -> None:
    final = tmp_path / "gguf" / "model-abc"

    def crash(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_build(final, crash)
    assert list((tmp_path / "gguf").iterdir()) == []

    def good(out: Path) -> None:
        (out / "config.json").write_text("{}")

    assert _atomic_build(final, good) == final and (final / "config.json").is_file()


def test_builtin_and_gguf_forms_share_one_conversion() -> None:
    """Uses the default cache (converted once, ~30 s, then reused by every later run)."""
    r = resolve_checkpoint("smollm2-135m")
    assert r.kind == "builtin" and r.name == "smollm2-135m" and r.base is None
    cfg = json.loads((r.path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["dtype"] == "float32" and "quantization_config" not in cfg
    assert (r.path / "tokenizer.json").is_file()
    g = resolve_checkpoint(str(_builtin_gguf("smollm2-135m")))
    assert g.kind == "gguf" and g.path == r.path and g.content_hash == r.content_hash
    assert g.name == "SmolLM2-135M-Instruct.Q4_1"
