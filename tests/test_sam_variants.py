"""Cheaper SAM variants (every_k, only_norm / SAM-ON, low-precision backup) against hand computations.

Each option is checked where it can fail: every_k=1 must be exact SAM bit for bit; every_k=k must
ascend on steps 0, k, 2k, ... and land where "SAM step, then plain steps" computed with plain
tensors lands; only_norm must leave every other weight bitwise untouched during the ascent and use
the norm of the norm-layer gradients only; the bf16/fp16 backup must restore within the documented
float32 bound (and not be exact by accident of a copy). Distributed: FSDP2 on 2 ranks with only_norm
and every_k must reproduce one process, and a per-shard subset norm must not.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import typer
from test_sam import LR, global_norm, grads_at, lm_loss, named, tiny_llama
from typer.testing import CliRunner

from cfbench.errors import CfbenchError
from cfbench.train.finetune import finetune
from cfbench.train.pair import pair
from cfbench.train.sam import SAM, norm_parameters
from cfbench.train.tiny import make_tiny_checkpoint

U32 = 2.0**-24  # float32 unit roundoff


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 40, (8, 12), generator=torch.Generator().manual_seed(1))


def drive(model: torch.nn.Module, ids: torch.Tensor, opt: SAM, steps: int) -> list[int]:
    """Run ``steps`` optimizer steps the way Trainer does; returns the steps that did the ascent."""
    ascended = []
    for i in range(steps):
        lm_loss(model, None, ids).backward()
        if opt.ascent_due:
            ascended.append(i)
            opt.first_step(zero_grad=True)
            lm_loss(model, None, ids).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.plain_step(zero_grad=True)
    return ascended


# ---------------------------------------------------------------------------------------------
# every_k


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_every_k_1_is_exact_sam_bit_for_bit(ids, base):
    cls, kw = (torch.optim.SGD, {"lr": LR, "momentum": 0.9}) if base == "sgd" else (torch.optim.AdamW, {"lr": LR})
    a, b = tiny_llama(), tiny_llama()
    exact = SAM(a.parameters(), cls, rho=0.5, **kw)
    k1 = SAM(b.parameters(), cls, rho=0.5, every_k=1, **kw)
    for _ in range(3):  # the plain explicit form of tests/test_sam.py, no ascent_due involved
        lm_loss(a, None, ids).backward()
        exact.first_step(zero_grad=True)
        lm_loss(a, None, ids).backward()
        exact.second_step(zero_grad=True)
    assert drive(b, ids, k1, 3) == [0, 1, 2]
    for k, v in named(a).items():
        assert torch.equal(v, named(b)[k]), k


def test_every_k_ascends_on_steps_0_k_2k_and_matches_hand_computation(ids):
    rho, k, steps = 0.5, 3, 7
    model = tiny_llama()
    w = named(model)
    for i in range(steps):  # reference with plain tensors: SAM-SGD on i % k == 0, plain SGD otherwise
        g = grads_at(model, w, ids)
        if i % k == 0:
            norm = global_norm(g)
            g = grads_at(model, {n: w[n] + rho * g[n] / norm for n in w}, ids)
        w = {n: w[n] - LR * g[n] for n in w}
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, every_k=k, lr=LR)
    calls = []
    real = opt.first_step
    opt.first_step = lambda **kw: (calls.append(opt.steps_done), real(**kw))[1]  # type: ignore[method-assign]
    assert drive(model, ids, opt, steps) == [0, 3, 6]
    assert calls == [0, 3, 6]
    for n, v in named(model).items():
        torch.testing.assert_close(v, w[n], atol=1e-10, rtol=0)
    # the closure form follows the same schedule: 2 calls on SAM steps, 1 in between
    model2, n_calls = tiny_llama(), []
    opt2 = SAM(model2.parameters(), torch.optim.SGD, rho=rho, every_k=k, lr=LR)

    def closure():
        n_calls.append(1)
        loss = lm_loss(model2, None, ids)
        loss.backward()
        return loss

    for _ in range(steps):
        opt2.zero_grad()
        opt2.step(closure)
    assert len(n_calls) == steps + 3
    for n, v in named(model2).items():
        torch.testing.assert_close(v, w[n], atol=1e-10, rtol=0)


def test_every_k_step_count_survives_state_dict(ids):
    a = tiny_llama()
    opt_a = SAM(a.parameters(), torch.optim.AdamW, rho=0.5, every_k=3, lr=LR)
    drive(a, ids, opt_a, 2)
    saved = opt_a.state_dict()
    assert saved["sam_steps_done"] == 2
    b = tiny_llama()
    b.load_state_dict(a.state_dict())
    opt_b = SAM(b.parameters(), torch.optim.AdamW, rho=0.5, every_k=3, lr=LR)
    opt_b.load_state_dict(saved)
    assert opt_b.steps_done == 2 and not opt_b.ascent_due  # step 2 is plain, step 3 ascends
    assert drive(b, ids, opt_b, 2) == [1]  # i.e. global step 3
    with pytest.raises(ValueError, match="every_k"):
        SAM(b.parameters(), torch.optim.SGD, every_k=0, lr=LR)
    with pytest.raises(RuntimeError, match="between first_step"):
        lm_loss(b, None, ids).backward()
        opt_b.first_step()
        opt_b.plain_step()


# ---------------------------------------------------------------------------------------------
# only_norm (SAM-ON)


def test_norm_parameters_by_type_and_by_name():
    model = tiny_llama()
    found = {id(p) for p in norm_parameters(model)}
    want = {id(p) for n, p in model.named_parameters() if "norm" in n}
    assert found == want and len(want) == 2 * 2 + 1  # two per layer + the final norm

    class Gain(torch.nn.Module):  # a norm layer whose class name says nothing: found by its name
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    net = torch.nn.Sequential()
    net.add_module("fc", torch.nn.Linear(4, 4))
    net.add_module("ln_f", Gain())
    net.add_module("bn", torch.nn.LayerNorm(4))
    got = {id(p) for p in norm_parameters(net)}
    assert got == {id(net.ln_f.weight), id(net.bn.weight), id(net.bn.bias)}
    with pytest.raises(ValueError, match="no normalisation"):
        norm_parameters(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_only_norm_perturbs_only_norm_params_and_restores_exactly(ids, adaptive):
    rho = 0.7
    model = tiny_llama()
    norms = norm_parameters(model)
    norm_names = {n for n, p in model.named_parameters() if any(p is q for q in norms)}
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, perturb=norms, lr=LR)
    before = named(model)
    lm_loss(model, None, ids).backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.first_step(zero_grad=True)
    moved = named(model)
    gn = {n: g[n] * (before[n].abs() if adaptive else 1) for n in norm_names}
    denom = global_norm(gn)  # the norm over the norm-layer gradients only
    for n, v in moved.items():
        if n in norm_names:
            step = rho * (before[n] ** 2 if adaptive else 1) * g[n] / denom
            torch.testing.assert_close(v, before[n] + step, atol=1e-12, rtol=0)
            assert not torch.equal(v, before[n])
        else:
            assert torch.equal(v, before[n]), n  # bitwise untouched during the ascent
    if not adaptive:
        radius = global_norm({n: moved[n] - before[n] for n in norm_names})
        assert abs(float(radius) - rho) < 1e-9
    assert {id(p) for p in opt.state} == {id(p) for p in norms}  # buffers only for the subset
    opt.restore()
    for n, v in named(model).items():
        assert torch.equal(v, before[n]), n
    with pytest.raises(ValueError, match="not parameters"):
        SAM(list(model.parameters())[:3], torch.optim.SGD, perturb=norms, lr=LR)


def test_only_norm_step_matches_hand_computation(ids):
    rho = 0.5
    model = tiny_llama()
    norm_names = [n for n, _ in model.named_parameters() if "norm" in n]
    w = named(model)
    for _ in range(2):
        g = grads_at(model, w, ids)
        denom = global_norm({n: g[n] for n in norm_names})
        gs = grads_at(model, {n: w[n] + (rho * g[n] / denom if n in norm_names else 0) for n in w}, ids)
        w = {n: w[n] - LR * gs[n] for n in w}
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, perturb=norm_parameters(model), lr=LR)
    drive(model, ids, opt, 2)
    for n, v in named(model).items():
        torch.testing.assert_close(v, w[n], atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------------
# low-precision backup


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_low_precision_backup_restores_within_the_documented_bound(ids, dtype, adaptive):
    model = tiny_llama().float()
    rho = 0.05 if not adaptive else 0.5
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, backup_dtype=dtype, lr=LR)
    before = named(model)
    lm_loss(model, None, ids).backward()
    g = {n: p.grad.double() for n, p in model.named_parameters()}
    opt.first_step(zero_grad=True)
    moved = named(model)
    bufs = {n: opt.state[p]["eps_low"] for n, p in model.named_parameters()}
    assert all(b.dtype == dtype for b in bufs.values())
    assert all(set(s) == {"eps_low"} for s in opt.state.values())  # no float32 copy of w
    # the weights moved by exactly the stored ε' (up to one float32 rounding of w + ε')
    for n in before:
        exact = before[n].double() + bufs[n].double()
        assert (moved[n].double() - exact).abs().le(U32 * exact.abs() * 1.0001).all(), n
    # ε' is ε rounded: radius within the dtype's unit roundoff of ρ (SAM) / close to the formula (ASAM)
    wd = {n: before[n].double() for n in before}
    if adaptive:
        denom = global_norm({n: wd[n].abs() * g[n] for n in g})
        eps = {n: rho * wd[n] ** 2 * g[n] / denom for n in g}
    else:
        denom = global_norm(g)
        eps = {n: rho * g[n] / denom for n in g}
    got = {n: bufs[n].double() for n in bufs}
    rel = float(global_norm({n: got[n] - eps[n] for n in eps}) / global_norm(eps))
    u_low = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert rel <= u_low * 1.01 + (1e-3 if dtype == torch.float16 else 0)  # fp16: subnormal ε elements
    opt.restore()
    max_err = 0.0
    for n, v in named(model).items():
        err = (v.double() - wd[n]).abs()
        bound = U32 * (2 * wd[n].abs() + got[n].abs()) * (1 + U32)
        assert err.le(bound).all(), n
        max_err = max(max_err, float(err.max()))
    assert max_err < 1e-6  # |w| here is O(1): within a few float32 ulps


def test_low_precision_backup_step_is_close_to_exact_sam(ids):
    a, b = tiny_llama().float(), tiny_llama().float()
    # SGD, not AdamW: Adam's g/√v turns tiny gradient differences near g = 0 into lr-sized ones.
    exact = SAM(a.parameters(), torch.optim.SGD, rho=0.5, lr=LR)
    low = SAM(b.parameters(), torch.optim.SGD, rho=0.5, lr=LR, backup_dtype=torch.bfloat16)
    start = named(a)
    drive(a, ids, exact, 3)
    drive(b, ids, low, 3)
    diff = max(float((named(a)[n] - named(b)[n]).abs().max()) for n in start)
    moved = max(float((named(a)[n] - start[n]).abs().max()) for n in start)
    assert 0 < diff < 0.01 * moved  # ε' is ε within 0.4 %: the steps agree to a small fraction
    with pytest.raises(ValueError, match="backup_dtype"):
        SAM(a.parameters(), torch.optim.SGD, backup_dtype=torch.int8, lr=LR)


# ---------------------------------------------------------------------------------------------
# finetune / pair / CLI


ALPACA = [
    {"instruction": "Capital of France?", "input": "", "output": "Paris"},
    {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi", "output": "Hi there!"},
    {"instruction": "Spell cat backwards", "input": "", "output": "tac"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    return path


def test_options_are_recorded_in_the_manifest(tiny, data, tmp_path):
    kw = {"lr": 1e-3, "batch_size": 1, "max_steps": 4, "seed": 1, "progress": False}
    plain = finetune(tiny, data, tmp_path / "sam", optimizer="sam", **kw).manifest
    assert not {"sam_every", "sam_only_norm", "sam_backup_dtype"} & plain["hyperparameters"].keys()
    assert "ascent" not in plain["loss_curve"][0] and plain["sam_steps"] == 4
    assert plain["forward_backward_passes"] == 8
    cheap = finetune(
        tiny, data, tmp_path / "cheap", optimizer="sam", sam_every=3, sam_only_norm=True, sam_backup_dtype="bf16", **kw
    ).manifest
    hp = cheap["hyperparameters"]
    assert (hp["sam_every"], hp["sam_only_norm"], hp["sam_backup_dtype"]) == (3, True, "bf16")
    assert [c["ascent"] for c in cheap["loss_curve"]] == [1.0, 0.0, 0.0, 1.0]
    assert ["loss_perturbed" in c for c in cheap["loss_curve"]] == [True, False, False, True]
    assert (cheap["sam_steps"], cheap["forward_backward_passes"]) == (2, 6)
    assert cheap["request_fingerprint"] != plain["request_fingerprint"]
    # the run store reads the manifest's hyperparameters as the run's hparams
    from cfbench.engine import checkpoint_provenance

    assert checkpoint_provenance(tmp_path / "cheap")["hparams"]["sam_every"] == 3
    with pytest.raises(CfbenchError, match="--sam-every must be >= 1"):
        finetune(tiny, data, tmp_path / "x", optimizer="sam", sam_every=0, **kw)
    with pytest.raises(CfbenchError, match="need --optimizer sam or asam"):
        finetune(tiny, data, tmp_path / "x", optimizer="adamw", sam_only_norm=True, **kw)
    with pytest.raises(CfbenchError, match="--sam-backup-dtype 'int8' is unknown"):
        finetune(tiny, data, tmp_path / "x", optimizer="sam", sam_backup_dtype="int8", **kw)


def test_pair_cli_passes_options_to_the_sam_run_and_prints_the_cost(tiny, data, tmp_path):
    from cfbench.cli.train_cmds import register

    app = typer.Typer()
    register(app)
    args = ["pair", str(tiny), "--data", str(data), "--out", str(tmp_path / "pr"), "--lr", "1e-3"]
    args += ["--batch-size", "1", "--max-steps", "4", "--quiet", "--sam-every", "2", "--sam-only-norm"]
    r = CliRunner().invoke(app, [*args, "--sam-backup-dtype", "bf16"])
    assert r.exit_code == 0, r.output
    assert "w/o SAM: adamw, 2 epoch(s), 8 steps, 8 forward+backward passes" in r.output
    assert "w/ SAM: sam, 1 epoch(s), 4 steps, 6 forward+backward passes" in r.output
    assert "cost w/ SAM / w/o SAM: 0.750 forward+backward passes" in r.output
    desc = json.loads((tmp_path / "pr" / "pair.json").read_text())
    cost = desc["cost_ratio"]
    assert (cost["forward_backward_passes"], cost["time_measured"]) == (0.75, "train_time_s") and cost["wall_time"] > 0
    wo = json.loads((tmp_path / "pr" / "wo_sam" / "cfbench_manifest.json").read_text())["hyperparameters"]
    w = json.loads((tmp_path / "pr" / "w_sam" / "cfbench_manifest.json").read_text())["hyperparameters"]
    assert "sam_every" not in wo and (w["sam_every"], w["sam_only_norm"], w["sam_backup_dtype"]) == (2, True, "bf16")
    # an exact-SAM pair into the same folder must not silently replace the variant's run
    with pytest.raises(CfbenchError, match="already exists"):
        pair(tiny, data, tmp_path / "pr", lr=1e-3, batch_size=1, max_steps=4, progress=False)


# ---------------------------------------------------------------------------------------------
# look_alpha (LookSAM proper)


def test_looksam_matches_hand_computation(ids):
    """SAM-SGD on steps 0, k, 2k; in between g + α·‖g‖/‖g_v‖·g_v with g_v = g_s − proj_g(g_s) of
    the last SAM step (Liu et al. 2022, Algorithm 1), computed here with plain tensors."""
    rho, k, steps, alpha = 0.5, 3, 7, 0.7
    model = tiny_llama()
    w = named(model)
    gv = None
    for i in range(steps):
        g = grads_at(model, w, ids)
        if i % k == 0:
            norm = global_norm(g)
            gs = grads_at(model, {n: w[n] + rho * g[n] / norm for n in w}, ids)
            dot = sum(float((g[n].double() * gs[n].double()).sum()) for n in w)
            gv = {n: gs[n] - (dot / norm**2) * g[n] for n in w}
            step = gs
        else:
            scale = alpha * global_norm(g) / global_norm(gv)
            step = {n: g[n] + scale * gv[n] for n in w}
        w = {n: w[n] - LR * step[n] for n in w}
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, every_k=k, look_alpha=alpha, lr=LR)
    assert drive(model, ids, opt, steps) == [0, 3, 6]
    for n, v in named(model).items():
        torch.testing.assert_close(v, w[n], atol=2e-7, rtol=1e-5)
    # g_v is orthogonal to the gradient at w of its SAM step (here: step 6's)
    assert opt._look_norm is not None and opt._look_norm > 0


def test_looksam_orthogonal_part_is_orthogonal_and_alpha_0_is_sam_k(ids):
    model = tiny_llama()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, every_k=2, look_alpha=0.7, lr=LR)
    lm_loss(model, None, ids).backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.first_step(zero_grad=True)
    lm_loss(model, None, ids).backward()
    opt.second_step(zero_grad=True)
    gv = {n: opt.state[p]["look_gv"] for n, p in model.named_parameters()}
    dot = sum(float((g[n].double() * gv[n].double()).sum()) for n in g)
    assert abs(dot) <= 1e-5 * global_norm(g) * opt._look_norm  # ⟨g, g_v⟩ = 0 up to rounding
    # α = 0 adds nothing: SAM-k bit for bit
    a, b = tiny_llama(), tiny_llama()
    drive(a, ids, SAM(a.parameters(), torch.optim.AdamW, rho=0.5, every_k=3, lr=LR), 5)
    drive(b, ids, SAM(b.parameters(), torch.optim.AdamW, rho=0.5, every_k=3, look_alpha=0.0, lr=LR), 5)
    for n, v in named(a).items():
        assert torch.equal(v, named(b)[n]), n


def test_looksam_with_a_low_precision_backup_reads_eps_from_the_buffer(ids):
    """With ε' (bf16) in the buffer instead of w_old, g's direction is read from ε': the run stays
    within a small fraction of exact-buffer LookSAM's movement (as the plain bf16 backup does)."""
    a, b = tiny_llama(), tiny_llama()
    start = named(a)
    drive(a, ids, SAM(a.parameters(), torch.optim.SGD, rho=0.5, every_k=2, look_alpha=0.7, lr=LR), 4)
    low = SAM(b.parameters(), torch.optim.SGD, rho=0.5, every_k=2, look_alpha=0.7, backup_dtype=torch.bfloat16, lr=LR)
    drive(b, ids, low, 4)
    diff = max(float((named(a)[n] - named(b)[n]).abs().max()) for n in start)
    moved = max(float((named(a)[n] - start[n]).abs().max()) for n in start)
    assert 0 < diff < 0.01 * moved


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_k": 1}, "every_k > 1"),
        ({"every_k": 2, "adaptive": True}, "adaptive=True"),
        ({"every_k": 2, "look_alpha": -1.0}, "must be >= 0"),
        ({"every_k": 2, "sharded": True}, "sharded"),
    ],
)
def test_looksam_refuses_what_it_does_not_define(kwargs, match):
    model = tiny_llama()
    kwargs = {"look_alpha": 0.7, **kwargs}
    with pytest.raises(ValueError, match=match):
        SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=LR, **kwargs)
    with pytest.raises(ValueError, match="perturb subset"):
        SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=LR, every_k=2, look_alpha=0.7,
            perturb=norm_parameters(model))  # fmt: skip


