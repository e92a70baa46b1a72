"""Atomic output folders and manifests shared by finetune, pair and merge.

A checkpoint folder is either complete or absent: everything is written into a hidden sibling temp
folder and renamed into place, so an interrupted or failed run never leaves a folder that a later
``cfbench eval`` would trust.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cfbench._version import __version__
from cfbench.errors import CfbenchError
from cfbench.fsutil import clean_dead_writers, remove_stale_tmp, tmp_prefix, tracked_tmp
from cfbench.models.checkpoint import MANIFEST as MANIFEST  # re-exported: finetune / merge write it


def check_output_dir(out: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Fail before any work when ``out`` exists and may not be replaced."""
    if out.exists() and not out.is_dir():
        raise CfbenchError(f"output {out} exists and is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CfbenchError(f"output folder {out} already exists and is not empty: choose another --out or pass {flag}")


@contextmanager
def atomic_dir(out: Path, carry: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temp folder next to ``out``; on success it replaces ``out``, on error it is deleted.

    ``carry``: children of the old ``out`` moved into the new one just before the swap (the
    ``step-N/`` snapshots ``finetune --save-every`` wrote while training), so replacing the final
    weights keeps them; on error they stay where they were.
    """
    out = Path(out)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_writers(out.parent)  # left by saves that were killed mid-write, into any --out
    remove_stale_tmp(out.parent, f".{out.name}.tmp-")  # an older cfbench's temp (no pid): by age
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=tmp_prefix(f".{out.name}.tmp-")))
    tmp.chmod(0o755)
    try:
        with tracked_tmp(tmp):
            yield tmp
            for name in carry:
                if (out / name).exists() and not (tmp / name).exists():
                    os.rename(out / name, tmp / name)
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(out, old)
            os.rename(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, written to a temp file and renamed (readers never see half a file)."""
    tmp = path.with_name(f"{tmp_prefix(f'.{path.name}.tmp-')}{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def environment() -> dict[str, str]:
    """Versions that change training numbers, recorded in every manifest."""
    import torch
    import transformers


    return {
        "cfbench": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
