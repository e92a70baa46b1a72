"""Ctrl-C: one line that says what was kept and how to resume, then exit 130.

Typer turns a KeyboardInterrupt into a bare exit 130, which leaves a user wondering whether an hour
of scoring is lost. Little is: the engine stores items in chunks as they are scored, ``ppl`` each
batch of documents, ``pair`` each finished run, and checkpoints are written whole or not at all.
This module says which of these applies to the command that was interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Commands that score into the results store, resumably.
SCORING = frozenset({"eval", "compare", "regress", "ppl", "landscape", "demo", "diff"})
#: Commands made of several finished-and-reused runs.
RUNS = frozenset({"pair"})
#: Commands that write one folder atomically.
ATOMIC = frozenset({"finetune", "merge", "import", "compact"})


def _flag(argv: Sequence[str], name: str) -> str | None:
    """The value of ``name`` in ``argv`` (``--x V`` or ``--x=V``), else None."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def interrupt_note(argv: Sequence[str]) -> str:
    """The line printed after Ctrl-C for the command line ``argv`` (without the program name)."""
    cmd = next((a for a in argv if a in SCORING | RUNS | ATOMIC | {"store", "runs", "leaderboard", "tasks"}), "")
    results = _flag(argv, "--results") or "results"
    out = _flag(argv, "--out")
    rerun = "rerun the same command to resume"
    if cmd in SCORING:
        return (f"interrupted: what was scored and stored (in chunks, as it finished) is kept in the results store "
                f"{results}; {rerun} (stored items are reused, not scored again)")  # fmt: skip
    if cmd in RUNS:
        return (f"interrupted: the runs that finished are kept under {out or 'the --out folder'}; {rerun} "
                "(finished runs are reused, not trained again)")  # fmt: skip
    if cmd in ATOMIC:
        where = out or (results if cmd in ("import", "compact") else "the output")
        return (f"interrupted: {where} was left as it was (cfbench writes it whole or not at all); rerun the same "
                "command to do it again")  # fmt: skip
    return "interrupted: nothing was written; rerun the command"
