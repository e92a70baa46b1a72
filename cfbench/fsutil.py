"""Temp folders that a killed process leaves behind are found and removed, not kept forever.

Atomic saves write into a hidden sibling temp folder and rename it into place; ``kill -9`` (or an
out-of-memory kill) between the two leaves the temp folder, which for a float32 checkpoint is
hundreds of MB. Temp names carry the writer's pid (``.NAME.tmp-pidN-XXXX``, ``.tmp-NAME-pidN-XXXX``,
the store's ``.tmp-pidN-XXXX.partial``), so a later writer can tell a temp whose writer is gone
(removed) from one that another live process is still writing (kept).

A later save may go to another folder than the killed one, so each temp folder is also listed in a
small ledger under the cfbench cache (``writers/``) while it exists: any later atomic save sweeps the
ledger and removes the temps of writers that are gone, wherever they are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from cfbench.errors import CfbenchError

#: Temp folders without a recognisable pid (older cfbench) count as stale after this long.
STALE_UNKNOWN_S = 3600.0
_PID = re.compile(r"-pid(\d+)-")
#: Any cfbench temp name: hidden, a ``tmp-`` marker, then the writer's pid (the last ``pidN-`` wins).
_TMP_NAME = re.compile(r"^\..*tmp-(?:.*-)?pid(\d+)-")
_LEDGER = "writers"


def default_cache_dir() -> Path:
    """``$CFBENCH_CACHE`` or ``~/.cache/cfbench``: where conversions, the hash cache and the writers ledger live."""
    env = os.environ.get("CFBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cfbench"


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


def tmp_writer_pid(name: str) -> int | None:
    """The pid of the process that made the cfbench temp called ``name``; None if it is not one."""
    m = _TMP_NAME.match(name)
    return int(m.group(1)) if m else None


def _dead_writer(pid: int | None) -> bool:
    return pid is not None and pid != os.getpid() and not _alive(pid)


def _remove(path: Path) -> bool:
    """Delete a temp file or folder (a symlink itself, never what it points to)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:  # gone meanwhile, or not ours to delete
        return False
    return True


def dead_tmp(parent: Path) -> list[Path]:
    """The cfbench temps directly in ``parent`` whose writer process is gone (any target name)."""
    if not parent.is_dir():
        return []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    return [parent / n for n in names if n.startswith(".") and _dead_writer(tmp_writer_pid(n))]


def remove_dead_tmp(parent: Path) -> list[Path]:
    """Delete what :func:`dead_tmp` finds in ``parent``; returns what was removed."""
    return [p for p in dead_tmp(parent) if _remove(p)]


def _ledger() -> Path:
    return default_cache_dir() / _LEDGER


@contextlib.contextmanager
def tracked_tmp(tmp: Path) -> Iterator[None]:
    """List ``tmp`` in the writers ledger while the block runs (best effort: an unwritable cache is no error)."""
    entry = _ledger() / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(str(Path(tmp).absolute()))
    except OSError:
        entry = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if entry is not None:
            with contextlib.suppress(OSError):
                entry.unlink()


def sweep_dead_writers() -> list[Path]:
    """Remove the temps of every ledger entry whose writer is gone, wherever they are; returns them.

    An entry names only a path whose own name is a cfbench temp of that same pid, so a ledger
    edited by hand cannot make cfbench delete anything else.
    """
    removed: list[Path] = []
    try:
        entries = sorted(_ledger().iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name.split("-", 1)[0]
        if not pid.isdigit() or not _dead_writer(int(pid)):
            continue
        try:
            tmp = Path(entry.read_text().strip())
        except OSError:
            continue
        if tmp.is_absolute() and tmp_writer_pid(tmp.name) == int(pid) and _remove(tmp):
            removed.append(tmp)
        with contextlib.suppress(OSError):
            entry.unlink()
    return removed


def clean_dead_writers(parent: Path) -> list[Path]:
    """Before an atomic save into ``parent``: remove dead writers' temps there and wherever the ledger knows of."""
    return remove_dead_tmp(parent) + sweep_dead_writers()


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent: where a folder that does not exist yet would be created."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_bytes(n: float) -> str:
    """``538.2 MB``: sizes in messages."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # unreachable


def _probe_write(folder: Path, target: Path, flag: str) -> None:
    """Create and delete a file in ``folder``: the only test that sees a read-only mount, ACLs and quotas alike."""
    if not folder.is_dir():
        raise CfbenchError(f"{flag} {target}: {folder} is a file, not a folder; choose another {flag}")
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=tmp_prefix(".tmp-probe-"))
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise CfbenchError(
            f"{flag} {target}: cannot write in {folder} ({exc.strerror or exc}); fix its permissions or choose "
            f"another {flag} (nothing was done)"
        ) from None


def check_room(targets: Sequence[Path], need_each: int, flag: str) -> None:
    """Refuse, before any training, merging or scoring, output folders that cannot be written or lack space.

    Each of ``targets`` (created later if missing) must be writable where it would be created, and
    each file system must have ``need_each`` bytes free per target on it, plus 5 %: finding out after
    minutes of work loses it all, and a half-written checkpoint is worse than none.
    """
    by_device: dict[int, tuple[Path, Path, int]] = {}
    for target in targets:
        where = _existing_ancestor(target)
        _probe_write(where, Path(target), flag)
        dev = where.stat().st_dev
        first, _, total = by_device.get(dev, (Path(target), where, 0))
        by_device[dev] = (first, where, total + need_each)
    for first, where, total in by_device.values():
        need = int(total * 1.05)
        free = shutil.disk_usage(where).free
        if need and free < need:
            raise CfbenchError(
                f"{flag} {first}: needs about {human_bytes(need)} free but {where} has {human_bytes(free)} left; free "
                f"space there or choose another {flag} (nothing was done)"
            )


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
