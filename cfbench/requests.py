"""The request and result types of lm-eval's three request types, shared by every layer.

They sit at the bottom of the package (layer 0) because tasks build requests, backends answer them
and the engine, probes and training code pass them around: none of those may depend on another
just to name a request. The backend protocol that answers them lives in :mod:`cfbench.backends.base`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoglikRequest:
    """Score ``log p(continuation | context)``."""

    context: str
    continuation: str


@dataclass(frozen=True, slots=True)
class LoglikResult:
    """Sum of continuation-token log-probs, whether each token was the argmax, and the token count."""

    logprob: float
    is_greedy: bool
    n_tokens: int


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """Greedy continuation of ``context``: at most ``max_gen_toks`` tokens, cut at the first of ``until``.

    lm-eval's ``generate_until`` request (``until`` and ``max_gen_toks`` of its ``gen_kwargs``;
    256 is its default ``max_gen_toks``). The EOS token always stops a generation as well.
    """

    context: str
    until: tuple[str, ...] = ()
    max_gen_toks: int = 256


@dataclass(frozen=True, slots=True)
class RollingRequest:
    """Score ``log p(text)`` from the first token on (the first token is conditioned on BOS/EOS)."""

    text: str


@dataclass(frozen=True, slots=True)
class RollingResult:
    """Sum of the log-probs of every token of the text, and how many tokens that is."""

    logprob: float
    n_tokens: int


ProgressFn = Callable[[int], None]


#: How far above 0 a summed log-prob may round, per token: a low-precision log-softmax (fp16/bf16, a
#: server's float32 JSON) can put a near-certain token a hair above 0. Anything more is no log-prob.
LOGPROB_TOLERANCE_PER_TOKEN = 1e-3


def impossible_logprob(logprob: float, n_tokens: int) -> str | None:
    """Why ``logprob`` (summed over ``n_tokens`` tokens) cannot be a log-probability, else None.

    Every backend's answer is checked with this before it is scored or stored: a NaN/inf means broken
    weights or numerics, and a value above 0 is a probability above 1 (a server that returns
    something else in its ``logprobs`` field, or a wrong sign). Either would be argmaxed into a silent
    wrong answer and cached for every rerun.
    """
    if not math.isfinite(logprob):
        return "not finite"
    if logprob > LOGPROB_TOLERANCE_PER_TOKEN * max(1, n_tokens):
        return "above 0, i.e. a probability above 1"
    return None
