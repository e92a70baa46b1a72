"""How many bootstrap replicates a CI needs, and what a gate budget may be: checked before anything is scored.

A percentile CI at confidence ``c`` is read off the replicates at the ``(1 - c) / 2`` and
``(1 + c) / 2`` quantiles. With fewer than ``2 / (1 - c)`` replicates (40 at 95%) no replicate lies
beyond either end, so the "interval" is the spread of a handful of resamples: ``--n-boot 1`` gave
``+10.00* [+20.00, +20.00]``, a CI that excludes its own estimate, starred, and a regression gate
that passed a −20 drop on the CI [+40, +40]. So a count is either 0 (no CIs) or at least
:func:`min_replicates`; anything else is refused, naming the fix, before any checkpoint is scored.
"""

from __future__ import annotations

import math

from cfbench.errors import CfbenchError

#: The smallest count ever accepted for a CI (the 95% rule's 2 / 0.05).
MIN_N_BOOT = 40


def min_replicates(confidence: float) -> int:
    """The fewest replicates that put at least one beyond each end of a ``confidence`` percentile CI."""
    return max(MIN_N_BOOT, math.ceil(2 / (1 - confidence) - 1e-9))


def check_n_boot(n_boot: object, confidence: float = 0.95, flag: str = "--n-boot") -> int:
    """``n_boot`` if it is 0 (no CIs) or enough replicates for a ``confidence`` CI, else one clear error."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int):
        raise CfbenchError(f"{flag} {n_boot!r} is not a whole number; pass 0 (no CIs) or e.g. 2000")
    need = min_replicates(confidence)
    if n_boot < 0 or 0 < n_boot < need:
        raise CfbenchError(
            f"{flag} {n_boot}: a {100 * confidence:g}% CI needs at least {need} bootstrap replicates "
            f"(pass 0 for no CIs and no CI-based stars, or e.g. {flag} 2000)"
        )
    return n_boot


def budget_value(flag: str, spec: str, val: str, unit: str, example: str) -> float:
    """A gate budget's number: finite and ≥ 0 (nan compares False with every value and inf allows
    any, so either would pass every gate). ``unit``: "points" or "" (the metric's own unit)."""
    of_unit = f" of {unit}" if unit else ""
    try:
        v = float(val)
    except ValueError as exc:
        raise CfbenchError(f"{flag} {spec!r}: {val!r} is not a number{of_unit}") from exc
    if not math.isfinite(v):
        raise CfbenchError(f"{flag} {spec!r}: the budget must be a finite number{of_unit}, e.g. {example}")
    if v < 0:
        raise CfbenchError(f"{flag} {spec!r}: the budget must be ≥ 0{' ' + unit if unit else ''}")
    return v
