"""Token-id prompts for engines that return per-prompt-token log-probs (vLLM, OpenAI-style servers).

Such engines score a whole prompt in one pass and report ``log p(token_j | tokens_<j)`` for every
position, so a request is answered by reading the continuation positions of *some* prompt that
starts with the request's tokens. Planning therefore:

* tokenises every request with :func:`cfbench.models.tokenize.encode_pair` (the ids every backend
  agrees on) and left-truncates to what the engine accepts;
* merges identical token sequences, and sequences that are a strict prefix of another one (a
  causal model gives the prefix the same log-probs inside the longer prompt);
* orders prompts lexicographically by token ids, so prompts sharing a context are adjacent, which
  is what lets an engine's prefix cache reuse the context's KV blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cfbench.errors import CfbenchError
from cfbench.models.tokenize import encode_pair
from cfbench.requests import LoglikRequest


@dataclass(frozen=True, slots=True)
class Span:
    """Request scored by positions ``start..end-1`` of prompt ``prompt`` (``targets`` are those ids)."""

    prompt: int
    start: int
    end: int


@dataclass
class PromptPlan:
    """Unique prompts in prefix-sharing order and, per request, where its continuation sits.

    ``spans[i]`` is ``None`` for an empty continuation (log-prob 0, greedy, 0 tokens).
    ``min_start[p]`` is the earliest scored position in prompt ``p``: an engine must have computed
    logits from position ``min_start[p] - 1`` on (prefix-cache hits must stop before it).
    ``served[p]`` counts the requests prompt ``p`` answers (for progress reporting).
    """

    prompts: list[list[int]]
    spans: list[Span | None]
    min_start: list[int]
    served: list[int]


def plan_prompts(tokenizer: Any, requests: Sequence[LoglikRequest], max_prompt_len: int) -> PromptPlan:
    """Tokenise, truncate to ``max_prompt_len`` tokens (keeping the end), merge and order prompts."""
    seqs: list[tuple[int, ...] | None] = []
    n_cont: list[int] = []
    for req in requests:
        ctx, cont = encode_pair(tokenizer, req.context, req.continuation)
        if not cont:
            seqs.append(None)
            n_cont.append(0)
            continue
        if len(cont) >= max_prompt_len:
            raise CfbenchError(
                f"a continuation of {len(cont)} tokens does not fit a prompt of at most {max_prompt_len} "
                "tokens: raise the backend's max_model_len / max_length or shorten the task's choices"
            )
        seqs.append(tuple((ctx + cont)[-max_prompt_len:]))
        n_cont.append(len(cont))

    unique = sorted({s for s in seqs if s is not None})
    # In lexicographic order a sequence that is a prefix of any later one is a prefix of the next one,
    # so walking backwards finds the longest prompt that contains each sequence.
    carrier = list(range(len(unique)))
    for i in range(len(unique) - 2, -1, -1):
        nxt = unique[i + 1]
        if len(unique[i]) < len(nxt) and nxt[: len(unique[i])] == unique[i]:
            carrier[i] = carrier[i + 1]
    prompt_of: dict[int, int] = {}
    prompts: list[list[int]] = []
    for c in carrier:
        if c not in prompt_of:
            prompt_of[c] = len(prompts)
            prompts.append(list(unique[c]))
    index = {s: prompt_of[carrier[i]] for i, s in enumerate(unique)}

    spans: list[Span | None] = []
    min_start = [len(p) for p in prompts]
    served = [0] * len(prompts)
    for seq, n in zip(seqs, n_cont, strict=True):
        if seq is None:
            spans.append(None)
            continue
        p = index[seq]
        span = Span(p, len(seq) - n, len(seq))
        spans.append(span)
        min_start[p] = min(min_start[p], span.start)
        served[p] += 1
    return PromptPlan(prompts, spans, min_start, served)
