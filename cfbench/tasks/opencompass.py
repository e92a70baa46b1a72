"""OpenCompass's perplexity (PPL) rule and its MMLU summary, built from ordinary log-likelihood requests.

The numbers of Li et al. 2024 (Tables 2/5) come from OpenCompass's ``PPLInferencer``: for every
label it renders the *whole* text (prompt and answer), asks the model's ``get_ppl`` for it, and
predicts the label with the lowest value (the first one on ties). ``get_ppl`` in
``opencompass/models/huggingface.py`` (``HuggingFace``/``HuggingFaceCausalLM``, one text per
forward) and ``huggingface_above_v4_33.py`` (``HuggingFaceBaseModel``) computes, for the ids
``x_0..x_{n-1}`` of ``tokenizer(text)`` (special tokens *included*, so ``x_0`` is BOS for a
tokenizer that adds one)::

    get_ppl(text) = sum_{i=1}^{n-1} -log p(x_i | x_<i)  /  n      (n = non-pad ids, BOS counted)

i.e. ``n - 1`` shifted losses divided by ``n``. cfbench gets the same number from one backend
request per text, without a backend change:

* **tokenizer adds BOS** (Llama, Mistral): request ``("", text)``. An empty context is the BOS
  prefix token (:func:`cfbench.models.tokenize.prefix_token_id`), so the backend scores every
  text token after BOS: the same ``n - 1`` losses; its token count is ``n - 1``.
* **tokenizer adds nothing** (SmolLM2, GPT-2, Qwen): OpenCompass never scores the first token (it
  has no left context). The request is ``(head, rest)`` with ``head`` the text of the first token;
  the backend encodes ``head + rest`` once and scores every id after the first, conditioned on it
  alone: again the ``n - 1`` losses, token count ``n - 1``.

Either way ``ppl = -logprob / (n_tokens + 1)`` (:func:`oc_ppl`). A text whose first token cannot be
cut off as a string (a byte-level BPE splitting one character into several tokens, e.g. CSL's "摘"
for SmolLM2), a tokenizer adding anything but one leading BOS, or one whose empty-context token is
not that BOS, is refused with one error line: the rule would not be OpenCompass's.

Long prompts follow ``PPLInferencer`` too: while a label's text has more than ``max_seq_len`` ids
(OpenCompass's default 2048, :data:`OC_MAX_SEQ_LEN`, or the backend's ``max_length`` if smaller), its
last in-context example is dropped, and the labels after it keep the shorter prompt
(:meth:`Task.render`). A text that does not fit even with no examples is refused: OpenCompass's
``HuggingFaceBaseModel`` would cut it on the left (its tokenizer truncates from the left), dropping
the start of the question, which cfbench does not reproduce.

What is *not* mirrored, by design: OpenCompass's batched path pads (left-padding in
``HuggingFaceBaseModel``) and then scores the first real token from a pad position, so its numbers
depend on the batch; the paper-era ``HuggingFaceCausalLM`` (``batch_padding=False``) scores each
text alone, which is what cfbench reproduces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cfbench.errors import CfbenchError
from cfbench.models.tokenize import prefix_token_id
from cfbench.requests import LoglikRequest

#: How much of a text is tokenised to find its first token (a first pre-token is never this long).
_HEAD_WINDOW = 256
#: OpenCompass's default ``max_seq_len`` (the paper-era HuggingFaceCausalLM configs): ``PPLInferencer``
#: drops in-context examples while a label's text has more ids than this, whatever the model's context.
OC_MAX_SEQ_LEN = 2048


def oc_ppl(logprob: float, n_tokens: int) -> float:
    """OpenCompass ``get_ppl`` of a text from the result of :meth:`OCPPLRequests.request`.

    ``n_tokens`` scored ids are ``n - 1`` of the ``n`` ids OpenCompass counts, so the mean loss is
    ``-logprob / (n_tokens + 1)``.
    """
    return -float(logprob) / (int(n_tokens) + 1)


def get_ppl_reference(token_nll: Sequence[float]) -> float:
    """OpenCompass's ``get_ppl`` given the ``n - 1`` shifted losses of an ``n``-id text: their sum over ``n``.

    The arithmetic of ``_get_ppl`` (``loss.sum(-1) / lens`` with ``lens`` the non-pad ids), kept as a
    plain function so tests can check :func:`oc_ppl` against a hand-computed case.
    """
    losses = np.asarray(token_nll, dtype=np.float64)
    return float(losses.sum() / (len(losses) + 1))


def oc_argmin(ppls: Sequence[float]) -> int:
    """``labels[ppl.index(min(ppl))]`` of ``PPLInferencer``: the lowest value, the first on ties."""
    values = list(ppls)
    return values.index(min(values))


class OCPPLRequests:
    """Turns whole texts into the one request whose result gives OpenCompass's ``get_ppl`` (module doc).

    Built once per tokenizer; checks on construction that the tokenizer adds either nothing or a
    single leading BOS equal to the backends' empty-context token, so every text is scored exactly.
    """

    def __init__(self, tokenizer: Any, max_length: int | None = None, max_seq_len: int | None = OC_MAX_SEQ_LEN) -> None:
        self.tokenizer = tokenizer
        # Examples are dropped at OpenCompass's max_seq_len, or earlier if the backend holds fewer ids.
        limits = [x for x in (max_length, max_seq_len) if x is not None]
        self.max_length = min(limits) if limits else None
        probe = "Question: is this probe tokenised the same way?"
        with_special = list(tokenizer(probe)["input_ids"])
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        extra = len(with_special) - len(plain)
        if extra == 0 and with_special == plain:
            self.adds_bos = False
        elif extra == 1 and with_special[1:] == plain and with_special[0] == tokenizer.bos_token_id:
            if prefix_token_id(tokenizer) != with_special[0]:
                raise CfbenchError(
                    "the tokenizer adds BOS but the backends' empty-context token differs from it: OpenCompass's PPL "
                    "rule cannot be reproduced; use a tokenizer whose bos_token_id is the token it adds"
                )
            self.adds_bos = True
        else:
            raise CfbenchError(
                f"the tokenizer adds special tokens {with_special[: max(extra, 1)]}… other than one leading BOS: "
                "OpenCompass's PPL rule (scoring: oc_ppl) is defined here only for tokenizers that add a BOS or "
                "nothing; score this model with the lm-eval suite (--suite lmeval)"
            )

    def fits(self, text: str) -> bool:
        """``PPLInferencer``'s test: ``tokenizer(text)`` (special tokens included) has at most ``max_length`` ids."""
        if self.max_length is None or len(text.encode("utf-8")) + 2 <= self.max_length:
            return True  # an id covers at least one byte: no need to tokenise
        return len(self.tokenizer(text)["input_ids"]) <= self.max_length

    def request(self, text: str) -> LoglikRequest:
        """The request scoring ids ``1..n-1`` of ``tokenizer(text)`` given id 0 (BOS or the first token)."""
        if not text:
            raise CfbenchError("OpenCompass PPL rule: a choice renders to an empty text; fix the task's templates")
        if self.adds_bos:
            return LoglikRequest("", text)
        head = self._first_token_text(text)
        return LoglikRequest(head, text[len(head) :])

    def _first_token_text(self, text: str) -> str:
        tok = self.tokenizer
        window = text[:_HEAD_WINDOW]
        try:
            enc = tok(window, add_special_tokens=False, return_offsets_mapping=True)
            end = int(enc["offset_mapping"][0][1])
        except (NotImplementedError, ValueError, KeyError, IndexError):  # slow tokenizer: decode the first id
            first = tok(window, add_special_tokens=False)["input_ids"][:1]
            decoded = tok.decode(first)
            end = len(decoded) if window.startswith(decoded) else 0
        head = text[:end]
        ok = (
            end > 0
            and head == head.rstrip()  # the backends move trailing whitespace of a context onto its continuation
            and len(tok(head, add_special_tokens=False)["input_ids"]) == 1
            and len(text) > end
        )
        if not ok:
            raise CfbenchError(
                f"OpenCompass PPL rule: the first token of {text[:30]!r}… cannot be cut off as text (it is part of a "
                "character, whitespace, or the whole text), so it cannot be left unscored as OpenCompass does for a "
                "tokenizer without BOS; score this task with a BOS tokenizer or with the lm-eval suite (--suite lmeval)"
            )
        return head


