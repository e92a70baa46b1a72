"""lm-eval's ``loglikelihood_rolling`` windowing, shared by every backend so all cut the same windows.

A text's log-likelihood is ``sum_j log p(t_j | t_<j)`` over *all* its tokens. A model sees at most
``max_length`` tokens, so lm-eval (``HFLM.loglikelihood_rolling`` with
``lm_eval.utils.get_rolling_token_windows(..., context_len=1)`` and ``make_disjoint_window``)
scores a long text in windows:

* the text is encoded as ``HFLM.tok_encode`` does with its defaults: the tokenizer's own special
  tokens (``add_special_tokens`` left at the tokenizer default, so a tokenizer that adds BOS adds
  it here too), unless the text already starts with the prefix token's string;
* the first window predicts the first ``min(max_length, n)`` tokens from
  ``[prefix] + tokens[:max_length - 1]``, where the prefix is BOS when the tokenizer has one, else
  EOS (lm-eval's ``prefix_token_id``);
* every later window predicts the next ``max_length`` tokens (fewer for the last) from the
  ``max_length`` tokens just before each one, so each token is scored exactly once and with as
  much left context as fits (at least ``max_length - window`` tokens, never less than one);
* window sums are added up in window order.

With ``context_len=1`` a window's input is never longer than ``max_length``, so nothing is
truncated. The backends only score ``(input, targets)`` pairs; :func:`score_rolling` drives them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cfbench.backends.token_prompts import PromptPlan, Span
from cfbench.errors import CfbenchError
from cfbench.models.tokenize import prefix_token_id
from cfbench.requests import ProgressFn, RollingRequest, RollingResult

#: Window tokens per call of a backend's scorer: big enough to pack forwards, small enough that
#: progress moves and memory stays bounded.
CHUNK_TOKENS = 16384


@dataclass(frozen=True, slots=True)
class Window:
    """Score ``targets`` as the tokens following ``inp``'s last ``len(targets) - 1`` tokens.

    ``inp`` is what the model is fed (``len(inp) <= max_length``); its last ``len(targets)``
    positions predict ``targets``. ``doc`` is the index of the text the window belongs to.
    """

    doc: int
    inp: tuple[int, ...]
    targets: tuple[int, ...]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """``HFLM.tok_encode(text)`` with lm-eval's default ``add_bos_token=None``."""
    kwargs: dict[str, Any] = {}
    bos = tokenizer.decode(prefix_token_id(tokenizer))
    if bos and text.startswith(bos):  # lm-eval's has_bos_prefix: do not add a second one
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint ``(context, continuation)`` windows: ``get_rolling_token_windows`` with ``context_len=1``
    then ``make_disjoint_window``, exactly (``tests/test_rolling.py`` checks it against lm-eval's own).

    ``context + continuation`` is at most ``max_length + 1`` tokens; the continuations tile
    ``tokens`` in order. An empty ``tokens`` gives no window.
    """
    if max_length < 1:
        raise CfbenchError(f"max_length must be at least 1 for rolling windows, got {max_length}")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    out = [([prefix_token], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        size = min(len(tokens) - predicted, max_length)  # pred_len = max_length - context_len + 1
        end = predicted + size
        # lm-eval's window input is tokens[end - max_length - 1 : end - 1]; made disjoint, the context
        # is its first max_length - (size - 1) tokens, i.e. tokens[end - max_length - 1 : end - size].
        out.append((tokens[end - max_length - 1 : end - size], tokens[end - size : end]))
        predicted = end
    return out


def plan_windows(tokenizer: Any, requests: Sequence[RollingRequest], max_length: int) -> tuple[list[Window], list[int]]:
    """Every text's windows (text order, then window order) and each text's token count.

    An empty text, or one that encodes to no tokens, is refused: its log-likelihood is not a number
    of any token, and a perplexity over zero tokens is undefined.
    """
    prefix = prefix_token_id(tokenizer)
    windows: list[Window] = []
    counts: list[int] = []
    for i, req in enumerate(requests):
        if not isinstance(req.text, str) or not req.text:
            raise CfbenchError(f"rolling request {i} has an empty text: there is nothing to score; drop it")
        tokens = encode_text(tokenizer, req.text)
        if not tokens:
            raise CfbenchError(f"rolling request {i} encodes to no tokens: there is nothing to score; drop it")
        counts.append(len(tokens))
        for ctx, cont in rolling_windows(tokens, prefix, max_length):
            whole = (ctx + cont)[-(max_length + 1) :]  # lm-eval's _loglikelihood_tokens; never cuts here
            windows.append(Window(i, tuple(whole[:-1]), tuple(cont)))
    return windows, counts


def window_plan(windows: Sequence[Window]) -> PromptPlan:
    """Windows as prompts for engines that return per-prompt-token log-probs (vLLM, OpenAI servers).

    A window's prompt is its input plus its last target, and the scored span is the prompt's last
    ``len(targets)`` positions. Windows are not merged: two windows never share a whole prompt.
    """
    prompts, spans = [], []
    for i, w in enumerate(windows):
        prompt = [*w.inp, w.targets[-1]]
        prompts.append(prompt)
        spans.append(Span(i, len(prompt) - len(w.targets), len(prompt)))
    return PromptPlan(prompts, list(spans), [s.start for s in spans], [1] * len(windows))


def score_rolling(
    tokenizer: Any,
    requests: Sequence[RollingRequest],
    max_length: int,
    score_windows: Callable[[list[Window]], Sequence[float]],
    progress: ProgressFn | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> list[RollingResult]:
    """Cut every text into windows and add up what ``score_windows`` returns (one log-prob per window).

    Texts go to the backend a chunk at a time (whole texts, about ``chunk_tokens`` window tokens),
    and ``progress`` is told how many texts each chunk finished. Sums are exact (``math.fsum``)
    unless a window is not finite, which stays visible as NaN / -inf for the caller to refuse.
    """
    windows, counts = plan_windows(tokenizer, requests, max_length)
    per_doc: list[list[float]] = [[] for _ in requests]
    start = 0
    while start < len(windows):
        stop, size = start, 0
        while stop < len(windows) and (size < chunk_tokens or windows[stop].doc == windows[stop - 1].doc):
            size += len(windows[stop].inp)
            stop += 1
        chunk = windows[start:stop]
        values = list(score_windows(chunk))
        if len(values) != len(chunk):
            raise CfbenchError(f"a backend returned {len(values)} window scores for {len(chunk)} windows")
        for w, v in zip(chunk, values, strict=True):
            per_doc[w.doc].append(float(v))
        if progress:
            progress(len({w.doc for w in chunk}))
        start = stop
    return [
        RollingResult(math.fsum(v) if all(map(math.isfinite, v)) else sum(v), n)
        for v, n in zip(per_doc, counts, strict=True)
    ]
