"""The paper's flatness metrics on a loss grid, with the discretisation the paper leaves open written down.

Li et al. (2024, Appendix A.3) define, for the surface ``f(α, β) = L(θ₀ + α·δ₁ + β·δ₂)`` sampled on an
``N × N`` grid:

* **SC** (surface curvature) ``= (1/N²) Σ_i Σ_j |K(x_i, y_j)|`` with ``K = f_xx + f_yy`` (Eq. 3–4);
* **AG** (average gradient) ``= (1/N) Σ_i ∇f(x_i, y_i)`` (Eq. 5);
* **MAG** (mean absolute gradient) ``= (1/(N−1)) Σ_{i=2..N} |t_i − t_{i−1}|`` over consecutive surface
  points ``t_i`` (Eq. 6).

What the paper does not state, and what cfbench chooses:

* **Derivatives** are finite differences on the grid by :func:`numpy.gradient` with ``edge_order=2``:
  second-order central differences inside, second-order one-sided differences on the border. They are
  exact for quadratics, so ``a·x² + b·y²`` gives ``K = 2(a + b)`` at *every* grid point, border included.
  ``f_xx`` is the gradient of the gradient along the same axis.
* **AG** takes the Euclidean norm ``‖∇f‖ = sqrt(f_x² + f_y²)`` (a sum of signed vectors would cancel on any
  bowl) and averages it over all ``N²`` grid points, not only the diagonal; the paper's single index is
  read as "over the grid points". A plane ``c·x + d·y`` gives ``AG = sqrt(c² + d²)``.
* **MAG**'s consecutive points ``t_i`` are the surface values along the boustrophedon ("snake") path
  through the grid — row 0 left to right, row 1 right to left, … — so every step joins two neighbouring
  grid points and all ``N²`` points are visited once; the mean runs over the ``N² − 1`` steps. MAG is in
  loss units per grid step (it depends on the grid spacing, as in the paper).
* **"%"**: the paper prints SC / AG / MAG "in %". cfbench stores the raw values (nats, per unit of α/β
  for AG, per unit² for SC) and reads the paper's "%" as ×100: ``percent=True`` multiplies by 100.
  Absolute numbers are comparable only at the same grid, span, direction kind and held-out data; the
  paper's Table 1 values are not reproducible without its unstated span and direction scaling, so
  compare rankings across checkpoints, not values across papers.

The first grid axis (rows, index ``i``) is α (``x``), the second (columns, ``j``) is β (``y``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfbench.errors import CfbenchError


def _check(surface: np.ndarray, alphas: Sequence[float], betas: Sequence[float]) -> tuple[np.ndarray, ...]:
    f = np.asarray(surface, dtype=np.float64)
    a = np.asarray(alphas, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)
    if f.ndim != 2 or f.shape != (a.size, b.size):
        raise CfbenchError(
            f"surface of shape {f.shape} does not match a {a.size}×{b.size} grid: pass alphas/betas of the grid"
        )
    if min(f.shape) < 3:
        raise CfbenchError(
            f"a {f.shape[0]}×{f.shape[1]} grid is too small for second differences: use --grid 3 or more"
        )
    if not np.all(np.isfinite(f)):
        raise CfbenchError("the loss surface has non-finite points: use a smaller --span")
    return f, a, b


def gradients(surface: np.ndarray, alphas: Sequence[float], betas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(f_x, f_y)`` on the grid: second-order finite differences (exact for quadratics)."""
    f, a, b = _check(surface, alphas, betas)
    return np.gradient(f, a, axis=0, edge_order=2), np.gradient(f, b, axis=1, edge_order=2)


def laplacian(surface: np.ndarray, alphas: Sequence[float], betas: Sequence[float]) -> np.ndarray:
    """``K = f_xx + f_yy`` at every grid point (the paper's Eq. 3)."""
    fx, fy = gradients(surface, alphas, betas)
    a = np.asarray(alphas, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)
    return np.gradient(fx, a, axis=0, edge_order=2) + np.gradient(fy, b, axis=1, edge_order=2)


def sc(surface: np.ndarray, alphas: Sequence[float], betas: Sequence[float], *, percent: bool = False) -> float:
    """Surface curvature: mean ``|f_xx + f_yy|`` over all grid points (Eq. 4)."""
    value = float(np.mean(np.abs(laplacian(surface, alphas, betas))))
    return 100.0 * value if percent else value


def ag(surface: np.ndarray, alphas: Sequence[float], betas: Sequence[float], *, percent: bool = False) -> float:
    """Average gradient: mean ``‖∇f‖₂`` over all grid points (Eq. 5, norm and support chosen as documented)."""
    fx, fy = gradients(surface, alphas, betas)
    value = float(np.mean(np.hypot(fx, fy)))
    return 100.0 * value if percent else value


def snake_path(surface: np.ndarray) -> np.ndarray:
    """The grid's values in boustrophedon order: neighbours stay neighbours (MAG's ``t_i``)."""
    f = np.asarray(surface, dtype=np.float64)
    rows = [f[i] if i % 2 == 0 else f[i, ::-1] for i in range(f.shape[0])]
    return np.concatenate(rows)


def mag_path(values: Sequence[float], *, percent: bool = False) -> float:
    """``(1/(N−1)) Σ |t_i − t_{i−1}|`` over a sequence of surface points (Eq. 6)."""
    t = np.asarray(values, dtype=np.float64)
    if t.size < 2:
        raise CfbenchError("MAG needs at least two points on the path: use a larger --grid")
    value = float(np.mean(np.abs(np.diff(t))))
    return 100.0 * value if percent else value


def mag(surface: np.ndarray, alphas: Sequence[float], betas: Sequence[float], *, percent: bool = False) -> float:
    """Mean absolute step of the loss along the snake path through the grid (Eq. 6, path as documented)."""
    f, _, _ = _check(surface, alphas, betas)
    return mag_path(snake_path(f), percent=percent)


def flatness_metrics(surface: np.ndarray, alphas: Sequence[float], betas: Sequence[float]) -> dict[str, float]:
    """SC, AG and MAG (raw, not ×100) plus the loss at the centre and the surface's range."""
    f, a, b = _check(surface, alphas, betas)
    ci, cj = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(b)))
    return {
        "sc": sc(f, a, b),
        "ag": ag(f, a, b),
        "mag": mag(f, a, b),
        "loss_center": float(f[ci, cj]),
        "loss_max": float(f.max()),
        "loss_min": float(f.min()),
    }
