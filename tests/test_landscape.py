"""Directions reproducible per parameter name, weights restored bit-identically, landscape end to end."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from cfbench.analysis.directions import make_direction, raw_direction
from cfbench.analysis.heldout import load_heldout
from cfbench.analysis.landscape import interpolation_curve, loss_surface, mean_loss, perturbable
from cfbench.cli import app
from cfbench.store import ResultStore


def _two_checkpoints(tiny_model: Path, tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    a = AutoModelForCausalLM.from_pretrained(tiny_model)
    b = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():  # a "fine-tuned" second checkpoint of the same architecture
        for p in b.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return a, b


def test_directions_identical_across_checkpoints_of_one_architecture(tiny_model: Path, tmp_path: Path) -> None:
    a, b = _two_checkpoints(tiny_model, tmp_path)
    na, nb = perturbable(a), perturbable(b)
    for (name, p), (_, q) in zip(na, nb, strict=True):
        assert torch.equal(
            raw_direction(name, tuple(p.shape), seed=3, index=0), raw_direction(name, tuple(q.shape), seed=3, index=0)
        )
    # Visiting order does not matter: each parameter's draw depends on its own name and shape.
    da = make_direction(na, kind="gaussian", seed=3, index=0, ignore_1d=False)
    rev = make_direction(list(reversed(na)), kind="gaussian", seed=3, index=0, ignore_1d=False)
    assert all(torch.equal(x, y) for x, y in zip(da, reversed(rev), strict=True))
    fa = make_direction(na, kind="filter", seed=3, index=0)
    fb = make_direction(nb, kind="filter", seed=3, index=0)
    for (name, p), x, y in zip(na, fa, fb, strict=True):
        if p.dim() <= 1:
            assert not x.any() and not y.any()  # norm weights left unperturbed
        else:  # same draw, each filter scaled to that checkpoint's filter norm
            torch.testing.assert_close(
                x.reshape(x.shape[0], -1).norm(dim=1), p.detach().reshape(p.shape[0], -1).norm(dim=1)
            )
            cos = torch.nn.functional.cosine_similarity(x.reshape(-1), y.reshape(-1), dim=0)
            assert float(cos) > 0.99, name
    assert not torch.equal(fa[1], make_direction(na, kind="filter", seed=3, index=1)[1])


def test_surface_restores_weights_bit_identically(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    held = load_heldout("lambada", tok, count=2, length=16, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    centre = mean_loss(model, held)
    surf = loss_surface(model, held, grid=3, span=0.7, directions="gaussian", seed=1, ignore_1d=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert surf.loss[1, 1] == centre  # the centre point is θ₀ exactly
    assert np.all(np.isfinite(surf.loss)) and surf.loss.std() > 0
    base = [p.detach().clone() for _, p in perturbable(model)]
    curve = interpolation_curve(model, base, held, ts=[0.0, 1.0])
    assert curve[0][1] == centre
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    # The held-out set is deterministic: same arguments, same ids; another seed, other ids.
    assert torch.equal(held.input_ids, load_heldout("lambada", tok, count=2, length=16, seed=0).input_ids)
    assert not torch.equal(held.input_ids, load_heldout("lambada", tok, count=2, length=16, seed=1).input_ids)


def test_restore_is_exact_even_when_evaluation_fails(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    held = load_heldout("lambada", tok, count=1, length=8, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def boom(i: int, j: int) -> None:
        if (i, j) == (0, 1):
            raise RuntimeError("interrupted")

    with contextlib.suppress(RuntimeError):
        loss_surface(model, held, grid=3, span=0.5, on_point=boom)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_landscape_cli_end_to_end_writes_parquet_and_png(tiny_model: Path, tmp_path: Path) -> None:
    res, png = tmp_path / "results", tmp_path / "land.png"
    r = CliRunner().invoke(
        app,
        [
            "landscape",
            str(tiny_model),
            "--grid",
            "3",
            "--span",
            "0.5",
            "--batches",
            "1",
            "--batch-size",
            "2",
            "--length",
            "16",
            "--hutchinson",
            "2",
            "--interpolate-from",
            str(tiny_model),
            "--plot",
            str(png),
            "--results",
            str(res),
            "--data",
            "builtin:arithmetic",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "SC" in r.output and "tr(H)" in r.output
    assert png.stat().st_size > 1000
    assert list((res / "landscape").glob("part-*.parquet"))
    store = ResultStore(res)
    land = store.read_table("landscape")
    surf = land[land["kind"] == "surface"]
    assert len(surf) == 9 and set(surf["alpha"].round(6)) == {-0.5, 0.0, 0.5}
    assert len(land[land["kind"] == "interpolation"]) == 16
    diag = store.read_table("diagnostics")
    assert {"sc", "ag", "mag", "hessian_trace"} <= set(diag["metric"])
    assert pd.notna(diag[diag["metric"] == "sc"]["value"]).all()
