"""PEFT LoRA adapter folders as checkpoints: resolution, identity, refusals, hf parity with the merged model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cfbench.errors import CfbenchError
from cfbench.models.tiny import make_tiny_llama
from cfbench.requests import LoglikRequest

pytest.importorskip("peft")

CONTEXTS = ["Question: Which object rolls the farthest down a ramp? Answer:", "The quick brown fox"]
CHOICES = [" the ball.", " jumps over the lazy dog", " A", " B"]


def _lora(base: Path, *, targets: tuple[str, ...] = ("q_proj", "v_proj"), r: int = 4, seed: int = 1) -> object:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return peft_model


def _save_adapter(peft_model: object, out: Path, base: Path) -> Path:
    peft_model.save_pretrained(out)  # type: ignore[attr-defined]
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    base = make_tiny_llama(root / "base")
    peft_model = _lora(base)
    adapter = _save_adapter(peft_model, root / "run" / "checkpoint-10", base)
    merged = root / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)  # type: ignore[attr-defined]
    for f in base.glob("tokenizer*"):
        shutil.copy2(f, merged / f.name)
    return {"base": base, "adapter": adapter, "merged": merged, "root": root}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))


def test_adapter_resolves_to_a_view_with_a_combined_identity(run: dict[str, Path]) -> None:
    from cfbench.models.adapter import adapter_marker
    from cfbench.models.checkpoint import resolve_checkpoint

    ck = resolve_checkpoint(str(run["adapter"]))
    base = resolve_checkpoint(str(run["base"]))
    assert ck.kind == "adapter" and ck.name == "run/checkpoint-10" and ck.base == str(run["base"])
    assert ck.content_hash != base.content_hash
    assert resolve_checkpoint(str(run["adapter"])).content_hash == ck.content_hash  # stable
    marker = adapter_marker(ck.path)
    assert marker is not None and marker["base_hash"] == base.content_hash and marker["r"] == 4
    # never a merged copy on disk: the view holds the adapter, config and tokenizer only
    assert not list(ck.path.glob("model*.safetensors"))
    assert (ck.path / "adapter_model.safetensors").stat().st_size < 100_000
    # --base wins over the config and gives the same identity for the same base
    assert resolve_checkpoint(str(run["adapter"]), base=str(run["base"])).content_hash == ck.content_hash


def test_adapter_scores_equal_the_merged_checkpoint(run: dict[str, Path]) -> None:
    from cfbench.backends.hf import HFBackend
    from cfbench.models.checkpoint import resolve_checkpoint

    reqs = [LoglikRequest(c, k) for c in CONTEXTS for k in CHOICES]
    view = resolve_checkpoint(str(run["adapter"])).path
    got = HFBackend(view, device="cpu").loglikelihood(reqs)
    want = HFBackend(run["merged"], device="cpu").loglikelihood(reqs)
    base = HFBackend(run["base"], device="cpu").loglikelihood(reqs)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got, want, strict=True)) < 1e-4
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got, base, strict=True)) > 1e-2  # the adapter is applied
    assert "peft" in HFBackend.key_settings(view, {"device": "cpu"})
    assert "peft" not in HFBackend.key_settings(run["base"], {"device": "cpu"})


def test_untrained_adapter_is_refused(run: dict[str, Path], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cfbench.models.checkpoint import resolve_checkpoint

    model = AutoModelForCausalLM.from_pretrained(run["base"])
    fresh = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    out = _save_adapter(fresh, tmp_path / "fresh", run["base"])
    with pytest.raises(CfbenchError, match="leaves the base's logits unchanged") as err:
        resolve_checkpoint(str(out))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "adapters").exists() or not list((tmp_path / "cache" / "adapters").iterdir())


def test_adapter_not_applied_is_refused_by_the_backend(run: dict[str, Path]) -> None:
    """lm-eval #2432: an adapter that loads but does not change the logits must not be scored as the base."""
    import cfbench.backends.hf as hf
    from cfbench.models.checkpoint import resolve_checkpoint

    view = resolve_checkpoint(str(run["adapter"])).path
    from peft import PeftModel

    real = PeftModel.from_pretrained

    def inert(model, path, **kw):  # the adapter loads, but its scale is 0 (as if never activated)
        pm = real(model, path, **kw)
        for m in pm.modules():
            if hasattr(m, "scaling") and isinstance(m.scaling, dict):
                m.scaling = {k: 0.0 for k in m.scaling}
        return pm

    PeftModel.from_pretrained = inert
    try:
        with pytest.raises(CfbenchError, match="leaves the logits of base"):
            hf.HFBackend(view, device="cpu")
    finally:
        PeftModel.from_pretrained = real


