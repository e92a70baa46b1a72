"""`cfbench diff`: exactly zero for X vs X, known displacement and rank, refuses other architectures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from cfbench.analysis.diff import effective_rank, load_state, total_displacement, weight_diff
from cfbench.cli import app
from cfbench.errors import CfbenchError
from cfbench.store import ResultStore
from cfbench.store.diagnostics import diagnostics_for_runs
from cfbench.store.schema import RunRecord


def test_diff_x_x_is_exactly_zero(tiny_model: Path, tmp_path: Path) -> None:
    res = tmp_path / "res"
    r = CliRunner().invoke(
        app, ["diff", str(tiny_model), str(tiny_model), "--results", str(res), "--plot", str(tmp_path / "d.png")]
    )
    assert r.exit_code == 0, r.output
    assert "displacement ‖Δθ‖ = 0 " in r.output
    rows = ResultStore(res).read_table("weight_diff")
    assert len(rows) > 0 and (rows["norm_delta"] == 0.0).all() and (rows["rel_delta"] == 0.0).all()
    assert (rows["effective_rank"].dropna() == 0.0).all()
    diag = ResultStore(res).read_table("diagnostics")
    assert float(diag[diag["metric"] == "displacement"]["value"].iloc[0]) == 0.0
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_diff_known_rank_one_update(tiny_model: Path) -> None:
    base, _ = load_state(tiny_model)
    tuned = {k: v.clone() for k, v in base.items()}
    name = next(k for k, v in base.items() if v.dim() == 2 and "layers.0" in k)
    u, v = torch.randn(base[name].shape[0]), torch.randn(base[name].shape[1])
    tuned[name] += 1e-2 * torch.outer(u, v)
    rows = {r.param: r for r in weight_diff(base, tuned)}
    moved = rows[name]
    assert moved.norm_delta == pytest.approx(1e-2 * float(u.norm() * v.norm()), rel=1e-5)
    assert moved.effective_rank == pytest.approx(1.0, abs=1e-3)
    assert moved.top_singular[0] == pytest.approx(moved.norm_delta, rel=1e-5)
    assert total_displacement(list(rows.values())) == pytest.approx(moved.norm_delta, rel=1e-6)
    assert effective_rank(torch.ones(4)) == pytest.approx(4.0)


def test_diff_randomized_svd_for_large_matrices() -> None:
    torch.manual_seed(0)
    base = {"w": torch.zeros(300, 200)}
    a, b = torch.randn(300, 3), torch.randn(3, 200)
    rows = weight_diff(base, {"w": a @ b}, exact_max=100, rank_q=20)
    exact = torch.linalg.svdvals(a @ b)[:3]
    assert rows[0].svd.startswith("randomized")
    torch.testing.assert_close(torch.tensor(rows[0].top_singular[:3]), exact, rtol=1e-3, atol=1e-3)


def test_diff_refuses_other_architecture_with_one_line(tiny_model: Path, tmp_path: Path) -> None:
    m = AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = LlamaConfig(**{**m.config.to_dict(), "num_hidden_layers": 1})
    other = tmp_path / "other"
    LlamaForCausalLM(cfg).save_pretrained(other)
    r = CliRunner().invoke(app, ["diff", str(tiny_model), str(other), "--results", str(tmp_path / "r")])
    assert isinstance(r.exception, CfbenchError)
    msg = str(r.exception)
    assert "\n" not in msg and "num_hidden_layers" in msg and "architecture" in msg
    with pytest.raises(CfbenchError, match="different parameters"):
        weight_diff({"a": torch.zeros(2)}, {"b": torch.zeros(2)})
    with pytest.raises(CfbenchError, match="one architecture"):
        weight_diff({"a": torch.zeros(2)}, {"a": torch.zeros(3)})


def test_diagnostics_for_runs_joins_on_checkpoint_hash(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.store.diagnostics import write_diagnostics

    store = ResultStore(tmp_path / "r")
    write_diagnostics(
        store, checkpoint_name="t", checkpoint_hash="h1", source="landscape", values={"sc": 1.5}, settings={}
    )
    write_diagnostics(
        store,
        checkpoint_name="t",
        checkpoint_hash="h1",
        source="diff",
        base_hash="h0",
        values={"displacement": 2.0},
        settings={},
    )
    runs = [
        ("base", RunRecord(name="b", checkpoint_name="b", checkpoint_hash="h0")),
        ("tuned", RunRecord(name="t", checkpoint_name="t", checkpoint_hash="h1")),
    ]
    frame = diagnostics_for_runs(store, runs).set_index("run")
    assert frame.loc["tuned", "sc"] == 1.5 and frame.loc["tuned", "displacement"] == 2.0
    assert math.isnan(frame.loc["base", "sc"])
