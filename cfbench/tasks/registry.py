"""Task and suite registry: YAML files under ``task_configs/`` (lm-eval style), found by name.

Lookup order for the config folder: ``$CFBENCH_TASK_DIR``, the repository's ``task_configs/``
next to the package (editable installs and checkouts), then a copy shipped inside the package.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from cfbench.data import DataSource
from cfbench.errors import CfbenchError
from cfbench.tasks.config import TaskConfig, load_task_config
from cfbench.tasks.task import Task


def task_dir() -> Path:
    """The folder of task YAMLs: ``$CFBENCH_TASK_DIR``, the checkout's ``task_configs/``, else the wheel's copy.

    ``cfbench/task_configs`` is a symlink to the top-level folder in the source tree and a real
    folder in the wheel (package data), so non-editable installs find the same tasks.
    """
    env = os.environ.get("CFBENCH_TASK_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parents[1] / "task_configs", here.parent / "task_configs"]
    for c in candidates:
        if c.is_dir():
            return c
    raise CfbenchError("task_configs/ not found; set CFBENCH_TASK_DIR to the folder holding the task YAMLs")


def task_names(root: Path | None = None) -> list[str]:
    root = root or task_dir()
    return sorted(p.stem for p in root.glob("*.yaml"))


@lru_cache(maxsize=256)
def _load_cached(path: Path, mtime_ns: int) -> TaskConfig:
    return load_task_config(path)


def get_task_config(name: str, root: Path | None = None) -> TaskConfig:
    root = root or task_dir()
    path = root / f"{name}.yaml"
    if not path.is_file():
        near = difflib.get_close_matches(name, task_names(root), n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "run `cfbench tasks` to list tasks"
        raise CfbenchError(f"unknown task {name!r}: {hint}")
    return _load_cached(path, path.stat().st_mtime_ns)


def get_task(name: str, sources: list[DataSource] | None = None, root: Path | None = None) -> Task:
    return Task(get_task_config(name, root), sources)


@dataclass(frozen=True)
class Suite:
    """Tasks grouped into the paper's categories; ``extras`` are reported but not in AVG."""

    name: str
    title: str
    categories: dict[str, list[str]]
    extras: list[str] = field(default_factory=list)
    source_file: str = ""
    #: The suite whose task lists judge this one's coverage (``reference:`` in the YAML): a suite that
    #: reuses the paper's category names with fewer tasks is partial against it, never complete.
    reference: str = "paper"
    #: Per-task few-shot counts (``fewshot: {task: n}`` in the YAML), e.g. the paper's 5-shot MMLU. They
    #: override the task YAML's ``num_fewshot``; ``--num-fewshot`` overrides both (see :meth:`shots`).
    fewshot: dict[str, int] = field(default_factory=dict)

    def shots(self, task: str, task_default: int, override: int | None = None) -> int:
        """Few-shot count of ``task``: ``--num-fewshot`` if given, else this suite's entry, else the task's own."""
        if override is not None:
            return override
        return self.fewshot.get(task, task_default)

    @property
    def tasks(self) -> list[str]:
        return [t for ts in self.categories.values() for t in ts] + list(self.extras)

    def category_of(self, task: str) -> str:
        for cat, ts in self.categories.items():
            if task in ts:
                return cat
        return "Extra" if task in self.extras else "-"

    def suite_hash(self, root: Path | None = None) -> str:
        """Hash of the category map and of every member task's config hash."""
        payload = {
            "categories": self.categories,
            "extras": self.extras,
            **({"fewshot": self.fewshot} if self.fewshot else {}),  # absent: older suites keep their hash
            "tasks": {t: get_task_config(t, root).config_hash for t in self.tasks},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def suite_names(root: Path | None = None) -> list[str]:
    root = root or task_dir()
    return sorted(p.stem for p in (root / "suites").glob("*.yaml"))


def load_suite(name: str, root: Path | None = None) -> Suite:
    root = root or task_dir()
    path = root / "suites" / f"{name}.yaml"
    if not path.is_file():
        raise CfbenchError(f"unknown suite {name!r}: choose one of {', '.join(suite_names(root)) or '(none)'}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CfbenchError(f"suite {path}: malformed YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("categories"), dict):
        raise CfbenchError(f"suite {path}: needs a 'categories' mapping of category -> [tasks]")
    cats = {str(k): list(v) for k, v in raw["categories"].items()}
    suite = Suite(
        raw.get("suite", name),
        raw.get("title", name),
        cats,
        list(raw.get("extras", [])),
        str(path),
        str(raw.get("reference", "paper")),
        _suite_fewshot(path, raw.get("fewshot")),
    )
    if suite.reference != suite.name and not (root / "suites" / f"{suite.reference}.yaml").is_file():
        raise CfbenchError(f"suite {path}: reference suite {suite.reference!r} does not exist; name an existing suite")
    for t in suite.tasks:
        get_task_config(t, root)  # unknown or malformed member -> one clear error now
    for t, n in suite.fewshot.items():
        if t not in suite.tasks:
            raise CfbenchError(f"suite {path}: fewshot names {t!r}, which is not in the suite; list only its tasks")
        if n and not get_task_config(t, root).fewshot_split:
            raise CfbenchError(f"suite {path}: fewshot {t}: {n} needs a fewshot_split in {t}.yaml; add one or use 0")
    return suite


def _suite_fewshot(path: Path, raw: Any) -> dict[str, int]:
    """Validate a suite's ``fewshot:`` mapping (task -> non-negative integer)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CfbenchError(f"suite {path}: fewshot must be a mapping of task -> number of shots, e.g. {{mmlu: 5}}")
    out: dict[str, int] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CfbenchError(f"suite {path}: fewshot {k}: {v!r} is not a non-negative integer number of shots")
        out[str(k)] = v
    return out


def resolve_task_names(suite: str | None, tasks: str | list[str] | None, root: Path | None = None) -> list[str]:
    """``--tasks a,b`` wins over ``--suite``; every name is validated."""
    if tasks is not None:
        names = [p.strip() for t in ([tasks] if isinstance(tasks, str) else tasks) for p in t.split(",") if p.strip()]
        if not names:
            raise CfbenchError(f"--tasks {tasks!r} names no task: pass e.g. --tasks copa,boolq, or leave it out")
        for n in names:
            get_task_config(n, root)
        return names
    return load_suite(suite or "paper", root).tasks


#: The metric a task is ranked by when the registry does not know it (an imported extra task).
DEFAULT_METRIC = "acc"


def primary_metric(task: str, overrides: Mapping[str, str] | None = None) -> str:
    """The metric a task is ranked by: ``overrides``, else its task config's, else ``acc``.

    One definition for every layer (leaderboard, compare, drift), so a task is ranked by the same
    metric wherever it appears.
    """
    if overrides and task in overrides:
        return overrides[task]
    try:
        return str(get_task_config(task).primary_metric)
    except CfbenchError:
        return DEFAULT_METRIC
