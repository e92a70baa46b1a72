"""What a command-line argument names: a stored run or a checkpoint — one explicit rule.

``compare`` and ``regress`` accept both stored runs (by name or id) and checkpoints (folders, files,
built-in names, hub ids ``org/name``). A bare argument that could mean either is an error that names
both meanings, never a silent guess: guessing "checkpoint" once re-scored a whole suite for a user
who meant the run they had just stored under that name. The prefixes pick one meaning explicitly:

* ``run:NAME`` — the stored run NAME (or run id / unique id prefix);
* ``ckpt:SPEC`` — the checkpoint SPEC (also: any path written with ``./`` or ``/``);
* ``paper:NAME`` — the paper's published run NAME (cfbench.comparison.paper), whichever ``--results`` store is
  in use: those runs live in cfbench's own read-only store, never in the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cfbench.comparison.paper import find_paper_run, paper_store
from cfbench.errors import CfbenchError
from cfbench.models.checkpoint import BUILTIN_MODELS, HUB_ID
from cfbench.store import ResultStore, RunRecord

RUN_PREFIX = "run:"
CKPT_PREFIX = "ckpt:"
PAPER_PREFIX = "paper:"


@dataclass(frozen=True)
class Ref:
    """The resolved meaning of one argument."""

    kind: Literal["run", "checkpoint"]
    spec: str  # the argument without its prefix
    record: RunRecord | None = None  # for kind == "run"
    store: ResultStore | None = None  # where the run's scores are, when not the user's store (paper:)


def checkpoint_meaning(spec: str) -> str | None:
    """Why ``spec`` can be read as a checkpoint ("the built-in checkpoint", "the folder ./x", ...), else None."""
    if spec in BUILTIN_MODELS:
        return f"the built-in checkpoint {spec!r}"
    path = Path(spec).expanduser()
    if path.exists():
        return f"the {'folder' if path.is_dir() else 'file'} {path}"
    if HUB_ID.match(spec):
        return f"the Hugging Face hub checkpoint {spec!r}"
    return None


def resolve_ref(spec: str, store: ResultStore) -> Ref:
    """Apply the rule in the module docstring; every refusal is one line naming the way out."""
    if spec.startswith(RUN_PREFIX):
        name = spec[len(RUN_PREFIX) :]
        return Ref("run", name, store.find_run(name))
    if spec.startswith(PAPER_PREFIX):
        name = spec[len(PAPER_PREFIX) :]
        return Ref("run", name, find_paper_run(name), paper_store())
    if spec.startswith(CKPT_PREFIX):
        return Ref("checkpoint", spec[len(CKPT_PREFIX) :])
    explicit_path = spec.startswith(("./", "../", "/", "~"))
    as_ckpt = checkpoint_meaning(spec)
    as_run = None if explicit_path else store.match_run(spec)
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
        store.find_run(spec)  # raises with its "did you mean" hint: match_run found nothing
    except CfbenchError as exc:
        raise CfbenchError(
            f"{spec!r} is neither a stored run nor a checkpoint (folder, .gguf or state-dict file, built-in name, "
            f"hub id org/name): {exc}"
        ) from exc
    raise AssertionError(f"find_run({spec!r}) found a run that match_run did not")  # one matching rule for both
