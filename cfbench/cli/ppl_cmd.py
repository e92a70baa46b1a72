"""``cfbench ppl``: held-out perplexity of one checkpoint (the library is :mod:`cfbench.probes.ppl`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cfbench.cli.common import Backend, BaseArch, Dtype, ModelArgs, Results, parse_model_args
from cfbench.cli.output import Format, OutputFormat, emit, to_csv, to_json

PplData = Annotated[
    str,
    typer.Option(
        "--data",
        help="Held-out text: lambada, squad, a .txt/.jsonl file, a folder of .txt files, or hf:NAME[:CONFIG[:SPLIT]].",
    ),
]
PplLimit = Annotated[int | None, typer.Option("--limit", help="Score only the first N documents of the text.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")]


def ppl_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint (folder, .gguf, hub id, built-in name).")],
    data: PplData = "lambada",
    limit: PplLimit = None,
    backend: Backend = "hf",
    model_args: ModelArgs = None,
    dtype: Dtype = "float32",
    arch: BaseArch = None,
    results: Results = Path("results"),
    as_json: AsJson = False,
    fmt: Format = OutputFormat.table,
) -> None:
    """Held-out perplexity: nats/token (token-weighted over documents), ppl, docs, tokens; cached per document."""
    from cfbench.probes.ppl import measure_ppl

    res = measure_ppl(
        checkpoint,
        data=data,
        limit=limit,
        backend=backend,
        backend_options=parse_model_args(model_args, dtype),
        base=arch,
        results=results,
        progress="auto",
    )
    print_ppl(res, OutputFormat.json if as_json else fmt)  # --json is --format json, kept for scripts


def print_ppl(res: Any, fmt: OutputFormat) -> None:
    """One checkpoint's perplexity as a table, a JSON object or one CSV row; the cache note on stderr."""
    if fmt is OutputFormat.json:
        emit(to_json(res.to_dict()))
    elif fmt is OutputFormat.csv:
        emit(to_csv([res.to_dict()]))
    else:
        head = ("checkpoint", "data", "nats/token", "ppl", "bits/byte", "docs", "tokens")
        typer.echo("{:<24} {:<10} {:>10} {:>9} {:>9} {:>6} {:>9}".format(*head))
        typer.echo(
            f"{res.checkpoint:<24} {res.source:<10} {res.nats_per_token:>10.4f} {res.perplexity:>9.3f} "
            f"{res.bits_per_byte:>9.4f} {res.n_docs:>6} {res.total_tokens:>9}"
        )
    cached = res.n_docs - res.scored_now
    Console(stderr=True).print(f"[dim]{res.scored_now} documents scored now, {cached} served from the store[/dim]")


def register(app: typer.Typer) -> None:
    """Add ``ppl`` to the cfbench app."""
    app.command("ppl")(ppl_cmd)
