"""Accepted sharpness measures: Hessian trace (Hutchinson) and top eigenvalue (power iteration).

Both need only Hessian-vector products ``Hv``. They are computed by double backward
(``∇(∇L·v)``, exact), or — where a kernel has no double backward (some fused attention kernels) — by a
central difference of gradients ``(∇L(θ+εv) − ∇L(θ−εv)) / 2ε``, with weights perturbed in place and
restored bit-identically. ``method="auto"`` tries double backward and falls back on a RuntimeError.

* Hutchinson: ``tr H ≈ (1/m) Σ vᵀHv`` with Rademacher ``v`` (unbiased; its spread over probes is reported).
* Power iteration: ``v ← Hv/‖Hv‖``; the eigenvalue estimate is the Rayleigh quotient ``vᵀHv``. It finds
  the eigenvalue of largest *magnitude* (which at a trained minimum is the top positive one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cfbench.analysis.landscape import set_point, weights_restored
from cfbench.errors import CfbenchError

LossFn = Callable[[], torch.Tensor]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True)))


def _grads(loss_fn: LossFn, params: Sequence[torch.Tensor], create_graph: bool) -> list[torch.Tensor]:
    loss = loss_fn()
    gs = torch.autograd.grad(loss, list(params), create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params, strict=True)]


def hvp_double_backward(
    loss_fn: LossFn, params: Sequence[torch.Tensor], v: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Exact ``Hv`` by differentiating ``∇L · v``."""
    gs = _grads(loss_fn, params, create_graph=True)
    dot = sum((g * vi).sum() for g, vi in zip(gs, v, strict=True))
    hv = torch.autograd.grad(dot, list(params), allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params, strict=True)]


def hvp_finite_difference(
    loss_fn: LossFn, params: Sequence[torch.Tensor], v: Sequence[torch.Tensor], eps: float = 1e-3
) -> list[torch.Tensor]:
    """``Hv`` from a central difference of gradients; ``eps`` is relative to ‖θ‖/‖v‖. Weights restored after."""
    v_norm = math.sqrt(_dot(v, v)) or 1.0
    p_norm = math.sqrt(_dot([p.detach() for p in params], [p.detach() for p in params])) or 1.0
    h = eps * p_norm / v_norm / max(1.0, math.sqrt(sum(p.numel() for p in params)))
    h = max(h, 1e-4 / v_norm)
    with weights_restored(params) as saved:
        set_point(params, saved, (v,), (h,))
        g_plus = [g.detach() for g in _grads(loss_fn, params, create_graph=False)]
        set_point(params, saved, (v,), (-h,))
        g_minus = [g.detach() for g in _grads(loss_fn, params, create_graph=False)]
    return [(a - b) / (2 * h) for a, b in zip(g_plus, g_minus, strict=True)]


class HVP:
    """``Hv`` for a fixed loss and parameter list, choosing double backward or finite differences once."""

    def __init__(self, loss_fn: LossFn, params: Sequence[torch.Tensor], method: str = "auto") -> None:
        if method not in ("auto", "double-backward", "finite-difference"):
            raise CfbenchError(f"unknown HVP method {method!r}: use auto, double-backward or finite-difference")
        self.loss_fn, self.params, self.method = loss_fn, list(params), method

    def __call__(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.method in ("auto", "double-backward"):
            try:
                out = hvp_double_backward(self.loss_fn, self.params, v)
                self.method = "double-backward"
                return out
            except RuntimeError:
                if self.method == "double-backward":
                    raise
                self.method = "finite-difference"
        return hvp_finite_difference(self.loss_fn, self.params, v)


@dataclass
class Sharpness:
    """Hutchinson trace (mean, stderr over probes), top eigenvalue, how Hv was computed, and time."""

    trace: float | None
    trace_stderr: float | None
    probes: int
    top_eigenvalue: float | None
    power_iters: int
    method: str
    seconds: float


def hutchinson_trace(
    hvp: HVP,
    params: Sequence[torch.Tensor],
    *,
    probes: int = 8,
    seed: int = 0,
    on_probe: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """``(mean, stderr)`` of ``vᵀHv`` over Rademacher probes (seeded, CPU generator)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    values = []
    for k in range(probes):
        v = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device=p.device, dtype=p.dtype) for p in params]
        values.append(_dot(v, hvp(v)))
        if on_probe is not None:
            on_probe(k)
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / max(1, len(values) - 1)
    return mean, math.sqrt(var / len(values)) if len(values) > 1 else float("nan")


def top_eigenvalue(
    hvp: HVP,
    params: Sequence[torch.Tensor],
    *,
    iters: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
    on_iter: Callable[[int], None] | None = None,
) -> float:
    """Largest-magnitude Hessian eigenvalue by power iteration (stops when the estimate moves < tol·|λ|)."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    v = [torch.randn(p.shape, generator=gen).to(device=p.device, dtype=p.dtype) for p in params]
    norm = math.sqrt(_dot(v, v))
    v = [x / norm for x in v]
    lam = 0.0
    for k in range(iters):
        hv = hvp(v)
        new = _dot(v, hv)
        norm = math.sqrt(_dot(hv, hv))
        if norm == 0.0:
            return 0.0
        v = [x / norm for x in hv]
        if on_iter is not None:
            on_iter(k)
        if k > 0 and abs(new - lam) <= tol * max(abs(new), 1e-12):
            return new
        lam = new
    return lam


def model_sharpness(
    model: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    probes: int = 8,
    power_iters: int = 20,
    seed: int = 0,
    method: str = "auto",
    on_step: Callable[[], None] | None = None,
) -> Sharpness:
    """Sharpness of the mean next-token loss over ``batches`` (held-out blocks) at the model's weights."""
    params = [p for p in model.parameters() if p.is_floating_point() and p.requires_grad]
    dev = params[0].device
    model.eval()

    def loss_fn() -> torch.Tensor:
        total = None
        n = 0
        for ids in batches:
            ids = ids.to(dev)
            logits = model(input_ids=ids).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total = loss if total is None else total + loss
            n += ids[:, 1:].numel()
        assert total is not None
        return total / n

    hvp = HVP(loss_fn, params, method)
    t0 = time.perf_counter()
    step = (lambda _k: on_step()) if on_step is not None else None
    trace, stderr = hutchinson_trace(hvp, params, probes=probes, seed=seed, on_probe=step) if probes else (None, None)
    lam = top_eigenvalue(hvp, params, iters=power_iters, seed=seed, on_iter=step) if power_iters else None
    model.zero_grad(set_to_none=True)
    return Sharpness(trace, stderr, probes, lam, power_iters, hvp.method, time.perf_counter() - t0)
