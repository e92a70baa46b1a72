"""Figures: contour panels in the style of the paper's Figure 1, per-layer displacement, forgetting vs metric."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cfbench.analysis.diff import LayerDiff


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_landscapes(panels: Sequence[tuple[str, Any]], path: str | Path, *, levels: int = 20) -> Path:
    """One filled-contour panel per ``(title, Surface)``, all on one colour scale (so they compare by eye)."""
    plt = _plt()
    lo = min(float(np.nanmin(s.loss)) for _, s in panels)
    hi = max(float(np.nanmax(s.loss)) for _, s in panels)
    lv = np.linspace(lo, hi if hi > lo else lo + 1e-6, levels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    cs = None
    for ax, (title, s) in zip(axes[0], panels, strict=True):
        B, A = np.meshgrid(s.betas, s.alphas)
        cs = ax.contourf(A, B, s.loss, levels=lv, cmap="viridis")
        ax.contour(A, B, s.loss, levels=lv, colors="k", linewidths=0.3)
        m = s.metrics
        ax.set_title(f"{title}\nSC {m['sc']:.3g}  AG {m['ag']:.3g}  MAG {m['mag']:.3g}", fontsize=9)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.plot([0], [0], "r+")
    fig.colorbar(cs, ax=axes[0].tolist(), label="held-out loss (nats/token)")
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_diff(runs: Sequence[tuple[str, Sequence[LayerDiff]]], path: str | Path) -> Path:
    """‖ΔW‖/‖W‖ per parameter (in model order), one line per tuned checkpoint."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for label, rows in runs:
        ax.plot(range(len(rows)), [r.rel_delta for r in rows], marker=".", lw=0.8, label=label)
    if runs:
        names = [r.param for r in runs[0][1]]
        step = max(1, len(names) // 12)
        ax.set_xticks(range(0, len(names), step))
        ax.set_xticklabels(
            [names[k].replace("model.", "") for k in range(0, len(names), step)], rotation=60, ha="right", fontsize=6
        )
    ax.set_ylabel("‖ΔW‖ / ‖W‖")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_forgetting_vs(frame: Any, forgetting: dict[str, float], path: str | Path, metrics: Sequence[str]) -> Path:
    """One scatter per diagnostic: x = the run's diagnostic, y = its forgetting (Δ AVG vs base, points)."""
    plt = _plt()
    present = [m for m in metrics if frame[m].notna().any()]
    n = max(1, len(present))
    cols = min(3, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4 * cols, 3.4 * math.ceil(n / cols)), squeeze=False)
    for ax, metric in zip(axes.flat, present, strict=False):
        for _, row in frame.iterrows():
            if row["run"] in forgetting and not math.isnan(row[metric]):
                ax.scatter(row[metric], forgetting[row["run"]])
                ax.annotate(str(row["run"]), (row[metric], forgetting[row["run"]]), fontsize=7)
        ax.set_xlabel(metric)
        ax.set_ylabel("Δ AVG vs base (points)")
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    out = _save(fig, path)
    plt.close(fig)
    return out
