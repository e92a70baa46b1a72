"""A scope within which a backend keeps its loaded base for the next checkpoint that shares it.

``compare`` and ``sweep`` score a base and several LoRA adapters of it one after another, each
through its own backend that is closed before the next one opens. Loading the base again for
every adapter is the slow part of scoring a short run (a 7B base takes longer to load than to score
a few hundred items). Inside :func:`reuse_loads` a backend hands what it loaded to this module when
it closes, and the next backend on the same base takes it back instead of loading it again (the hf
backend: :mod:`cfbench.backends.hf_load`). Outside a scope nothing is kept: a closed backend frees
its memory as before. At most one loaded base is held at a time, so memory never exceeds one model.

No heavy import here: the comparison layer opens scopes without pulling in torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Held(Protocol):
    """What a backend leaves here: something that can free itself."""

    def release(self) -> None: ...


_DEPTH = [0]  # open scopes (nested scopes share the outermost one's lifetime)
_HELD: dict[str, Held] = {}  # backend name -> its kept base


@contextmanager
def reuse_loads() -> Iterator[None]:
    """Within: backends keep their base between checkpoints; at the outermost exit it is freed."""
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1
        if _DEPTH[0] == 0:
            release_all()


def keep_for_process() -> None:
    """Open a scope that lasts as long as the process (a scoring worker: it ends with its pool)."""
    _DEPTH[0] += 1


def reusing() -> bool:
    """Whether a scope is open (a backend may keep what it loaded)."""
    return _DEPTH[0] > 0


def held(backend: str) -> Any:
    """The base ``backend`` kept, or None."""
    return _HELD.get(backend)


def hold(backend: str, obj: Held) -> None:
    """Keep ``obj`` for ``backend``, freeing what it kept before (one base at a time)."""
    old = _HELD.get(backend)
    if old is not None and old is not obj:
        drop(backend)
    _HELD[backend] = obj


def drop(backend: str) -> None:
    """Free what ``backend`` kept (before it loads another base, or when a load failed half-way)."""
    old = _HELD.pop(backend, None)
    if old is not None:
        old.release()


def release_all() -> None:
    for name in list(_HELD):
        drop(name)
