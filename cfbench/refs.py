"""What a command-line argument names: a stored run or a checkpoint — one explicit rule.

``compare`` and ``regress`` accept both stored runs (by name or id) and checkpoints (folders, files,
built-in names, hub ids ``org/name``). A bare argument that could mean either is an error that names
both meanings, never a silent guess: guessing "checkpoint" once re-scored a whole suite for a user
who meant the run they had just stored under that name. The prefixes pick one meaning explicitly:

* ``run:NAME`` — the stored run NAME (or run id / unique id prefix);
* ``ckpt:SPEC`` — the checkpoint SPEC (also: any path written with ``./`` or ``/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cfbench.errors import CfbenchError
from cfbench.store import ResultStore, RunRecord

RUN_PREFIX = "run:"
CKPT_PREFIX = "ckpt:"
_HEX = re.compile(r"^[0-9a-f]{6,}$")


@dataclass(frozen=True)
class Ref:
    """The resolved meaning of one argument."""

    kind: Literal["run", "checkpoint"]
    spec: str  # the argument without its prefix
    record: RunRecord | None = None  # for kind == "run"


def checkpoint_meaning(spec: str) -> str | None:
    """Why ``spec`` can be read as a checkpoint ("the built-in checkpoint", "the folder ./x", ...), else None."""
    from cfbench.models.checkpoint import _HUB_ID, BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        return f"the built-in checkpoint {spec!r}"
    path = Path(spec).expanduser()
    if path.exists():
        return f"the {'folder' if path.is_dir() else 'file'} {path}"
    if _HUB_ID.match(spec):
        return f"the Hugging Face hub checkpoint {spec!r}"
    return None


def stored_run(store: ResultStore, spec: str) -> RunRecord | None:
    """The run named ``spec`` (latest of that name), with that id, or with that unique id prefix; else None."""
    runs = store.runs()
    if runs.empty:
        return None
    match = runs[runs["run_id"] == spec]
    if match.empty:
        match = runs[runs["name"] == spec]
    if match.empty and _HEX.match(spec):
        match = runs[runs["run_id"].str.startswith(spec)]
        if match["run_id"].nunique() > 1:
            raise CfbenchError(
                f"run id prefix {spec!r} matches {match['run_id'].nunique()} runs in {store.root}: give more characters"
            )
    if match.empty:
        return None
    return store.find_run(str(match.sort_values("created_at").iloc[-1]["run_id"]))


def resolve_ref(spec: str, store: ResultStore) -> Ref:
    """Apply the rule in the module docstring; every refusal is one line naming the way out."""
    if spec.startswith(RUN_PREFIX):
        name = spec[len(RUN_PREFIX) :]
        return Ref("run", name, store.find_run(name))
    if spec.startswith(CKPT_PREFIX):
        return Ref("checkpoint", spec[len(CKPT_PREFIX) :])
    explicit_path = spec.startswith(("./", "../", "/", "~"))
    as_ckpt = checkpoint_meaning(spec)
    as_run = None if explicit_path else stored_run(store, spec)
    if as_run is not None and as_ckpt is not None:
        raise CfbenchError(
            f"{spec!r} is ambiguous: it names the stored run {as_run.name!r} (id {as_run.run_id[:12]}, in "
            f"{store.root}) and {as_ckpt}; write run:{spec} for the stored run or ckpt:{spec} to score the checkpoint"
        )
    if as_run is not None:
        return Ref("run", spec, as_run)
    if as_ckpt is not None or explicit_path:
        return Ref("checkpoint", spec)
    try:
        record = store.find_run(spec)  # for its "did you mean" hint
    except CfbenchError as exc:
        raise CfbenchError(
            f"{spec!r} is neither a stored run nor a checkpoint (folder, .gguf or state-dict file, built-in name, "
            f"hub id org/name): {exc}"
        ) from exc
    return Ref("run", spec, record)
