"""The ``cfbench`` command (layer 8): parse, call one library function, print.

May import anything; holds no library work, and imports torch-heavy modules inside commands for fast start-up.

The ``cfbench`` command: a thin typer layer over the library API.

Each area registers its commands from its own module (``register(app)``), so the CLI file stays
small and every command lives next to the code it drives. The convention every command follows:

* a command parses its arguments, calls one library function and prints what it returns;
* commands that print results take ``--format``: ``table`` (for people, the default), ``json`` (strict,
  no NaN) and ``csv`` (tidy rows with a header) mean the same everywhere (:mod:`cfbench.cli.output`);
* commands that read or write the results store take ``--results`` (:data:`cfbench.cli.common.Results`);
* when stderr is not a terminal, third-party progress bars are silenced once, here
  (:func:`cfbench.progress.quiet_library_bars`), and cfbench's own progress lines remain.
"""

from __future__ import annotations

import importlib
import sys

import typer

from cfbench.cli.interrupt import interrupt_note
from cfbench.errors import CfbenchError
from cfbench.progress import quiet_library_bars

app = typer.Typer(
    name="cfbench",
    help="Measure what a fine-tuned LLM forgot (paper-style Δ table), and fine-tune with SAM to forget less.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    """Eager option callback: runs while options are parsed, so ``--version`` works without a command.

    A check inside the root callback body never runs: ``no_args_is_help`` / "Missing command" fires first.
    """
    if value:
        from cfbench._version import __version__

        typer.echo(f"cfbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the cfbench version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """cfbench: what did fine-tuning make my model forget?"""
    quiet_library_bars()  # before any command imports transformers/datasets: logs get cfbench's lines only


# Modules that define ``register(app)``; order is the order shown in --help.
COMMAND_MODULES: list[str] = [
    "cfbench.cli.tasks_cmd",
    "cfbench.cli.eval_cmd",
    "cfbench.cli.compare_cmd",
    "cfbench.cli.sweep_cmd",
    "cfbench.cli.ppl_cmd",
    "cfbench.cli.train_cmds",
    "cfbench.cli.demo_cmd",
    "cfbench.cli.store_cmds",
    "cfbench.cli.analysis_cmds",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as typer and shells use it.
INTERRUPTED = 130


def main() -> None:
    """Entry point: user errors become one ``error:`` line and exit code 2."""
    try:
        app()
    except CfbenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if exc.code == INTERRUPTED and _from_ctrl_c(exc):
            typer.echo(interrupt_note(sys.argv[1:]), err=True)
        raise


def _from_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` (typer's exit 130) was caused by a KeyboardInterrupt, anywhere in its chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
