"""Importers (layer 3): lm-eval and OpenCompass results into the results store.

May import store, tasks, models and the core; never the engine.

Bring scores from other harnesses into the results store.

``import_lmeval`` reads lm-eval's ``results_*.json`` (plus ``samples_*.jsonl`` for item rows);
``import_opencompass`` reads OpenCompass's summary CSV. Imported runs are tagged with their
``source`` so reports never mistake them for cfbench's own numbers.
"""

from __future__ import annotations

from pathlib import Path

from cfbench.errors import CfbenchError
from cfbench.importers._common import ImportResult
from cfbench.importers.lmeval import LMEVAL_TASKS, import_lmeval
from cfbench.importers.opencompass import OPENCOMPASS_DATASETS, import_opencompass, is_opencompass_csv
from cfbench.store.store import ResultStore

FORMATS = ("auto", "lm-eval", "opencompass")


def detect_format(path: str | Path) -> str:
    """``lm-eval`` for a results JSON or a folder holding one, ``opencompass`` for a summary CSV."""
    p = Path(path)
    if not p.exists():
        raise CfbenchError(f"{p} does not exist: pass an lm-eval results_*.json or an OpenCompass summary CSV")
    if p.is_dir() or p.suffix.lower() == ".json":
        return "lm-eval"
    if p.suffix.lower() == ".csv" or is_opencompass_csv(p):
        return "opencompass"
    raise CfbenchError(f"can't tell the format of {p}: pass --from lm-eval or --from opencompass")


def import_file(path: str | Path, store: ResultStore, name: str | None = None, fmt: str = "auto") -> ImportResult:
    """Import ``path`` in format ``fmt`` (``auto`` detects it from the file)."""
    if fmt not in FORMATS:
        raise CfbenchError(f"unknown import format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "lm-eval":
        return import_lmeval(path, name, store)
    return import_opencompass(path, store, name=name)


__all__ = [
    "FORMATS",
    "LMEVAL_TASKS",
    "OPENCOMPASS_DATASETS",
    "ImportResult",
    "detect_format",
    "import_file",
    "import_lmeval",
    "import_opencompass",
]
