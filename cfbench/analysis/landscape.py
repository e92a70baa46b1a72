"""Loss surfaces and the loss along the fine-tuning direction, with one model in memory.

Every point is ``L(θ₀ + α·δ₁ + β·δ₂)``: the weights are set *in place* from a stored copy of θ₀ with
foreach ops (copy, then exact adds of the same direction tensors), as the SAM optimizer does, and the
copy is written back at the end — the model's weights are bit-identical afterwards (``torch.equal``),
even when the evaluation raises. Setting each point from the stored copy, instead of stepping from the
previous point, keeps rounding error from accumulating across the grid.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cfbench.analysis.directions import make_direction
from cfbench.analysis.heldout import HeldOut
from cfbench.analysis.metrics import flatness_metrics
from cfbench.errors import CfbenchError


def perturbable(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Floating-point parameters in ``named_parameters`` order (tied weights appear once)."""
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


@contextlib.contextmanager
def weights_restored(params: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Yield a stored copy of ``params``; on exit copy it back, so the weights end bit-identical."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in params], saved)


def set_point(
    params: Sequence[torch.Tensor],
    saved: Sequence[torch.Tensor],
    dirs: Sequence[Sequence[torch.Tensor]],
    coefs: Sequence[float],
) -> None:
    """``p = saved + Σ c_k·d_k`` in place (from the copy every time, so no drift across points)."""
    ws = [p.data for p in params]
    with torch.no_grad():
        torch._foreach_copy_(ws, list(saved))
        for d, c in zip(dirs, coefs, strict=True):
            if c != 0.0:
                torch._foreach_add_(ws, list(d), alpha=float(c))


@torch.no_grad()
def mean_loss(model: torch.nn.Module, data: HeldOut, *, batch_size: int = 8, device: Any = None) -> float:
    """Mean next-token cross-entropy (nats/token) over every block of ``data``."""
    dev = device if device is not None else next(model.parameters()).device
    total, n = 0.0, 0
    for ids in data.batches(batch_size):
        ids = ids.to(dev)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        )
        total += float(loss)
        n += target.numel()
    return total / n


@dataclass
class Surface:
    """A loss grid ``loss[i, j] = f(alphas[i], betas[j])`` and its SC / AG / MAG."""

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    metrics: dict[str, float]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def grid_axis(grid: int, span: float) -> np.ndarray:
    """The α (and β) values: ``grid`` points over ``[-span, span]``, the middle one exactly 0.

    An even grid has no middle point, so no point is θ₀ itself, yet SC/AG/MAG and the printed
    "loss(θ₀)" read the point nearest the centre as θ₀: it is refused, as are non-finite spans (a
    NaN span made a whole grid of NaN losses before anything complained).
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 3 or grid % 2 == 0:
        raise CfbenchError(f"--grid {grid} must be an odd number, 3 or more, so that the centre point is θ₀: "
                           f"use e.g. --grid {max(3, grid + 1) if isinstance(grid, int) else 11}")  # fmt: skip
    if not math.isfinite(span) or span <= 0:
        raise CfbenchError(f"--span {span} must be a positive finite number, e.g. 0.5")
    return np.linspace(-span, span, grid)


def loss_surface(
    model: torch.nn.Module,
    data: HeldOut,
    *,
    grid: int = 11,
    span: float = 0.5,
    directions: str = "filter",
    seed: int = 0,
    ignore_1d: bool = True,
    batch_size: int = 8,
    on_point: Callable[[int, int], None] | None = None,
) -> Surface:
    """The paper's 2-D surface ``f(α, β)`` over ``[-span, span]²`` with seeded directions (see directions)."""
    axis = grid_axis(grid, span)
    named = perturbable(model)
    params = [p for _, p in named]
    d1 = make_direction(named, kind=directions, seed=seed, index=0, ignore_1d=ignore_1d)
    d2 = make_direction(named, kind=directions, seed=seed, index=1, ignore_1d=ignore_1d)
    loss = np.full((grid, grid), np.nan)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with weights_restored(params) as saved:
            for i, a in enumerate(axis):
                for j, b in enumerate(axis):
                    set_point(params, saved, (d1, d2), (float(a), float(b)))
                    loss[i, j] = mean_loss(model, data, batch_size=batch_size)
                    if on_point is not None:
                        on_point(i, j)
    finally:
        model.train(was_training)
    del d1, d2
    settings = {
        "grid": grid,
        "span": span,
        "directions": directions,
        "seed": seed,
        "ignore_1d": ignore_1d,
        "data": data.spec,
        "data_seed": data.seed,
        "blocks": int(data.input_ids.shape[0]),
        "block_tokens": int(data.input_ids.shape[1]),
    }
    return Surface(axis, axis.copy(), loss, flatness_metrics(loss, axis, axis), time.perf_counter() - t0, settings)


def interpolation_curve(
    model: torch.nn.Module,
    base_params: Sequence[torch.Tensor],
    data: HeldOut,
    *,
    ts: Sequence[float] = tuple(np.round(np.linspace(0.0, 1.5, 16), 4)),
    batch_size: int = 8,
    on_point: Callable[[int], None] | None = None,
) -> list[tuple[float, float]]:
    """``L(θ_base + t·(θ_tuned − θ_base))`` for each t; ``model`` holds θ_tuned and is restored after.

    t = 0 is the base, t = 1 the tuned checkpoint; a loss that rises between them and keeps rising past
    1 says the tuned point left the base's basin.
    """
    params = [p for _, p in perturbable(model)]
    if len(base_params) != len(params) or any(a.shape != b.shape for a, b in zip(base_params, params, strict=True)):
        raise CfbenchError(
            "base and tuned checkpoints have different parameters: give two checkpoints of one architecture"
        )
    out: list[tuple[float, float]] = []
    model.eval()
    with weights_restored(params) as tuned:
        base = [b.to(device=p.device, dtype=p.dtype) for b, p in zip(base_params, params, strict=True)]
        delta = torch._foreach_sub(list(tuned), base)
        for k, t in enumerate(ts):
            set_point(params, base, (delta,), (float(t),))
            out.append((float(t), mean_loss(model, data, batch_size=batch_size)))
            if on_point is not None:
                on_point(k)
    return out