def test_looksam_through_finetune_and_its_refusals(tiny, data, tmp_path, monkeypatch):
    kw = {"lr": 1e-3, "batch_size": 1, "max_steps": 4, "seed": 1, "progress": False}
    look = finetune(tiny, data, tmp_path / "look", optimizer="sam", sam_every=2, sam_look_alpha=0.7, **kw).manifest
    k2 = finetune(tiny, data, tmp_path / "k2", optimizer="sam", sam_every=2, **kw).manifest
    assert look["hyperparameters"]["sam_look_alpha"] == 0.7 and "sam_look_alpha" not in k2["hyperparameters"]
    assert (look["sam_steps"], look["forward_backward_passes"]) == (2, 6)
    assert look["request_fingerprint"] != k2["request_fingerprint"]
    assert look["final_loss"] != k2["final_loss"]  # the in-between steps used g + α·‖g‖/‖g_v‖·g_v
    for extra, match in [
        ({"sam_look_alpha": 0.7}, "add --sam-every K with K > 1"),
        ({"sam_every": 2, "sam_look_alpha": float("nan")}, "finite number >= 0"),
        ({"sam_every": 2, "sam_look_alpha": 0.7, "sam_only_norm": True}, "without --sam-only-norm"),
    ]:
        with pytest.raises(CfbenchError, match=match):
            finetune(tiny, data, tmp_path / "x", optimizer="sam", **kw, **extra)
    with pytest.raises(CfbenchError, match="need --optimizer sam or asam"):
        finetune(tiny, data, tmp_path / "x", optimizer="adamw", sam_every=2, sam_look_alpha=0.7, **kw)
    with pytest.raises(CfbenchError, match="needs plain SAM"):
        finetune(tiny, data, tmp_path / "x", optimizer="asam", sam_every=2, sam_look_alpha=0.7, **kw)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CfbenchError, match="under torchrun"):
        finetune(tiny, data, tmp_path / "x", optimizer="sam", sam_every=2, sam_look_alpha=0.7, **kw)
    assert not (tmp_path / "x").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------