def test_base_mismatch_is_refused(run: dict[str, Path], tmp_path: Path) -> None:
    from cfbench.models.checkpoint import resolve_checkpoint

    wide = make_tiny_llama(tmp_path / "wide", hidden_size=64)
    with pytest.raises(CfbenchError, match=r"does not fit base .*hidden or vocab size differs"):
        resolve_checkpoint(str(run["adapter"]), base=str(wide))
    odd = tmp_path / "odd"
    shutil.copytree(run["adapter"], odd)
    cfg = json.loads((odd / "adapter_config.json").read_text())
    cfg["target_modules"] = ["c_attn", "q_proj"]
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CfbenchError, match="targets c_attn, which base"):
        resolve_checkpoint(str(odd))
    cfg["target_modules"] = ["q_proj"]
    cfg["base_model_name_or_path"] = None
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CfbenchError, match="names no base model: pass it with --base"):
        resolve_checkpoint(str(odd))
    cfg["base_model_name_or_path"] = str(run["base"])
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    other_vocab = make_tiny_llama(tmp_path / "vocab", vocab_size=300)
    for f in other_vocab.glob("tokenizer*"):  # saved beside the adapter by a Trainer with another tokenizer
        shutil.copy2(f, odd / f.name)
    with pytest.raises(CfbenchError, match="tokenizer \\(vocab\\) that differs"):
        resolve_checkpoint(str(odd))


def test_vllm_lora_settings_read_the_rank_from_the_adapter(run: dict[str, Path]) -> None:
    from cfbench.backends.vllm import lora_engine_settings
    from cfbench.models.checkpoint import resolve_checkpoint

    view = resolve_checkpoint(str(run["adapter"])).path
    kwargs, request = lora_engine_settings(view)
    assert kwargs == {"model": str(run["base"].resolve()), "tokenizer": str(view), "enable_lora": True,
                      "max_lora_rank": 8, "max_loras": 1}  # fmt: skip
    assert request == ("run/checkpoint-10", 1, str(view))
    assert lora_engine_settings(run["base"]) == ({}, None)


