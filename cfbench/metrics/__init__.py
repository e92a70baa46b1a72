"""Signals (layer 5): every continuous forgetting signal as a pure function of stored items.

May import probes, store, tasks and the core; never report or comparison.
A new signal is one file plus one ``register_metric`` call.

Continuous forgetting signals from stored items: one small file per paired item metric.

Accuracy on a small model is noisy (an item counts only when its argmax flips); the per-choice
log-probabilities every stored item carries move long before that. Each metric here maps the two
runs' aligned items to one value per item; :mod:`cfbench.metrics.drift` pairs, bootstraps,
aggregates and judges them for every registered metric alike (docs/metrics.md).

Adding a metric: write ``cfbench/metrics/NAME.py`` with a function ``ChoiceBatch -> (n,) array``
and register it below with one :func:`register_metric` call. Nothing else changes: ``compare``
shows it in every format, ``regress --max-drift NAME=...`` gates on it, ``leaderboard
--reference`` lists it.
"""

from __future__ import annotations

from cfbench.metrics.gold_margin import gold_margin
from cfbench.metrics.js import js
from cfbench.metrics.kl import kl
from cfbench.metrics.registry import (
    ChoiceBatch,
    ItemMetric,
    get_metric,
    log_softmax,
    register_metric,
    registered_metrics,
    unregister_metric,
)

register_metric(
    "gold_margin", gold_margin, label="Δ gold log-p (choices)", unit="Δ nats", kind="delta", better="higher"
)
register_metric("kl", kl, label="KL(base‖tuned)", unit="nats", kind="divergence")
register_metric("js", js, label="JS(base, tuned)", unit="nats", kind="divergence")

__all__ = [
    "ChoiceBatch",
    "ItemMetric",
    "get_metric",
    "log_softmax",
    "register_metric",
    "registered_metrics",
    "unregister_metric",
]
