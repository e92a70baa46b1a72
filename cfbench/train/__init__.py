"""Training (layer 7): data → trainer (SAM/ASAM) → checkpoints → merge (Wise-FT), rehearsal, FSDP.

May import metrics, store, models and everything below; comparison never imports it.

Fine-tuning that forgets less: SAM/ASAM, the paper's compute-matched pair, Wise-FT and rehearsal.

Heavy imports (transformers) happen inside the functions, so ``from cfbench.train import SAM`` is
cheap for users who only want the optimizer.
"""

from __future__ import annotations

from cfbench.train.data import load_data, mix_rehearsal, rehearsal_count
from cfbench.train.finetune import FinetuneResult, finetune
from cfbench.train.merge import MergeResult, merge, merge_state_dicts
from cfbench.train.pair import PairResult, pair
from cfbench.train.sam import SAM
from cfbench.train.trainer import Trainer

__all__ = [
    "SAM",
    "FinetuneResult",
    "MergeResult",
    "PairResult",
    "Trainer",
    "finetune",
    "load_data",
    "merge",
    "merge_state_dicts",
    "mix_rehearsal",
    "pair",
    "rehearsal_count",
]
