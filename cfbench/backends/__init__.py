"""Scoring backends (layer 2): one module each (hf, vllm, openai + its pool) behind :class:`.base.Backend`.

May import tasks, data, models and the core only; a new backend is one file plus one line in ``BACKENDS``.

Scoring backends: one module each, all behind :class:`cfbench.backends.base.Backend`.

Backends are imported lazily so that ``cfbench`` works without the optional ``vllm`` package.
Every backend class is constructed as ``Cls(model_path, **options)`` where ``model_path`` is a
resolved Hugging Face folder (see :mod:`cfbench.models.checkpoint`).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from cfbench.backends.base import Backend, RollingBackend
from cfbench.errors import CfbenchError
from cfbench.requests import LoglikRequest, LoglikResult, RollingRequest, RollingResult

BACKENDS: dict[str, str] = {
    "hf": "cfbench.backends.hf:HFBackend",
    "vllm": "cfbench.backends.vllm:VLLMBackend",
    "openai": "cfbench.backends.openai_pool:OpenAIPool",  # one server or several (load-balanced)
}


def backend_class(name: str) -> type:
    """Import the class registered as ``name``; a clear error names the extra to install."""
    if name not in BACKENDS:
        raise CfbenchError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise CfbenchError(
            f"backend {name!r} needs a missing package ({exc.name}): pip install 'cfbench[{name}]'"
        ) from exc


#: Options cfbench itself may hand any backend: ``--dtype``, a worker's ``device``, a batch size.
COMMON_OPTIONS = frozenset({"dtype", "device", "batch_size"})


def _own_options(cls: type) -> set[str]:
    """The keyword parameters of ``__init__`` along ``cls``'s MRO (an OpenAI pool takes its servers'
    options too), plus :data:`COMMON_OPTIONS`."""
    names = set(COMMON_OPTIONS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "model_path"):
                names.add(p.name)
    return names


def known_options(name: str) -> frozenset[str] | None:
    """The option names backend ``name`` takes, or None when it cannot tell.

    Its own (:func:`_own_options`) and what the class's optional ``extra_options()`` adds (vLLM: the
    engine arguments it passes on to ``vllm.LLM``; None when vLLM is not installed to ask).
    """
    cls = backend_class(name)
    names = _own_options(cls)
    extra = getattr(cls, "extra_options", None)
    if extra is not None:
        more = extra()
        if more is None:
            return None
        names |= set(more)
    return frozenset(names)


def check_backend_options(name: str, options: dict[str, Any]) -> None:
    """Refuse option keys backend ``name`` does not take (a typo such as ``batchsize=16`` was silently
    ignored and the run went ahead with the default), naming the keys it does take."""
    known = known_options(name)
    if known is None:
        return
    unknown = sorted(set(options) - known)
    if unknown:
        cls = backend_class(name)
        listed = ", ".join(sorted(_own_options(cls)))
        more = " or any engine argument of vllm.LLM" if hasattr(cls, "extra_options") else ""
        raise CfbenchError(
            f"--model-args {', '.join(unknown)}: not an option of the {name} backend; it takes {listed}{more}"
        )


def make_backend(name: str, model_path: str | Path, **options: Any) -> Backend:
    """Build backend ``name`` for the HF folder ``model_path`` (unknown option keys refused first)."""
    check_backend_options(name, options)
    return backend_class(name)(model_path, **options)


__all__ = [
    "BACKENDS",
    "Backend",
    "LoglikRequest",
    "LoglikResult",
    "RollingBackend",
    "RollingRequest",
    "RollingResult",
    "backend_class",
    "check_backend_options",
    "known_options",
    "make_backend",
]
