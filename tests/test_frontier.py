"""The trade-off plot (cfbench.report.frontier): what is drawn, orientation, refusals, the PNG."""

from __future__ import annotations

import pytest

from cfbench.errors import CfbenchError
from cfbench.report.frontier import BASE_GID, POINT_GID, FrontierPoint, Measure, frontier_figure, plot_frontier
from cfbench.signals import Signal


def learned(v: float, ci: tuple[float, float]) -> Signal:
    return Signal("indomain_loss", "learned", "in-domain NLL", v, "Δ nats/token", 100, ci=ci, better="lower")


def forgot(name: str, v: float, ci: tuple[float, float], better: str = "lower") -> Signal:
    return Signal(name, "forgot", name, v, "Δ", 200, ci=ci, better=better)  # type: ignore[arg-type]


def synthetic() -> list[FrontierPoint]:
    pts = []
    for label, g, drift, acc, series in [
        ("w/o SAM", -0.40, 0.030, -1.5, "w/o SAM"),
        ("Wise-FT α=0.5", -0.25, 0.010, -0.4, "w/o SAM"),
        ("w/ SAM", -0.30, 0.008, 0.1, None),
    ]:
        x = learned(g, (g - 0.05, g + 0.04))
        pts.append(
            FrontierPoint.from_signals(label, x, forgot("ppl_drift", drift, (drift - 0.005, drift + 0.006)), series)
        )
        pts.append(
            FrontierPoint.from_signals(label, x, forgot("acc_avg", acc, (acc - 1.0, acc + 1.2), "higher"), series)
        )
    return pts


def test_frontier_draws_one_point_per_checkpoint_per_panel(tmp_path):
    import matplotlib.pyplot as plt

    pts = synthetic()
    fig = frontier_figure(pts)
    try:
        assert len(fig.axes) == 2  # one panel per forgetting signal
        for ax in fig.axes:
            drawn = [ln for ln in ax.get_lines() if ln.get_gid() == POINT_GID]
            assert len(drawn) == 3 and len([ln for ln in ax.get_lines() if ln.get_gid() == BASE_GID]) == 1
            xs = sorted(float(ln.get_xdata()[0]) for ln in drawn)
            # x is the gain: a loss drop of 0.40 nats is drawn at +0.40
            assert xs == pytest.approx([0.25, 0.30, 0.40])
            texts = {t.get_text() for t in ax.texts}
            assert {"w/o SAM", "Wise-FT α=0.5", "w/ SAM", "base"} <= texts
        acc_ax = next(ax for ax in fig.axes if "acc_avg" in ax.get_ylabel())
        assert "↑ better" in acc_ax.get_ylabel() and "→ more learned" in acc_ax.get_xlabel()
        y_wo = next(float(ln.get_ydata()[0]) for ln in acc_ax.get_lines() if ln.get_gid() == POINT_GID
                    and float(ln.get_xdata()[0]) == pytest.approx(0.40))  # fmt: skip
        assert y_wo == pytest.approx(-1.5)
    finally:
        plt.close(fig)
    out = plot_frontier(pts, tmp_path / "frontier.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_frontier_from_plain_numbers_and_refusals(tmp_path):
    x = Measure("gain", "exact match", 12.0, "Δ pts", (8.0, 16.0), "higher")
    y = Measure("kl", "KL", 0.02, "nats", (0.01, 0.03), "lower")
    fig = frontier_figure([FrontierPoint("a", x, y), FrontierPoint("b", x, y)])
    assert len([ln for ln in fig.axes[0].get_lines() if ln.get_gid() == POINT_GID]) == 2
    with pytest.raises(CfbenchError, match="at least one"):
        frontier_figure([])
    with pytest.raises(CfbenchError, match="distinct labels within one forgetting signal; repeated: a"):
        frontier_figure([FrontierPoint("a", x, y), FrontierPoint("a", x, y)])
    with pytest.raises(CfbenchError, match="pass a 'learned' signal"):
        FrontierPoint.from_signals("a", forgot("kl", 0.1, (0.0, 0.2)), forgot("kl", 0.1, (0.0, 0.2)))
    with pytest.raises(CfbenchError, match="does not contain its value"):
        frontier_figure([FrontierPoint("a", x, Measure("kl", "KL", 0.5, "nats", (0.01, 0.03)))])
    with pytest.raises(CfbenchError, match="same learned signal"):
        frontier_figure([FrontierPoint("a", x, y), FrontierPoint("b", Measure("other", "o", 1.0, "u"), y)])
    with pytest.raises(CfbenchError, match="only finite"):
        frontier_figure([FrontierPoint("a", x, Measure("kl", "KL", float("nan"), "nats"))])
    with pytest.raises(CfbenchError, match="does not exist"):
        plot_frontier([FrontierPoint("a", x, y)], tmp_path / "missing" / "f.png")
