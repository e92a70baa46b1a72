"""``kl``: Kullback–Leibler divergence of the tuned model's choice distribution from the base's."""

from __future__ import annotations

import numpy as np

from cfbench.metrics.registry import ChoiceBatch, log_softmax


def kl(batch: ChoiceBatch) -> np.ndarray:
    """KL(base ‖ tuned) of the choice distributions, in nats, per item (≥ 0; 0 iff they are equal).

    ``p = softmax(base)``, ``q = softmax(tuned)`` over the item's choices; ``Σ p (log p − log q)``.
    The base is the reference distribution: the divergence weights each choice by how much the base
    believed in it, so it measures how much of what the base model "knew" the tuned model moved.
    Unbounded and asymmetric; :mod:`cfbench.metrics.js` is the bounded symmetric companion.
    """
    logp = log_softmax(batch.base)
    logq = log_softmax(batch.tuned)
    return np.sum(np.exp(logp) * (logp - logq), axis=1)
