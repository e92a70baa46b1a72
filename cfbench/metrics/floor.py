"""The noise floor's own flips: items whose 0/1 score a numeric change alone moves.

A tuned run's Forgotten/Gained counts (right → wrong, wrong → right) mix forgetting with numerics:
Dutta et al. 2024 showed that a change of dtype or batch composition flips answers while accuracy
stays put. The floor run (the base re-scored under such a change) measures how many flips numerics
alone make, on the same items and with the same definition, so the report can put the two side by side.

Pure functions of the report's item rows (``task, doc_id, score`` plus the optional fingerprints),
paired exactly as accuracy pairs them (:func:`cfbench.stats.align_items`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.signals import FloorFlips
from cfbench.stats import align_items, flip_counts


def task_flips(base: pd.DataFrame, floor: pd.DataFrame, task: str) -> FloorFlips | None:
    """Flips of one task's paired items; None when they do not pair or the scores are not 0/1 (no flip
    is defined for a partial-credit score)."""
    try:
        paired = align_items(base, floor, task=task, names=("base", "floor"))
    except CfbenchError:
        return None
    if paired.n == 0 or not paired.binary:
        return None
    forgotten, gained = flip_counts(paired.ref, paired.other)
    return FloorFlips(forgotten, gained, int(paired.n))


def floor_flips(
    base: pd.DataFrame, floor: pd.DataFrame, categories: Mapping[str, Sequence[str]], extras: Sequence[str] = ()
) -> tuple[FloorFlips | None, dict[str, FloorFlips]]:
    """(total over the tasks in AVG, per task) flips between the base's items and the floor's.

    The total sums the tasks of ``categories`` only, as the Forgotten/Gained columns of the tuned
    runs do; ``extras`` get a per-task count but stay out of it. None: no task has paired 0/1 items.
    """
    per_task: dict[str, FloorFlips] = {}
    for task in [*(t for m in categories.values() for t in m), *extras]:
        a, b = base[base["task"] == task], floor[floor["task"] == task]
        if a.empty or b.empty:
            continue
        got = task_flips(a, b, task)
        if got is not None:
            per_task[task] = got
    in_avg = [per_task[t] for m in categories.values() for t in m if t in per_task]
    if not in_avg:
        return None, per_task
    total = FloorFlips(*(int(np.sum([getattr(f, k) for f in in_avg])) for k in ("forgotten", "gained", "n")))
    return total, per_task
