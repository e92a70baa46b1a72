"""cfbench: measure what an LLM forgot when it was fine-tuned, and fine-tune so it forgets less.

The library's face: the entry points a script imports, each a plain function (or the result store)::

    import cfbench
    run = cfbench.evaluate("smollm2-135m", suite="offline", limit=20)
    res = cfbench.compare("smollm2-135m", ["out/w_sam"], suite="offline")

They are loaded on first use (PEP 562), so ``import cfbench`` stays light: torch, transformers and
pandas are imported by the entry point that needs them. docs/api.md has a short script for each;
docs/architecture.md says where everything else lives.
"""

from __future__ import annotations

import importlib
from typing import Any

from cfbench._version import __version__

#: Entry point -> "module:attribute" it is loaded from.
_ENTRY_POINTS: dict[str, str] = {
    "evaluate": "cfbench.engine:evaluate",
    "compare": "cfbench.comparison:compare",
    "finetune": "cfbench.train.finetune:finetune",
    "pair": "cfbench.train.pair:pair",
    "merge": "cfbench.train.merge:merge",
    "landscape": "cfbench.analysis.run:landscape",
    "diff": "cfbench.analysis.run:diff_checkpoints",
    "ppl": "cfbench.probes.ppl:measure_ppl",
    "ResultStore": "cfbench.store:ResultStore",
}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str) -> Any:
    """Load an entry point on first access and keep it as a module attribute."""
    target = _ENTRY_POINTS.get(name)
    if target is None:
        raise AttributeError(f"module 'cfbench' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENTRY_POINTS))
