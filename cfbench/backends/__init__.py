"""Scoring backends (layer 2): one module each (hf, vllm, openai + its pool) behind :class:`.base.Backend`.

May import tasks, data, models and the core only; a new backend is one file plus one line in ``BACKENDS``.

Scoring backends: one module each, all behind :class:`cfbench.backends.base.Backend`.

Backends are imported lazily so that ``cfbench`` works without the optional ``vllm`` package.
Every backend class is constructed as ``Cls(model_path, **options)`` where ``model_path`` is a
resolved Hugging Face folder (see :mod:`cfbench.models.checkpoint`).
"""

from __future__ import annotations

import importlib
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


def make_backend(name: str, model_path: str | Path, **options: Any) -> Backend:
    """Build backend ``name`` for the HF folder ``model_path``."""
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
    "make_backend",
]
