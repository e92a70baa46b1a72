"""Per-choice scores from stored item rows, by the same rule the task's primary metric ranks with.

An item row stores the raw log-likelihood of every request (``logprobs``) and its token count
(``n_tokens``); which of those are the choices, and how they are compared, depends on how the task
is scored (:meth:`cfbench.tasks.task.Task.score`). The metrics must see the scores whose argmax *is*
the stored prediction, otherwise a "divergence" could move while the answer the accuracy counts
cannot (or the reverse). So, per task:

* ``loglikelihood`` + ``acc``: the summed log-prob of each choice continuation (lm-eval ``acc``);
* ``ppl`` + ``acc`` (OpenCompass PPL rule): ``(LL(context) + LL(choice)) / (n_context + n_choice)``,
  the mean per-token log-prob of the whole text; ``logprobs[0]`` is the context request;
* ``oc_ppl`` + ``acc`` (OpenCompass ``get_ppl`` exactly): ``-get_ppl(text_i) = LL(text_i) / (n_tokens_i + 1)``,
  one request per choice's whole text; its argmax is OpenCompass's lowest-PPL prediction;
* ``acc_norm``: the choice's log-prob divided by its length in characters (lm-eval ``acc_norm``).
  Character lengths are not stored in items, so they are read from the task's data (the same
  documents the items were rendered from; each item's fingerprint is checked against the
  re-rendered document, so a length is never taken from a different question).

The softmax over these scores is the item's *choice distribution*. For ``acc_norm``, ``ppl`` and ``oc_ppl`` it is
a distribution over length-normalised scores (a tempered one), chosen for consistency with the
prediction, not a probability the model assigns; docs/metrics.md says so next to the formulas.

Tasks whose stored rows cannot give a choice distribution (``mc2``: which rows are the mc1 choices
is not stored) are left out with a reason, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cfbench.errors import CfbenchError
from cfbench.store.schema import item_fingerprint
from cfbench.tasks.opencompass import oc_ppl
from cfbench.tasks.registry import get_task, get_task_config

CHOICE_METRICS = ("acc", "acc_norm")
#: Columns of a choice frame (one row per usable item of one run on one task).
CHOICE_COLUMNS = ("doc_id", "subset", "gold", "item_hash", "task_hash", "choices", "rule")


@dataclass(frozen=True)
class ChoiceRule:
    """How one run's stored log-probs of one task become per-choice scores.

    ``choice_info(doc_id)`` gives ``(choice lengths in characters, fingerprint or None, gold)`` of the
    re-rendered document; only ``acc_norm`` needs it.
    """

    scoring: str  # "loglikelihood" | "ppl" | "oc_ppl"
    metric: str  # "acc" | "acc_norm"
    choice_info: Callable[[int], tuple[tuple[int, ...], str | None, int] | None] | None = field(
        default=None, compare=False
    )

    @property
    def key(self) -> str:
        """Two runs' scores of a task are comparable only when their rule keys are equal."""
        return f"{self.scoring}/{self.metric}"

    def scores(self, doc_id: int, logprobs: Any, n_tokens: Any, gold: int, item_hash: Any) -> np.ndarray | str:
        """The item's per-choice scores, or why this row gives none (a reason in a few words)."""
        if logprobs is None or len(logprobs) == 0:
            return "no stored log-probs"
        lls = np.asarray(logprobs, dtype=np.float64)
        if not np.isfinite(lls).all():
            return "non-finite stored log-probs"
        if self.scoring == "ppl":
            if n_tokens is None or len(n_tokens) != len(lls):
                return "no stored token counts (the ppl rule divides by them)"
            if len(lls) < 3:
                return "fewer than two choices"
            ntok = np.asarray(n_tokens, dtype=np.float64)
            choice_ll = lls[1:]
            per_token = (lls[0] + choice_ll) / (ntok[0] + ntok[1:])
        elif self.scoring == "oc_ppl":
            if n_tokens is None or len(n_tokens) != len(lls):
                return "no stored token counts (the oc_ppl rule divides by them)"
            if len(lls) < 2:
                return "fewer than two choices"
            # OpenCompass predicts the lowest get_ppl = -LL / (n_tokens + 1); its negation ranks the same,
            # first on ties (np.argmax and oc_argmin both take the first).
            choice_ll = lls
            per_token = -np.array([oc_ppl(ll, int(n)) for ll, n in zip(lls, n_tokens, strict=True)])
        else:
            if len(lls) < 2:
                return "fewer than two choices"
            choice_ll = per_token = lls
        if self.metric == "acc":
            out = per_token
        else:
            info = self.choice_info(doc_id) if self.choice_info is not None else None
            if info is None:
                return "document not in the task's data here"
            lengths, fingerprint, data_gold = info
            if fingerprint is not None and item_hash is not None and not pd.isna(item_hash):
                if fingerprint != item_hash:
                    return "item differs from the task's data here (fingerprint)"
            elif data_gold != gold:
                return "item differs from the task's data here (gold)"
            if len(lengths) != len(choice_ll) or min(lengths) <= 0:
                return "choice count or lengths differ from the task's data here"
            out = choice_ll / np.asarray(lengths, dtype=np.float64)
        if not 0 <= gold < len(out):
            return "gold index out of range"
        return np.asarray(out, dtype=np.float64)


