"""The request and result types of lm-eval's three request types, shared by every layer.

They sit at the bottom of the package (layer 0) because tasks build requests, backends answer them
and the engine, probes and training code pass them around: none of those may depend on another
just to name a request. The backend protocol that answers them lives in :mod:`cfbench.backends.base`.
"""

from __future__ import annotations

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
