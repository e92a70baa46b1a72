"""A task = config + located data → instances (log-likelihood requests) → per-item scores.

Two scoring rules:

* ``loglikelihood`` (lm-eval): choice i is the continuation ``target_delimiter + choice_i`` of a
  shared context; ``acc`` picks the largest summed log-prob, ``acc_norm`` the largest log-prob per
  character of the choice.
* ``ppl`` (OpenCompass ``PPLInferencer``): each choice is a whole text ``context + delimiter +
  choice_i`` and the prediction is the text with the lowest mean per-token NLL. Computed as
  ``(LL(context) + LL(choice_i | context)) / (n_context + n_choice_i)`` from one extra
  ``("", context)`` request, so the shared context still costs one pass, not one per choice.
  (OpenCompass does not score a text's first token when the tokenizer adds no BOS; cfbench scores
  it from the BOS/EOS prefix token, the same constant for every choice of a document.) Kept for the
  ``lmeval`` suite's OpenCompass-prompted tasks; the ``paper`` suite uses ``oc_ppl``.
* ``oc_ppl`` (OpenCompass exactly, :mod:`cfbench.tasks.opencompass`): each choice's whole text is one
  request built from the model's tokenizer, its ``get_ppl`` is ``-logprob / (n_tokens + 1)``, and the
  prediction is the first lowest. Rendering therefore needs the tokenizer (``oc_requests``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from cfbench.data import DataSource, Located, default_sources, locate, missing_data_message
from cfbench.data.adapters import get_processor
from cfbench.errors import CfbenchError
from cfbench.requests import LoglikRequest, LoglikResult, impossible_logprob
from cfbench.tasks.clusters import cluster_value, split_cluster_by
from cfbench.tasks.config import TaskConfig
from cfbench.tasks.opencompass import OCPPLRequests, oc_argmin, oc_ppl
from cfbench.tasks.templates import evaluate, render_text

Row = dict[str, Any]


@dataclass
class Instance:
    """One document rendered into requests; ``requests`` may hold empty continuations (scored as 0)."""

    doc_id: int
    subset: str | None
    context: str
    choices: list[str]
    gold: int
    requests: list[LoglikRequest]
    mc2_labels: list[int] | None = None
    n_mc1: int = 0


@dataclass
class ItemScore:
    doc_id: int
    subset: str | None
    gold: int
    pred: int
    metrics: dict[str, float]
    logprobs: list[float] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    is_greedy: list[bool] = field(default_factory=list)


class Task:
    """Binds a :class:`TaskConfig` to data sources; loading is lazy and cached."""

    def __init__(self, cfg: TaskConfig, sources: list[DataSource] | None = None) -> None:
        self.cfg = cfg
        self.sources = sources if sources is not None else default_sources()
        self._docs: dict[str, list[Row]] = {}
        self._located: dict[str, Located | None] = {}

    @property
    def name(self) -> str:
        return self.cfg.task

    def located(self, split: str | None = None) -> Located | None:
        split = split or self.cfg.split
        if split not in self._located:
            self._located[split] = locate(self.cfg, split, self.sources)
        return self._located[split]

    def require(self, split: str | None = None) -> Located:
        split = split or self.cfg.split
        hit = self.located(split)
        if hit is None:
            raise CfbenchError(missing_data_message(self.cfg, split))
        return hit

    @property
    def data_fingerprint(self) -> str:
        parts = [self.require().fingerprint]
        if self.cfg.fewshot_split and self.cfg.fewshot_split != self.cfg.split:
            fs = self.located(self.cfg.fewshot_split)
            parts.append(fs.fingerprint if fs else "none")
        return "|".join(parts)

    def docs(self, split: str | None = None) -> list[Row]:
        split = split or self.cfg.split
        if split not in self._docs:
            rows = self.require(split).load()
            if self.cfg.process_docs:
                # A processor may drop a row by returning None (OpenCompass's ARC loader skips items
                # without exactly four choices); doc ids count the rows that remain.
                fn = get_processor(self.cfg.process_docs)
                rows = [out for r in rows if (out := fn(r)) is not None]
            self._docs[split] = rows
        return self._docs[split]

    # ---- rendering ----

    def _choices(self, doc: Row) -> list[str]:
        choices = evaluate(self.cfg.doc_to_choice, doc, f"{self.name}.doc_to_choice")
        if not isinstance(choices, list) or not choices:
            raise CfbenchError(f"{self.name}: doc_to_choice must give a non-empty list, got {choices!r}")
        return [str(c) for c in choices]

    def _target(self, doc: Row, choices: list[str]) -> int:
        t = evaluate(self.cfg.doc_to_target, doc, f"{self.name}.doc_to_target")
        if isinstance(t, str) and not t.lstrip("-").isdigit():
            if t in choices:
                return choices.index(t)
            raise CfbenchError(f"{self.name}: target {t!r} is not one of the choices {choices}")
        t = int(t)
        if not 0 <= t < len(choices):
            raise CfbenchError(f"{self.name}: target index {t} out of range for {len(choices)} choices")
        return t

    def _text(self, doc: Row) -> str:
        return render_text(self.cfg.doc_to_text, doc, f"{self.name}.doc_to_text")

    @cached_property
    def _fewshot_pool(self) -> list[Row]:
        return self.docs(self.cfg.fewshot_split) if self.cfg.fewshot_split else []

    def _fewshot_examples(self, doc: Row, doc_id: int, k: int) -> list[Row]:
        pool = self._fewshot_pool
        if self.cfg.fewshot_groupby:
            key = self.cfg.fewshot_groupby
            pool = [d for d in pool if d.get(key) == doc.get(key)]
        if self.cfg.fewshot_split == self.cfg.split:
            pool = [d for d in pool if d is not doc]
        if len(pool) < k:
            raise CfbenchError(
                f"{self.name}: {k}-shot needs {k} examples in split {self.cfg.fewshot_split}, found {len(pool)}; "
                "lower --num-fewshot"
            )
        if self.cfg.fewshot_sampler == "first_n":
            return pool[:k]
        return random.Random(1234 + doc_id).sample(pool, k)

    def context(self, doc: Row, doc_id: int, num_fewshot: int) -> str:
        prefix = render_text(self.cfg.description, doc, f"{self.name}.description") if self.cfg.description else ""
        if num_fewshot:
            shots = []
            for ex in self._fewshot_examples(doc, doc_id, num_fewshot):
                ch = self._choices(ex)
                shots.append(self._text(ex) + self.cfg.target_delimiter + ch[self._target(ex, ch)])
            prefix += self.cfg.fewshot_delimiter.join(shots) + self.cfg.fewshot_delimiter
        elif self.cfg.scoring == "oc_ppl" and self.cfg.fewshot_split:
            # OpenCompass's FixKRetriever with no example still yields its ice_eos_token "\n"
            # ("\n".join([]) + "\n"), one newline more than an empty prefix (oc_mmlu at --num-fewshot 0).
            prefix += "\n"
        return prefix + self._text(doc)

    def instances(
        self, limit: int | None = None, num_fewshot: int | None = None, oc_requests: OCPPLRequests | None = None
    ) -> list[Instance]:
        """The first ``limit`` documents of the split (per subset) as scoring instances (lm-eval order).

        ``oc_requests`` (the model's tokenizer's :class:`OCPPLRequests`) is required by ``scoring: oc_ppl``.
        """
        if self.cfg.scoring == "oc_ppl" and oc_requests is None:
            raise CfbenchError(
                f"{self.name} uses OpenCompass's PPL rule, whose requests depend on the model's tokenizer: "
                "render it with oc_requests=load_oc_requests(model_path) (cfbench eval does this)"
            )
        k = self.cfg.num_fewshot if num_fewshot is None else num_fewshot
        if k < 0:  # pool[:k] would take all but |k| examples
            raise CfbenchError(f"{self.name}: --num-fewshot must be 0 or more in-context examples, got {k}")
        if k and not self.cfg.fewshot_split:
            raise CfbenchError(f"{self.name} has no fewshot_split; use --num-fewshot 0")
        selected = self.selected_docs(limit)
        if not selected:
            hit = self.require()
            raise CfbenchError(
                f"{self.name}: the {self.cfg.split} split at {hit.where} ({hit.source}) has no documents: "
                "supply a non-empty dataset (see `cfbench tasks`)"
            )
        out = []
        for i, doc in selected:
            try:
                out.append(self.render(doc, i, k, oc_requests))
            except CfbenchError as exc:  # name the document, so a bad row can be found in the data
                raise CfbenchError(f"{self.name} doc {i} ({self.cfg.split} split): {exc}") from exc
        return out

    def selected_docs(self, limit: int | None = None) -> list[tuple[int, Row]]:
        """``(doc_id, doc)`` of the first ``limit`` documents — per subset (e.g. per MMLU subject) when
        the task has subsets, as ``lm_eval --limit`` does for MMLU's per-subject tasks."""
        docs = list(enumerate(self.docs()))
        if limit is None:
            return docs
        if not self.cfg.subset_field:
            return docs[:limit]
        taken: dict[Any, int] = {}
        out = []
        for i, doc in docs:
            key = doc.get(self.cfg.subset_field)
            if taken.get(key, 0) < limit:
                taken[key] = taken.get(key, 0) + 1
                out.append((i, doc))
        return out

    def cluster_ids(self) -> dict[int, str] | None:
        """doc_id → the cluster id of the task's ``cluster_by`` (items sharing a passage), None without one.

        ``cluster_by`` is a field, or ``FIELD:KEY`` (:mod:`cfbench.tasks.clusters`). A field that the
        documents lack is a config error: one line naming it, the task and the fields there are.
        """
        spec = self.cfg.cluster_by
        if spec is None:
            return None
        docs = self.docs()
        field_name, key = split_cluster_by(spec)
        if docs and field_name not in docs[0]:
            what = f"{spec!r} is not" if key is None else f"{spec!r}: {field_name!r} is not"
            raise CfbenchError(
                f"task {self.name}: cluster_by {what} a field of its documents (fields: "
                f"{', '.join(sorted(map(str, docs[0])))}); fix cluster_by in {self.cfg.source_file or 'its YAML'}"
            )
        return {i: cluster_value(spec, doc) for i, doc in enumerate(docs)}

    def render(
        self, doc: Row, doc_id: int, num_fewshot: int = 0, oc_requests: OCPPLRequests | None = None
    ) -> Instance:
        ctx = self.context(doc, doc_id, num_fewshot)
        choices = self._choices(doc)
        gold = self._target(doc, choices)
        delim = self.cfg.target_delimiter
        reqs = [LoglikRequest(ctx, delim + c) for c in choices]
        subset = str(doc[self.cfg.subset_field]) if self.cfg.subset_field else None
        inst = Instance(doc_id, subset, ctx, choices, gold, reqs, n_mc1=len(choices))
        if self.cfg.scoring == "ppl":
            inst.requests = [LoglikRequest("", ctx), *reqs]
        elif self.cfg.scoring == "oc_ppl":
            if oc_requests is None:
                raise CfbenchError(f"{self.name}: scoring oc_ppl needs the model's tokenizer (oc_requests)")
            inst.requests = [oc_requests.request(t) for t in self._oc_texts(doc, doc_id, num_fewshot, oc_requests)]
        if self.cfg.mc2_choices:
            mc2 = [str(c) for c in evaluate(self.cfg.mc2_choices, doc, f"{self.name}.mc2_choices")]
            labels = [int(x) for x in evaluate(self.cfg.mc2_labels, doc, f"{self.name}.mc2_labels")]
            if len(mc2) != len(labels):
                raise CfbenchError(f"{self.name}: mc2 choices and labels differ in length for doc {doc_id}")
            inst.requests = [*inst.requests, *(LoglikRequest(ctx, delim + c) for c in mc2)]
            inst.mc2_labels = labels
        return inst

    def _oc_texts(self, doc: Row, doc_id: int, k: int, oc: OCPPLRequests) -> list[str]:
        """Each label's whole text as ``PPLInferencer`` builds it: while a text has more ids than the
        model's length, drop its last in-context example; later labels keep the shortened prompt."""
        choices, delim = self._choices(doc), self.cfg.target_delimiter
        ctx = self.context(doc, doc_id, k)
        texts = []
        for c in choices:
            while k > 0 and not oc.fits(ctx + delim + c):
                k -= 1
                ctx = self.context(doc, doc_id, k)
            if not oc.fits(ctx + delim + c):
                raise CfbenchError(
                    f"{self.name}: a choice's text has more than {oc.max_length} tokens (OpenCompass's max_seq_len "
                    "2048, or the backend's max_length if smaller) even without "
                    "in-context examples; OpenCompass would truncate it from the left, which cfbench does not "
                    "reproduce: score this task with the lmeval suite (--suite lmeval)"
                )
            texts.append(ctx + delim + c)
        return texts

    # ---- scoring ----

    def _refuse_impossible(self, inst: Instance, results: list[LoglikResult]) -> None:
        """A NaN / inf or positive log-prob is an error naming where it happened: argmax over it would be a
        silent wrong answer (:func:`cfbench.requests.impossible_logprob`)."""
        for k, r in enumerate(results):
            why = impossible_logprob(r.logprob, r.n_tokens)
            if why is None:
                continue
            where = f"task {self.name} doc {inst.doc_id}: the backend returned log-prob {r.logprob} for request {k}"
            if why == "not finite":
                raise CfbenchError(f"{where}: the checkpoint's weights or the dtype are broken; evaluate in "
                                   "dtype=float32 or check the checkpoint")  # fmt: skip
            raise CfbenchError(f"{where} over {r.n_tokens} token(s), {why}: the backend (or the server behind it) "
                               "does not return log-probabilities; fix or replace it")  # fmt: skip

    def score(self, inst: Instance, results: list[LoglikResult]) -> ItemScore:
        """Per-item metrics from the backend's results for ``inst.requests`` (same order)."""
        if len(results) != len(inst.requests):
            raise ValueError(f"{self.name} doc {inst.doc_id}: {len(results)} results for {len(inst.requests)} requests")
        lls = np.array([r.logprob for r in results], dtype=np.float64)
        self._refuse_impossible(inst, results)
        ntok = [r.n_tokens for r in results]
        metrics: dict[str, float] = {}
        n = inst.n_mc1
        if self.cfg.scoring == "ppl":
            ctx_ll, ctx_n = lls[0], ntok[0]
            choice_ll = lls[1 : 1 + n]
            per_token = (ctx_ll + choice_ll) / np.array([ctx_n + t for t in ntok[1 : 1 + n]], dtype=np.float64)
            pred = int(np.argmax(per_token))
        elif self.cfg.scoring == "oc_ppl":
            choice_ll = lls[:n]
            pred = oc_argmin([oc_ppl(lls[i], ntok[i]) for i in range(n)])
        else:
            choice_ll = lls[:n]
            pred = int(np.argmax(choice_ll))
        if "acc" in self.cfg.metrics or "mc1" in self.cfg.metrics:
            key = "mc1" if "mc1" in self.cfg.metrics else "acc"
            metrics[key] = float(pred == inst.gold)
        if "acc_norm" in self.cfg.metrics:
            lens = np.array([float(len(c)) for c in inst.choices])
            metrics["acc_norm"] = float(int(np.argmax(choice_ll / lens)) == inst.gold)
        if inst.mc2_labels is not None:
            off = len(inst.requests) - len(inst.mc2_labels)
            # Normalised probability mass of the true answers, in log space: exp() of log-likelihoods
            # near -800 underflows to 0 and would turn a 0.73 into 0.0.
            mc2_lls = lls[off:]
            labels = np.array(inst.mc2_labels)
            true = mc2_lls[labels == 1]
            metrics["mc2"] = float(np.exp(_logsumexp(true) - _logsumexp(mc2_lls))) if len(true) else 0.0
        return ItemScore(
            inst.doc_id,
            inst.subset,
            inst.gold,
            pred,
            metrics,
            [float(x) for x in lls],
            ntok,
            [bool(r.is_greedy) for r in results],
        )


def _logsumexp(x: np.ndarray) -> float:
    """``log(sum(exp(x)))`` without underflow: shift by the max first (float64)."""
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))
