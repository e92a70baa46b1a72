"""Analysis (layer 7): flatness, loss landscapes, sharpness and weight diffs of checkpoints.

May import train, report, metrics and everything below; never comparison. See docs/architecture.md.

Flatness and weight diagnostics: why one checkpoint forgot more than another, before (or beside) evaluation.

* :mod:`cfbench.analysis.metrics` — the paper's SC / AG / MAG (Li et al. 2024, Appendix A.3) on a loss grid.
* :mod:`cfbench.analysis.directions` — seeded Gaussian / filter-normalised directions, per parameter name.
* :mod:`cfbench.analysis.landscape` — the 2-D loss surface and the loss along the fine-tuning direction.
* :mod:`cfbench.analysis.sharpness` — Hessian-vector products, Hutchinson trace, top eigenvalue.
* :mod:`cfbench.analysis.diff` — what moved: per-layer ‖ΔW‖, relative change, effective rank.
* :mod:`cfbench.analysis.run` — ``landscape`` / ``diff_checkpoints``: the above on checkpoints, stored
  (what ``cfbench landscape`` and ``cfbench diff`` run).
* :mod:`cfbench.store.diagnostics` — storing all of it and looking it up for ``cfbench compare``.
"""

from cfbench.analysis.metrics import ag, flatness_metrics, mag, sc, snake_path

__all__ = ["ag", "flatness_metrics", "mag", "sc", "snake_path"]
