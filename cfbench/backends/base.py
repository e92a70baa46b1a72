"""The one protocol every scoring backend implements.

A backend turns log-likelihood requests into results; everything else (tasks, caching, reports)
is backend-agnostic. Tokenisation follows lm-eval's ``_encode_pair`` exactly so that numbers are
comparable with ``lm_eval --model hf``:

* trailing whitespace of ``context`` is moved to the front of ``continuation``;
* ``context + continuation`` is encoded once (no special tokens) and the continuation tokens are
  the ids after ``len(encode(context))``;
* an empty context is replaced by one prefix token (BOS if the tokenizer has one, else EOS), so
  the first continuation token is still scored.

Backends that can also score whole texts implement :class:`RollingBackend` (lm-eval's third request
type, ``loglikelihood_rolling``): the text is cut into lm-eval's disjoint windows of the model's
context length, each window conditioned on the tokens just before it, and the per-window sums are
added up. The windowing lives in :mod:`cfbench.backends.rolling` so every backend cuts the same
windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from cfbench.requests import (
    LoglikRequest,
    LoglikResult,
    ProgressFn,
    RollingRequest,
    RollingResult,
)


@runtime_checkable
class Backend(Protocol):
    """Scores log-likelihood requests for one loaded checkpoint."""

    name: str

    @classmethod
    def key_settings(cls, model_path: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Everything that changes the numbers for ``(model_path, options)``, without loading weights.

        The engine builds the result cache key from this *before* any model is loaded (a fully
        cached rerun loads nothing), so it may only probe cheap facts: package versions, config
        files, a server's ``/v1/models``. Must include ``backend`` and ``dtype`` (``"unknown"``
        where it cannot be known, never a guess).
        """
        ...

    def settings(self) -> dict[str, Any]:
        """This loaded backend's :meth:`key_settings`: what the results it returns were computed with."""
        ...

    def loglikelihood(
        self, requests: Sequence[LoglikRequest], progress: ProgressFn | None = None
    ) -> list[LoglikResult]:
        """Results in request order; ``progress(n)`` is called as ``n`` more requests finish."""
        ...

    def close(self) -> None:
        """Free the model (GPU memory, worker processes)."""
        ...


@runtime_checkable
class RollingBackend(Backend, Protocol):
    """A backend that also scores whole texts (held-out perplexity, ``cfbench ppl``).

    A separate protocol rather than a method of :class:`Backend`, so third-party backends that only
    score choices stay valid; ``cfbench ppl`` refuses a backend without it by name.
    """

    def loglikelihood_rolling(
        self, requests: Sequence[RollingRequest], progress: ProgressFn | None = None
    ) -> list[RollingResult]:
        """One result per text, in request order; an empty text is refused (it has no tokens to score).

        Must equal lm-eval's ``loglikelihood_rolling`` for the same model: windows of the backend's
        ``max_length`` built by :func:`cfbench.backends.rolling.rolling_windows`.
        ``progress(n)`` is called as ``n`` more texts finish.
        """
        ...
