"""Numerics that must not fail silently: mc2 underflow, NaN log-probs, collapsed or exploded fine-tunes.

Each test pins one class of bug that used to give a plausible-looking number (mc2 = 0.0, a run
labelled ``completed``, "last good" weights of |w| = 1e30) instead of a right one or an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cfbench.errors import CfbenchError
from cfbench.requests import LoglikResult
from cfbench.tasks import get_task
from cfbench.train.finetune import finetune
from cfbench.train.merge import load_safetensors_folder

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def tqa():
    from cfbench.data import default_sources

    return get_task("truthfulqa_mc", default_sources(FIXTURE_DATA))



def test_mc2_survives_exp_underflow(tqa) -> None:
    """Log-likelihoods near -800 underflow exp() to 0; mc2 is a ratio and must not become 0.0."""
    inst = tqa.instances(limit=1)[0]
    assert inst.mc2_labels is not None
    labels = np.array(inst.mc2_labels)
    n_mc2 = len(labels)
    off = len(inst.requests) - n_mc2
    rng = np.random.default_rng(0)
    mc2_lls = -800.0 + rng.normal(0, 1.0, n_mc2)
    lls = [-5.0] * off + list(mc2_lls)
    results = [LoglikResult(float(x), False, 3) for x in lls]
    got = tqa.score(inst, results).metrics["mc2"]
    # Reference in log space: the shift by a constant does not change the ratio.
    p = np.exp(mc2_lls + 800.0)
    want = float(p[labels == 1].sum() / p.sum())
    assert 0.0 < want < 1.0
    assert got == pytest.approx(want, rel=1e-9)
    # And it equals the value at ordinary log-likelihoods (mc2 is shift-invariant).
    # (Only the mc2 answers are shifted: the others stay at -5, since a log-prob above 0 is refused, issue 22.)
    shifted = [LoglikResult(float(x) + (790.0 if i >= off else 0.0), False, 3) for i, x in enumerate(lls)]
    assert tqa.score(inst, shifted).metrics["mc2"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_logprob_is_an_error_naming_task_and_doc(tqa, bad: float) -> None:
    inst = tqa.instances(limit=1)[0]
    results = [LoglikResult(-3.0, False, 2) for _ in inst.requests]
    results[1] = LoglikResult(bad, False, 2)
    with pytest.raises(CfbenchError) as info:
        tqa.score(inst, results)
    msg = str(info.value)
    assert "truthfulqa_mc" in msg and f"doc {inst.doc_id}" in msg and "\n" not in msg


def test_hf_backend_keeps_nan_instead_of_minus_inf(tiny_model: Path) -> None:
    """The backend must hand a NaN on (Task.score refuses it), not turn it into a silent -inf."""
    from cfbench.backends import make_backend
    from cfbench.requests import LoglikRequest

    be = make_backend("hf", tiny_model, dtype="float32")
    try:
        with torch.no_grad():
            for p in be.model.parameters():
                p.fill_(float("nan"))
        (res,) = be.loglikelihood([LoglikRequest("The quick brown", " fox")])
        assert math.isnan(res.logprob)
    finally:
        be.close()


# ---------------------------------------------------------------------------------------------
# Fine-tuning that collapses or explodes


ALPACA = [{"instruction": f"Add {i} and {i + 1}.", "output": f"The sum is {2 * i + 1}."} for i in range(8)]


def _data(tmp_path: Path) -> Path:
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    return p


@pytest.mark.parametrize("lr", [1e3, 1e30], ids=["collapse", "explode"])
def test_diverged_finetune_fails_and_writes_no_good_checkpoint(tiny_model: Path, tmp_path: Path, lr: float) -> None:
    out = tmp_path / "run"
    with pytest.raises(CfbenchError) as info:
        finetune(tiny_model, _data(tmp_path), out, lr=lr, batch_size=2, micro_batch=2, max_steps=6,
                 warmup=0, lr_schedule="constant", progress=False)  # fmt: skip
    msg = str(info.value)
    assert "\n" not in msg and "--lr" in msg and ("collapsed" in msg or "exploded" in msg), msg
    manifest = json.loads((out / "cfbench_manifest.json").read_text())
    assert manifest["status"] == "diverged" and manifest["saved_weights"] is None
    assert not list(out.glob("*.safetensors"))  # nothing that eval could mistake for a model


def test_eval_refuses_checkpoint_with_nonfinite_weights(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from cfbench.engine import plan_evaluation

    bad = tmp_path / "bad-model"
    bad.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_safetensors_folder(tiny_model)
    name = sorted(tensors)[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("inf")
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CfbenchError) as info:
        plan_evaluation(str(bad), tasks=["copa"], limit=2, results=tmp_path / "res")
    msg = str(info.value)
    assert name in msg and "inf" in msg and "\n" not in msg
    # The verdict is cached per content hash: a second plan refuses without rescanning.
    import cfbench.models.hashing as hashing

    def no_scan(folder: Path) -> str | None:
        raise AssertionError("rescanned")

    orig = hashing.first_bad_tensor
    hashing.first_bad_tensor = no_scan
    try:
        with pytest.raises(CfbenchError, match="non-finite"):
            plan_evaluation(str(bad), tasks=["copa"], limit=2, results=tmp_path / "res")
    finally:
        hashing.first_bad_tensor = orig


def test_collapsed_finetune_fails_and_is_never_completed(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """Loss at ln(vocab) with zero gradient (what --lr 1e3 did to SmolLM2-135M) is a failure, not `completed`."""
    import sys

    tr = sys.modules["cfbench.train.trainer"]
    real_step = tr.Trainer.step
    calls = {"n": 0}

    def step(self, batches, n_target):
        stats = real_step(self, batches, n_target)
        calls["n"] += 1
        if calls["n"] >= 2:  # from step 2 on: the uniform-prediction signature
            stats = {**stats, "loss": math.log(self.model.config.vocab_size) + 1e-4, "grad_norm": 0.0}
        return stats

    monkeypatch.setattr(tr.Trainer, "step", step)
    out = tmp_path / "run"
    with pytest.raises(CfbenchError, match=r"collapsed .* at step 2; no weights were saved"):
        finetune(tiny_model, _data(tmp_path), out, lr=1e-4, batch_size=2, micro_batch=2, max_steps=4,
                 warmup=0, lr_schedule="constant", progress=False)  # fmt: skip
    manifest = json.loads((out / "cfbench_manifest.json").read_text())
    assert manifest["status"] == "diverged" and manifest["steps"] == 2
    assert not list(out.glob("*.safetensors"))
