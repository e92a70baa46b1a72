"""The registry of paired item metrics: what a metric is, and how one is added.

A paired item metric turns the two runs' per-choice scores of the *same* items into one number per
item (e.g. how far the tuned model's choice distribution moved from the base's). Everything else —
pairing on item fingerprints, bootstrap CIs, category/overall aggregation, the noise floor,
rendering and ``regress --max-drift`` budgets — is done once by :mod:`cfbench.metrics.drift` for
every registered metric, so adding one is one file (the function) plus one
:func:`register_metric` call in ``cfbench/metrics/__init__.py``. No config, engine or Parquet
schema change is involved: metrics read what the items table already stores and never rescore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cfbench.errors import CfbenchError

MetricKind = Literal["divergence", "delta"]


@dataclass(frozen=True)
class ChoiceBatch:
    """Aligned items with the same number of choices ``k``, as one metric call sees them.

    ``base``/``tuned`` are ``(n, k)`` per-choice scores in log space, exactly the scores the task's
    primary metric ranks (``argmax`` is the prediction; see :mod:`cfbench.metrics.choices`), so
    ``log_softmax`` over a row is the choice distribution whose mode is the model's answer. ``gold``
    holds the ``(n,)`` gold indices (equal in both runs: paired items have the same gold).
    """

    base: np.ndarray
    tuned: np.ndarray
    gold: np.ndarray

    @property
    def n(self) -> int:
        return int(self.gold.size)


MetricFn = Callable[[ChoiceBatch], np.ndarray]


@dataclass(frozen=True)
class ItemMetric:
    """One registered metric.

    ``kind`` decides how the report judges it: a ``"divergence"`` is never negative, so its CI never
    contains 0 and it is judged against a noise floor (the same statistic between the base and the
    base re-scored another way); a ``"delta"`` is a signed tuned − base change judged against 0, as
    accuracy Δ is. ``better`` says which direction is good for the tuned model.
    """

    name: str
    fn: MetricFn
    label: str
    unit: str
    kind: MetricKind
    better: Literal["higher", "lower"] = "lower"
    description: str = ""


_METRICS: dict[str, ItemMetric] = {}


def register_metric(
    name: str,
    fn: MetricFn,
    *,
    label: str,
    unit: str,
    kind: MetricKind,
    better: Literal["higher", "lower"] = "lower",
    description: str | None = None,
) -> ItemMetric:
    """Add ``fn`` under ``name``; a second registration of a taken name is refused (no silent override)."""
    if not name.isidentifier():
        raise CfbenchError(f"metric name {name!r} must be an identifier (letters, digits, _), e.g. 'kl'")
    if name in _METRICS:
        raise CfbenchError(f"a metric named {name!r} is already registered; pick another name or unregister it")
    if kind not in ("divergence", "delta"):
        raise CfbenchError(f"metric {name!r}: kind must be 'divergence' or 'delta', not {kind!r}")
    if better not in ("higher", "lower"):
        raise CfbenchError(f"metric {name!r}: better must be 'higher' or 'lower', not {better!r}")
    doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
    metric = ItemMetric(name, fn, label, unit, kind, better, doc)
    _METRICS[name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests register throw-away metrics and clean up after themselves)."""
    _METRICS.pop(name, None)


def get_metric(name: str) -> ItemMetric:
    try:
        return _METRICS[name]
    except KeyError:
        raise CfbenchError(f"unknown item metric {name!r}: choose one of {', '.join(_METRICS)}") from None


def registered_metrics() -> list[ItemMetric]:
    """All metrics in registration order (the order columns appear in reports)."""
    return list(_METRICS.values())


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax`` in float64, shifted by the row max so -800-nat scores do not underflow."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