# FSDP2: the subset's squared norm is all-reduced; every_k stays in lockstep

WORLD, GLOBAL_BATCH, STEPS, RHO = 2, 16, 4, 0.3


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 10), torch.nn.LayerNorm(10), torch.nn.Tanh(), torch.nn.Linear(10, 7),
        torch.nn.LayerNorm(7), torch.nn.Tanh(), torch.nn.Linear(7, 5),
    )  # fmt: skip


def _xy() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 6, generator=gen), torch.randn(GLOBAL_BATCH, 5, generator=gen)


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float, sharded: bool | None):
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, every_k=2, perturb=norm_parameters(model),
              sharded=sharded, lr=0.1, momentum=0.9)  # fmt: skip
    for _ in range(STEPS):
        ((model(x) - y).square().sum() * scale).backward()
        if opt.ascent_due:
            opt.first_step(zero_grad=True)
            ((model(x) - y).square().sum() * scale).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.plain_step(zero_grad=True)
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}  # fmt: skip


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, sharded in (("auto", None), ("per-shard", False)):
            model = _net()
            mesh = init_device_mesh("cpu", (WORLD,))
            for layer in model:
                if isinstance(layer, (torch.nn.Linear, torch.nn.LayerNorm)):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            x, y = _xy()
            per = GLOBAL_BATCH // WORLD
            results[name] = _train(model, x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per],
                                   WORLD / GLOBAL_BATCH, sharded)  # fmt: skip
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_only_norm_every_k_matches_one_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    x, y = _xy()
    ref = _train(_net(), x, y, 1 / GLOBAL_BATCH, None)
    start = _net().state_dict()
    assert max(float((ref[k] - start[k]).abs().max()) for k in ref) > 1e-3
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert max(float((got["auto"][k] - ref[k]).abs().max()) for k in ref) < 1e-6, rank
        # a per-shard norm of the subset gives each shard its own radius: measurably not SAM-ON
        assert max(float((got["per-shard"][k] - ref[k]).abs().max()) for k in ref) > 1e-5, rank