def choice_frame(items: pd.DataFrame, rule: ChoiceRule) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-choice scores of one run's items of one task, and how many rows were left out and why."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    has_ntok = "n_tokens" in items
    has_hash = "item_hash" in items
    has_thash = "task_hash" in items
    has_subset = "subset" in items
    for rec in items.to_dict("records"):
        ntok = rec["n_tokens"] if has_ntok else None
        ntok = None if ntok is None or (not hasattr(ntok, "__len__") and pd.isna(ntok)) else ntok
        lp = rec.get("logprobs")
        lp = None if lp is None or (not hasattr(lp, "__len__") and pd.isna(lp)) else lp
        gold = int(rec["gold"])
        ih = rec["item_hash"] if has_hash else None
        got = rule.scores(int(rec["doc_id"]), lp, ntok, gold, ih)
        if isinstance(got, str):
            skipped[got] = skipped.get(got, 0) + 1
            continue
        rows.append(
            {
                "doc_id": int(rec["doc_id"]),
                "subset": rec["subset"] if has_subset else None,
                "gold": gold,
                "item_hash": ih,
                "task_hash": rec["task_hash"] if has_thash else None,
                "choices": got,
                "rule": rule.key,
            }
        )
    return pd.DataFrame(rows, columns=list(CHOICE_COLUMNS)), skipped


class ChoiceSource:
    """The rule per (task, run source), with choice lengths read once per task from its data.

    ``sources`` are the data sources to read documents from (None: the default chain, which honours
    ``$CFBENCH_DATA_DIR``); they are only touched for ``acc_norm`` tasks.
    """

    def __init__(self, sources: list[Any] | None = None) -> None:
        self.sources = sources
        self._info: dict[tuple[str, int], dict[int, tuple[tuple[int, ...], str | None, int]] | str] = {}

    def rule(self, task: str, source: str, num_fewshot: int | None) -> ChoiceRule | str:
        """The task's rule for a run from ``source`` (``cfbench``, ``lm-eval``), or why there is none."""
        try:
            cfg = get_task_config(task)
        except CfbenchError:
            return "no task config here, so which stored log-probs are choices is unknown"
        if cfg.primary_metric not in CHOICE_METRICS or cfg.mc2_choices:
            return f"primary metric {cfg.primary_metric} has no per-choice distribution in stored items"
        # lm-eval logs one summed log-likelihood per choice, whatever cfbench's config scores with.
        scoring = cfg.scoring if source == "cfbench" else "loglikelihood"
        if cfg.primary_metric == "acc":
            return ChoiceRule(scoring, "acc")
        k = cfg.num_fewshot if num_fewshot is None else int(num_fewshot)
        info = self._choice_info(task, k)
        if isinstance(info, str):
            return info
        return ChoiceRule(scoring, "acc_norm", info.get)

    def _choice_info(self, task: str, k: int) -> dict[int, tuple[tuple[int, ...], str | None, int]] | str:
        if (task, k) not in self._info:
            self._info[task, k] = self._load_info(task, k)
        return self._info[task, k]

    def _load_info(self, task: str, k: int) -> dict[int, tuple[tuple[int, ...], str | None, int]] | str:
        t = get_task(task, self.sources)
        if t.located() is None:
            return (
                "acc_norm divides by choice lengths in characters, which items do not store, and the task's "
                "data is not found here (give --data-dir or set CFBENCH_DATA_DIR)"
            )
        out: dict[int, tuple[tuple[int, ...], str | None, int]] = {}
        delim = t.cfg.target_delimiter
        try:
            for doc_id, doc in t.selected_docs(None):
                inst = t.render(doc, doc_id, k)
                fp = item_fingerprint(inst.context, [delim + c for c in inst.choices], inst.gold)
                out[doc_id] = (tuple(len(c) for c in inst.choices), fp, inst.gold)
        except CfbenchError as exc:
            return f"its data could not be rendered for choice lengths ({exc})"
        return out
