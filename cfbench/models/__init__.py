"""Checkpoints (layer 1): any model spec to a local HF folder and a content hash, plus lm-eval tokenisation.

May import the core only (and tasks/data of its own layer).

Checkpoint resolution: any user-facing model spec → a local HF folder plus a content hash."""

from __future__ import annotations

from cfbench.models.checkpoint import (
    ACCEPTED_FORMS,
    BUILTIN_MODELS,
    KINDS,
    ResolvedCheckpoint,
    default_cache_dir,
    load_state_dict_file,
    resolve_checkpoint,
)

__all__ = [
    "ACCEPTED_FORMS",
    "BUILTIN_MODELS",
    "KINDS",
    "ResolvedCheckpoint",
    "default_cache_dir",
    "load_state_dict_file",
    "resolve_checkpoint",
]
