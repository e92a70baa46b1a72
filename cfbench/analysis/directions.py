"""Seeded random directions in weight space, reproducible per parameter name and shape.

Each parameter's raw draw comes from its own ``torch.Generator`` seeded by a hash of
``(seed, direction index, parameter name, shape)``, never from one stream shared across parameters. So
two checkpoints of the same architecture (base, w/o SAM, w/ SAM) get bit-identical raw directions, and
their landscapes are comparable as in the paper's Table 1, whatever order the parameters are visited in
or whether extra parameters exist elsewhere.

Two kinds:

* ``gaussian`` (the paper): i.i.d. N(0, 1) entries, then the whole direction is scaled so that
  ``‖δ‖ = ‖θ₀‖`` (global norms over the perturbed parameters). The paper does not state its scaling; this
  one makes α a fraction of the model's weight norm, so a span means the same thing across sizes.
* ``filter`` (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", ``net_plotter.py``): each
  filter (row along dim 0) of each ≥2-D tensor is rescaled to the norm of the same filter of ``θ₀``.

1-D tensors (norm weights, biases): with ``ignore_1d=True`` (the reference code's ``--xignore biasbn``)
their direction is zero, so they stay unperturbed; otherwise ``filter`` copies the weight itself (as the
reference code does) and ``gaussian`` keeps the draw.
"""

from __future__ import annotations

import hashlib
import math

import torch

from cfbench.errors import CfbenchError

DIRECTION_KINDS = ("gaussian", "filter")


def _param_seed(seed: int, index: int, name: str, shape: tuple[int, ...]) -> int:
    key = f"{seed}\x00{index}\x00{name}\x00{'x'.join(map(str, shape))}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def raw_direction(name: str, shape: tuple[int, ...], *, seed: int, index: int) -> torch.Tensor:
    """N(0, 1) float32 draw for one parameter, a function of (seed, index, name, shape) only (CPU generator)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_param_seed(seed, index, name, tuple(shape)))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def make_direction(
    named_params: list[tuple[str, torch.Tensor]],
    *,
    kind: str = "filter",
    seed: int = 0,
    index: int = 0,
    ignore_1d: bool = True,
) -> list[torch.Tensor]:
    """One direction (a tensor per parameter, same order, dtype and device) for ``named_params``."""
    if kind not in DIRECTION_KINDS:
        raise CfbenchError(f"unknown direction kind {kind!r}: use --directions gaussian or --directions filter")
    out: list[torch.Tensor] = []
    for name, p in named_params:
        w = p.detach()
        d = raw_direction(name, tuple(w.shape), seed=seed, index=index).to(device=w.device, dtype=w.dtype)
        if w.dim() <= 1:
            if ignore_1d:
                d.zero_()
            elif kind == "filter":
                d.copy_(w)
        elif kind == "filter":
            wf = w.reshape(w.shape[0], -1).float()
            df = d.reshape(d.shape[0], -1).float()
            scale = wf.norm(dim=1) / (df.norm(dim=1) + 1e-10)
            d = (df * scale[:, None]).reshape(w.shape).to(w.dtype)
        out.append(d)
    if kind == "gaussian":
        # Scale the whole direction to the norm of the parameters it moves (over the perturbed ones).
        # Norms summed in name order, so the scale (and so the direction) does not depend on visiting order.
        moved = sorted(
            (
                (n, w.detach(), d)
                for (n, w), d in zip(named_params, out, strict=True)
                if not (ignore_1d and w.dim() <= 1)
            ),
            key=lambda t: t[0],
        )
        w_norm = math.sqrt(sum(float(w.double().pow(2).sum()) for _, w, _ in moved))
        d_norm = math.sqrt(sum(float(d.double().pow(2).sum()) for _, _, d in moved))
        if float(d_norm) > 0:
            scale = float(w_norm / d_norm)
            out = [d * scale for d in out]
    return out
