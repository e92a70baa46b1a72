"""``--data-dir`` / ``CFBENCH_DATA_DIR``: OpenCompass's ``data/`` layout, or files named after the task.

Looked for, in order, for split ``S`` of task ``T``:
1. the paths the task YAML lists under ``data.local.S`` (OpenCompass layout, e.g.
   ``SuperGLUE/AX-b/AX-b.jsonl``, ``race/test/middle.jsonl``), through the named adapter;
2. ``T/`` saved with ``datasets.save_to_disk`` (a DatasetDict with split ``S``, or a Dataset);
3. ``T/S.parquet``, ``T/S.jsonl``, ``T.parquet``, ``T.jsonl`` in the canonical (hub) schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cfbench.data.adapters import get_adapter
from cfbench.data.base import Located, Row
from cfbench.data.files import fingerprint_paths, inside, read_rows
from cfbench.errors import CfbenchError

if TYPE_CHECKING:
    from cfbench.tasks.config import LocalFile, TaskConfig


class DataDirSource:
    name = "data-dir"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def locate(self, cfg: TaskConfig, split: str) -> Located | None:
        for entry in cfg.data.local.get(split, []):
            hit = self._locate_listed(cfg, entry)
            if hit:
                return hit
        return self._locate_named(cfg, split)

    def _locate_listed(self, cfg: TaskConfig, entry: LocalFile) -> Located | None:
        what = f"task {cfg.task}"
        if "{subset}" in entry.path:
            subsets = cfg.subsets
            paths = [inside(self.root, entry.path.format(subset=s), what) for s in subsets]
            present = [(s, p) for s, p in zip(subsets, paths, strict=True) if p.exists()]
            if not present:
                return None
            where = str(self.root / entry.path) + f" ({len(present)}/{len(subsets)} subsets)"
        else:
            p = inside(self.root, entry.path, what)
            if not p.exists():
                return None
            present, where = [(None, p)], str(p)
        labels_file = inside(self.root, entry.labels_path, what) if entry.labels_path else None
        extra = [labels_file] if labels_file else []

        def load() -> list[Row]:
            rows: list[Row] = []
            for subset, p in present:
                part = read_rows(p, entry.format)
                if subset is not None and cfg.subset_field:
                    part = [{**r, cfg.subset_field: subset} for r in part]
                rows.extend(part)
            if labels_file:
                labels = [x.strip() for x in labels_file.read_text().splitlines() if x.strip()]
                if len(labels) != len(rows):
                    raise CfbenchError(
                        f"{labels_file} has {len(labels)} labels for {len(rows)} rows; "
                        "use the matching labels file"
                    )
                rows = [{**r, "label": lab} for r, lab in zip(rows, labels, strict=True)]
            if entry.adapter:
                fn = get_adapter(entry.adapter)
                rows = [fn(r) for r in rows]
            return rows

        fp = fingerprint_paths([p for _, p in present] + extra)
        return Located(self.name, where, f"data-dir:{fp}", load)

    def _locate_named(self, cfg: TaskConfig, split: str) -> Located | None:
        base = inside(self.root, cfg.task, f"task {cfg.task}")
        if (base / "dataset_dict.json").exists():
            splits = json.loads((base / "dataset_dict.json").read_text()).get("splits", [])
            if split in splits:
                return self._arrow(base, split, base / split)
            return None
        if (base / "state.json").exists():
            return self._arrow(base, split, base)
        for p, fmt in (
            (base / f"{split}.parquet", "parquet"),
            (base / f"{split}.jsonl", "jsonl"),
            (self.root / f"{cfg.task}.parquet", "parquet"),
            (self.root / f"{cfg.task}.jsonl", "jsonl"),
        ):
            if p.is_file():
                return Located(
                    self.name,
                    str(p),
                    f"data-dir:{fingerprint_paths([p])}",
                    lambda p=p, f=fmt: read_rows(p, f),
                )
        return None

    def _arrow(self, base: Path, split: str, folder: Path) -> Located:
        return Located(
            self.name,
            str(folder),
            f"data-dir:{fingerprint_paths([folder])}",
            lambda: read_rows(folder, "arrow_dir"),
        )
