"""SC / AG / MAG on surfaces with closed-form answers, and sharpness estimators against exact Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cfbench.analysis.metrics import ag, flatness_metrics, laplacian, mag, mag_path, sc, snake_path
from cfbench.analysis.sharpness import HVP, hutchinson_trace, hvp_double_backward, hvp_finite_difference, top_eigenvalue
from cfbench.errors import CfbenchError

AX = np.linspace(-1.0, 1.0, 11)


def _grid(fn):
    X, Y = np.meshgrid(AX, AX, indexing="ij")
    return fn(X, Y)


@pytest.mark.parametrize(("a", "b"), [(1.0, 2.0), (-3.0, 0.5), (2.0, -2.0)])
def test_sc_of_quadratic_is_two_abs_a_plus_b_everywhere(a: float, b: float) -> None:
    f = _grid(lambda x, y: a * x**2 + b * y**2 + 0.3)
    np.testing.assert_allclose(laplacian(f, AX, AX), 2 * (a + b), atol=1e-9)
    assert sc(f, AX, AX) == pytest.approx(2 * abs(a + b), abs=1e-9)
    assert sc(f, AX, AX, percent=True) == pytest.approx(200 * abs(a + b), abs=1e-7)


def test_plane_has_zero_sc_and_known_ag() -> None:
    f = _grid(lambda x, y: 3.0 * x - 4.0 * y + 1.0)
    assert sc(f, AX, AX) == pytest.approx(0.0, abs=1e-9)
    assert ag(f, AX, AX) == pytest.approx(5.0, abs=1e-9)


def test_ag_of_quadratic_bowl_is_mean_gradient_norm() -> None:
    f = _grid(lambda x, y: x**2 + y**2)
    X, Y = np.meshgrid(AX, AX, indexing="ij")
    assert ag(f, AX, AX) == pytest.approx(float(np.mean(2 * np.hypot(X, Y))), abs=1e-9)


def test_mag_along_snake_path_of_plane() -> None:
    c, n = 2.0, AX.size
    h = AX[1] - AX[0]
    f = _grid(lambda x, y: c * y)  # varies only along the row (β) axis
    # N rows of N-1 steps of |c·h|, joined by N-1 steps of 0, over N²-1 steps.
    assert mag(f, AX, AX) == pytest.approx(n * (n - 1) * c * h / (n * n - 1), abs=1e-12)
    assert mag_path([0.0, 1.0, 3.0, 2.0]) == pytest.approx(4.0 / 3.0)
    np.testing.assert_array_equal(snake_path(np.arange(6.0).reshape(2, 3)), [0, 1, 2, 5, 4, 3])


def test_metric_errors_are_one_line() -> None:
    with pytest.raises(CfbenchError, match="too small"):
        sc(np.zeros((2, 2)), [0, 1], [0, 1])
    bad = _grid(lambda x, y: x)
    bad[0, 0] = np.nan
    with pytest.raises(CfbenchError, match="--span"):
        flatness_metrics(bad, AX, AX)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 2)
        self.out = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(x)))


def _tiny_setup() -> tuple[_Tiny, list[torch.Tensor], object, torch.Tensor]:
    model = _Tiny().double()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = list(model.parameters())

    def loss_fn() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        tensors = {n: c.reshape(s) for (n, _), c, s in zip(model.named_parameters(), chunks, shapes, strict=True)}
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, tensors, (x,)), y)

    flat0 = torch.cat([p.detach().reshape(-1) for p in params])
    hess = torch.autograd.functional.hessian(flat_loss, flat0)
    return model, params, loss_fn, hess


def test_hvp_matches_explicit_hessian_on_tiny_model() -> None:
    _model, params, loss_fn, hess = _tiny_setup()
    v = [torch.randn_like(p) for p in params]
    v_flat = torch.cat([t.reshape(-1) for t in v])
    exact = hess @ v_flat
    db = torch.cat([t.reshape(-1) for t in hvp_double_backward(loss_fn, params, v)])
    torch.testing.assert_close(db, exact, atol=1e-10, rtol=1e-8)
    before = [p.detach().clone() for p in params]
    fd = torch.cat([t.reshape(-1) for t in hvp_finite_difference(loss_fn, params, v)])
    torch.testing.assert_close(fd, exact, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))  # FD restores weights exactly


def test_hutchinson_and_power_iteration_on_quadratic() -> None:
    # L(w) = ½ wᵀ A w with a known symmetric A: H = A.
    A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    hvp = HVP(lambda: 0.5 * w @ A @ w, [w])
    mean, stderr = hutchinson_trace(hvp, [w], probes=400, seed=0)
    assert hvp.method == "double-backward"
    assert mean == pytest.approx(float(torch.trace(A)), abs=4 * stderr + 1e-9)
    lam = top_eigenvalue(hvp, [w], iters=200, tol=1e-12)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(A).max()), rel=1e-6)
