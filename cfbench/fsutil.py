"""Temp folders that a killed process leaves behind are found and removed, not kept forever.

Atomic saves write into a hidden sibling temp folder and rename it into place; ``kill -9`` (or an
out-of-memory kill) between the two leaves the temp folder, which for a float32 checkpoint is
hundreds of MB. Temp names carry the writer's pid, so a later save of the same target can tell a
folder whose writer is gone (removed) from one that another live process is still writing (kept).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

#: Temp folders without a recognisable pid (older cfbench) count as stale after this long.
STALE_UNKNOWN_S = 3600.0
_PID = re.compile(r"-pid(\d+)-")


def tmp_prefix(prefix: str) -> str:
    """``prefix`` + this process's pid marker, for ``tempfile.mkdtemp(prefix=...)``."""
    return f"{prefix}pid{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp(parent: Path, prefix: str) -> list[Path]:
    """Delete ``parent/prefix*`` folders whose writer process is dead (or, with no pid, that are old)."""
    removed = []
    if not parent.is_dir():
        return removed
    now = time.time()
    for tmp in parent.glob(f"{prefix}*"):
        if not tmp.is_dir():
            continue
        m = _PID.search(tmp.name[len(prefix) - 1 :])
        if m:
            stale = int(m.group(1)) != os.getpid() and not _alive(int(m.group(1)))
        else:
            try:
                stale = now - tmp.stat().st_mtime > STALE_UNKNOWN_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def escapes(rel: str) -> bool:
    """True when the relative path ``rel`` from a task YAML is absolute or climbs out of its folder.

    A task YAML may come from anyone (``CFBENCH_TASK_DIR``, a shared suite); were its ``data.local``
    paths taken as they are, ``../secret.jsonl`` or ``/etc/...`` would be read and scored (and its
    text shown in prompts). Lexical, so a symlink the data dir's owner put there still works.
    """
    if not rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return True
    norm = os.path.normpath(rel.replace("\\", "/"))
    return norm == ".." or norm.startswith("../") or norm.startswith("/")