def test_finetune_saves_the_adapter_and_merge_folds_it(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.train.finetune import finetune
    from cfbench.train.merge import merge
    from cfbench.train.tiny import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "base")
    with pytest.raises(CfbenchError, match="--save adapter needs --lora-r"):
        finetune(str(base), "builtin:arithmetic", tmp_path / "x", max_steps=1, progress=False, save="adapter")
    assert not (tmp_path / "x").exists()
    res = finetune(str(base), "builtin:arithmetic", tmp_path / "lora", lr=1e-2, batch_size=4, micro_batch=2,
                   max_steps=2, warmup=0, max_length=64, progress=False, device="cpu", lora_r=2,
                   lora_targets="q_proj,v_proj", save="adapter")  # fmt: skip
    assert (res.path / "adapter_config.json").is_file() and not (res.path / "model.safetensors").exists()
    assert res.manifest["lora"]["merged_on_save"] is False
    ck = resolve_checkpoint(str(res.path))  # the base comes from the adapter config
    assert ck.kind == "adapter" and ck.base == str(base.resolve())
    merged = merge(str(base), str(res.path), 1.0, tmp_path / "merged")
    assert not (merged.path / "adapter_config.json").exists() and not (merged.path / "cfbench_adapter.json").exists()
    w_base, w_merged = load_file(base / "model.safetensors"), load_file(merged.path / "model.safetensors")
    assert w_base.keys() == w_merged.keys()
    changed = {k for k in w_base if not torch.equal(w_base[k], w_merged[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_adapter_scores_equal_the_merged_checkpoint(tmp_path: Path) -> None:
    """vLLM (enable_lora + LoRARequest) gives the merged checkpoint's log-likelihoods (head dim 64 for its kernels)."""
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    from cfbench.backends import make_backend
    from cfbench.models.checkpoint import resolve_checkpoint

    if current_platform.is_cpu():
        pytest.skip("vLLM's CPU LoRA kernels cannot return prompt log-probs (refused: see the test below)")

    base = make_tiny_llama(tmp_path / "base", hidden_size=256)
    peft_model = _lora(base, r=4)
    adapter = _save_adapter(peft_model, tmp_path / "adapter", base)
    merged = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)  # type: ignore[attr-defined]
    for f in base.glob("tokenizer*"):
        shutil.copy2(f, merged / f.name)
    reqs = [LoglikRequest(c, k) for c in CONTEXTS for k in CHOICES]
    scores = []
    for path in (resolve_checkpoint(str(adapter)).path, merged):
        be = make_backend("vllm", path, dtype="float32", enforce_eager=True, max_length=256)
        try:
            scores.append(be.loglikelihood(reqs))
        finally:
            be.close()
    assert max(abs(a.logprob - b.logprob) for a, b in zip(*scores, strict=True)) < 1e-4


@pytest.mark.vllm
def test_vllm_on_cpu_refuses_an_adapter_before_the_engine_starts(run: dict[str, Path]) -> None:
    pytest.importorskip("vllm")
    import cfbench.backends.vllm as vb
    from cfbench.models.checkpoint import resolve_checkpoint

    view = resolve_checkpoint(str(run["adapter"])).path
    with pytest.raises(CfbenchError, match="score it with --backend hf"):
        vb._apply_lora(view, {}, on_cpu=True)
    kwargs: dict = {}
    assert vb._apply_lora(run["base"], kwargs, on_cpu=True) is None and kwargs == {}
    request = vb._apply_lora(view, kwargs, on_cpu=False)
    assert request.lora_name == "run/checkpoint-10" and kwargs["enable_lora"] and kwargs["max_lora_rank"] == 8


def test_landscape_and_diff_refuse_an_adapter_with_the_fix(run: dict[str, Path], tmp_path: Path) -> None:
    """They read weights themselves: an adapter view holds only the factors, which must not pass as weights."""
    from cfbench.analysis.run import diff_checkpoints

    with pytest.raises(CfbenchError, match="landscape/diff need full weights: cfbench merge BASE"):
        diff_checkpoints(str(run["base"]), [str(run["adapter"])], results=tmp_path / "r")


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``AutoModelForCausalLM.from_pretrained`` call (the weights the hf backend reads), by path."""
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained
    loads: list[str] = []

    def counting(path, *args, **kwargs):
        loads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", staticmethod(counting))
    return loads


@pytest.fixture(scope="module")
def more_adapters(run: dict[str, Path]) -> list[Path]:
    """Two more adapters of the same base: one adapting other layers (q,k,v,o), one the same (q,v)."""
    wide = _save_adapter(_lora(run["base"], targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=2),
                         run["root"] / "run" / "checkpoint-20", run["base"])  # fmt: skip
    same = _save_adapter(_lora(run["base"], seed=3), run["root"] / "run" / "checkpoint-30", run["base"])
    return [wide, same]


def test_adapters_of_one_base_share_one_load_and_score_as_separate_loads(
    run: dict[str, Path], more_adapters: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a reuse scope the base is read once; switching adapters (and switching them all off for the
    base) gives every checkpoint exactly the numbers of its own separate load."""
    from cfbench.backends import reuse
    from cfbench.backends.hf import HFBackend
    from cfbench.models.checkpoint import resolve_checkpoint

    reqs = [LoglikRequest(c, k) for c in CONTEXTS for k in CHOICES]
    views = [resolve_checkpoint(str(p)).path for p in (run["adapter"], *more_adapters)]
    paths = {"base": run["base"], "a1": views[0], "a2": views[1], "a3": views[2]}

    def score(path: Path) -> list[float]:
        be = HFBackend(path, device="cpu")
        try:
            return [r.logprob for r in be.loglikelihood(reqs)]
        finally:
            be.close()

    alone = {name: score(p) for name, p in paths.items()}
    assert len({tuple(v) for v in alone.values()}) == 4  # every adapter changes the numbers
    loads = _count_loads(monkeypatch)
    order = ["a1", "base", "a2", "a1", "a3", "base"]  # the base after adapters, an adapter again
    with reuse.reuse_loads():
        shared = {}
        for name in order:
            got = score(paths[name])
            assert got == alone[name], name  # bit for bit
            shared[name] = got
        kept = reuse.held("hf")
        assert len(kept.peft.peft_config) <= 2  # closed backends' adapters are deleted as the next comes
    assert loads == [str(run["base"].resolve())]  # one base load for 3 adapters and the base
    assert reuse.held("hf") is None  # freed when the scope ends
    score(paths["a2"])  # outside a scope: a load of its own again
    assert len(loads) == 2


def test_two_live_backends_on_one_shared_base_each_score_their_own(
    run: dict[str, Path], more_adapters: list[Path]
) -> None:
    """Each backend puts the shared model in its state before scoring, so open ones do not mix."""
    from cfbench.backends import reuse
    from cfbench.backends.hf import HFBackend
    from cfbench.models.checkpoint import resolve_checkpoint

    reqs = [LoglikRequest(c, k) for c in CONTEXTS for k in CHOICES]
    view = resolve_checkpoint(str(more_adapters[0])).path
    want_a = HFBackend(view, device="cpu").loglikelihood(reqs)
    want_b = HFBackend(run["base"], device="cpu").loglikelihood(reqs)
    with reuse.reuse_loads():
        a, b = HFBackend(view, device="cpu"), HFBackend(run["base"], device="cpu")
        assert b.loglikelihood(reqs) == want_b and a.loglikelihood(reqs) == want_a
        assert b.loglikelihood(reqs) == want_b
        a.close()
        b.close()


@pytest.mark.skipif(not __import__("cfbench.data.bundled", fromlist=["x"]).bundled_root(), reason="no bundled data")
def test_compare_loads_the_base_once_for_its_adapters(
    run: dict[str, Path], more_adapters: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compare BASE A1 A2 A3``: one base load; the stored items equal those of separate ``eval`` runs
    under the same cache keys (identity and caching unchanged)."""
    from cfbench.comparison import compare
    from cfbench.engine import evaluate
    from cfbench.store import ResultStore

    adapters = [str(run["adapter"]), *(str(p) for p in more_adapters)]
    opts = {"limit": 3, "progress": "off", "tasks": ["copa", "arc_challenge"]}
    for spec in [str(run["base"]), *adapters]:
        evaluate(spec, suite="offline", results=tmp_path / "alone", **opts)
    loads = _count_loads(monkeypatch)
    compare(str(run["base"]), adapters, suite="offline", results=tmp_path / "shared", n_boot=0, eval_kwargs=opts)
    assert loads == [str(run["base"].resolve())]
    cols = ["cache_key", "doc_id", "logprobs"]
    frames = [ResultStore(tmp_path / d).items()[cols].sort_values(cols[:2]).reset_index(drop=True)
              for d in ("alone", "shared")]  # fmt: skip
    assert len(frames[0]) == 4 * 2 * 3
    assert frames[0]["cache_key"].tolist() == frames[1]["cache_key"].tolist()
    assert [list(x) for x in frames[0]["logprobs"]] == [list(x) for x in frames[1]["logprobs"]]
