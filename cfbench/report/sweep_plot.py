"""One PNG per signal of a training-run sweep: the signal against step, the base at step 0.

The error bars are the sweep table's bootstrap CIs, so the picture claims no more than the numbers;
a budget, when given for the signal, is a dashed line. matplotlib is imported inside the function
(Agg backend), so importing cfbench.report stays cheap and never needs a display.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cfbench.errors import CfbenchError

# (step, value, ci low, ci high) per point; the base is (0, 0.0, None, None)
Point = tuple[int, float | None, float | None, float | None]


def plot_sweep(
    series: Mapping[str, Sequence[Point]], out_dir: str | Path, *, budgets: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
) -> list[Path]:  # fmt: skip
    """Write ``out_dir/<signal>.png`` for every series (values None are gaps); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CfbenchError(f"--plot {out} is a file: give a folder (one PNG per signal is written there)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, points in series.items():
        pts = [(s, v, lo, hi) for s, v, lo, hi in points if v is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        err = [[y - (lo if lo is not None else y) for _, y, lo, _ in pts],
               [(hi if hi is not None else y) - y for _, y, _, hi in pts]]  # fmt: skip
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3)
        ax.axhline(0.0, color="grey", lw=0.8)
        if budgets and name in budgets:
            ax.axhline(budgets[name], color="red", ls="--", lw=1, label=f"budget {budgets[name]:g}")
            ax.legend(loc="best")
        ax.set_xlabel("step (0 = base)")
        ax.set_ylabel(f"{name} ({(units or {}).get(name, '')})".replace(" ()", ""))
        ax.set_title(f"{name} vs step")
        fig.tight_layout()
        path = out / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)
    return written
