"""``gold_margin``: how much more (or less) the tuned model prefers the gold answer among the choices."""

from __future__ import annotations

import numpy as np

from cfbench.metrics.registry import ChoiceBatch, log_softmax


def gold_margin(batch: ChoiceBatch) -> np.ndarray:
    """Change of the gold choice's normalised log-probability, tuned − base, in nats.

    Per item: ``log_softmax(tuned)[gold] − log_softmax(base)[gold]`` over the item's choices. It is
    normalised over the choices on purpose: the *raw* gold log-probability also rises when every
    choice gets likelier (e.g. after tuning on text of the same style), which says nothing about
    whether the model still tells the right answer from the wrong ones, so it is not a forgetting
    measure. Negative: the tuned model moved probability away from the gold answer (forgetting);
    continuous, so it moves long before an argmax flips and accuracy changes.
    """
    rows = np.arange(batch.n)
    return log_softmax(batch.tuned)[rows, batch.gold] - log_softmax(batch.base)[rows, batch.gold]
