"""``js``: Jensen–Shannon divergence between the base's and the tuned model's choice distributions."""

from __future__ import annotations

import numpy as np

from cfbench.metrics.registry import ChoiceBatch, log_softmax


def js(batch: ChoiceBatch) -> np.ndarray:
    """Jensen–Shannon divergence of the choice distributions, in nats, per item (0 … ln 2).

    ``m = (p + q) / 2``; ``JS = ½ KL(p ‖ m) + ½ KL(q ‖ m)``. Symmetric and bounded by ln 2 ≈ 0.693,
    so one item whose distribution collapsed cannot dominate a task mean the way it can for KL.
    """
    logp = log_softmax(batch.base)
    logq = log_softmax(batch.tuned)
    p, q = np.exp(logp), np.exp(logq)
    logm = np.logaddexp(logp, logq) - np.log(2.0)
    return 0.5 * np.sum(p * (logp - logm), axis=1) + 0.5 * np.sum(q * (logq - logm), axis=1)
