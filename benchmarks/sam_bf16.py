"""How much of SAM's perturbation ε survives bf16 rounding at 7B-like weight scales.

Weights ~ N(0, 0.02) (Llama-2-7B init scale), g ~ N(0, 1) scaled so ε = ρ·g/‖g‖ over a 7B-parameter
model (per-element |ε| ≈ ρ/√n). The forward under FSDP's MixedPrecisionPolicy sees bf16(w + ε);
the master weights (and ε) stay float32. Prints the fraction of ε that reaches the bf16 forward.
"""

from __future__ import annotations

import torch

N_MODEL = 7e9
SAMPLE = 4_000_000
torch.manual_seed(0)
w = torch.randn(SAMPLE) * 0.02
g = torch.randn(SAMPLE)
print("rho   |eps| per element   seen eps / eps (L2)   elements whose bf16 weight is unchanged")
for rho in (0.05, 0.5, 2.0, 8.0):
    eps = g * (rho / (g.norm() * (N_MODEL / SAMPLE) ** 0.5))  # same per-element scale as a 7B-wide ε
    seen = (w + eps).bfloat16().float() - w.bfloat16().float()
    kept = float(seen.norm() / eps.norm())
    unchanged = float(((w + eps).bfloat16() == w.bfloat16()).float().mean())
    print(f"{rho:<5} {float(eps.abs().mean()):.2e}            {kept:.3f}                 {unchanged:.3f}")