def load_oc_requests(
    model_path: Any, trust_remote_code: bool = False, max_length: int | None = None
) -> OCPPLRequests:
    """:class:`OCPPLRequests` for the tokenizer every backend loads from ``model_path``; ``max_length``
    is the backend's context length, OpenCompass's ``max_seq_len`` (None: never shorten prompts)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CfbenchError(
            f"OpenCompass PPL rule needs the model's tokenizer, which cannot be loaded from {model_path} ({exc}); "
            "score this checkpoint with the lm-eval suite (--suite lmeval)"
        ) from exc
    return OCPPLRequests(tok, max_length)


# ---- OpenCompass's MMLU summary (configs/summarizers/groups/mmlu.py) ----


def naive_subset_mean(values: Sequence[float], subsets: Sequence[Any]) -> float:
    """OpenCompass's ``naive_average``: the unweighted mean of per-subset means.

    Its ``mmlu`` row averages the 57 subject accuracies, so a 100-question subject weighs as much as
    a 1,534-question one (lm-eval's ``mmlu`` group instead weighs subjects by size).
    """
    if len(values) != len(subsets):
        raise ValueError(f"{len(values)} values for {len(subsets)} subsets")
    if not len(values):
        raise CfbenchError("no items to average: score at least one item per subset")
    sums: dict[Any, list[float]] = {}
    for v, s in zip(values, subsets, strict=True):
        sums.setdefault(s, []).append(float(v))
    return float(np.mean([np.mean(v) for v in sums.values()]))


def oc_group_means(
    values: Sequence[float], subsets: Sequence[Any], groups: Mapping[str, str]
) -> dict[str, float]:
    """``mmlu-stem``, ``mmlu-humanities``, ``mmlu-social-science``, ``mmlu-other``: naive means of the
    subjects in each group (cfbench's group names: stem, humanities, social_sciences, other)."""
    by_group: dict[str, tuple[list[float], list[Any]]] = {}
    for v, s in zip(values, subsets, strict=True):
        g = groups.get(str(s))
        if g is None:
            continue
        vs, ss = by_group.setdefault(g, ([], []))
        vs.append(float(v))
        ss.append(s)
    return {g: naive_subset_mean(vs, ss) for g, (vs, ss) in by_group.items()}


AGGREGATES: dict[str, Callable[[Sequence[float], Sequence[Any]], float]] = {
    "mean": lambda values, _subsets: float(np.mean(values)),
    "subset_mean": naive_subset_mean,
}
"""How a task's items become its score: ``mean`` over items (lm-eval) or ``subset_mean`` (OpenCompass MMLU)."""
