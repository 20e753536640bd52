"""``semdb backfill``: embed every row whose vector is missing or stale."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from semdb.cli.embedder import columns_option, default_model, load_embedder, model_option
from semdb.db import create_engine


@click.command()
@model_option
@columns_option
@click.option("--batch-size", default=256, show_default=True, help="Rows embedded per batch.")
def backfill(model: str | None, provider: str, columns: tuple[str, ...], batch_size: int) -> None:
    """Embed rows whose vector is missing or was made from other text or another model."""
    from semdb.sync.backfill import backfill as run_backfill
    from semdb.sync.registry import registered

    engine = create_engine()
    results = []
    try:
        embedder = load_embedder(model or default_model(engine, list(columns)), provider)
        with engine.connect() as connection:
            targets = registered(connection, names=list(columns) or None)
        if not columns:
            targets = [t for t in targets if t.accepts(embedder.model_name, embedder.model_version)]
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        ) as progress:
            for target in targets:
                task = progress.add_task(target.name, total=None, rate="")

                def total(n: int, task: TaskID = task) -> None:
                    progress.update(task, total=n)

                def advance(n: int, task: TaskID = task) -> None:
                    progress.advance(task, n)
                    elapsed = progress.tasks[task].elapsed or 0
                    done = progress.tasks[task].completed
                    progress.update(task, rate=f"{done / elapsed:.0f} rows/s" if elapsed else "")

                results.append(
                    run_backfill(
                        engine,
                        target,
                        embedder,
                        batch_size=batch_size,
                        on_total=total,
                        on_progress=advance,
                    )
                )
    finally:
        engine.dispose()
    table = Table(title="semdb backfill")
    failed = any(stats.failed for stats in results)  # a column of its own only then
    names = ("column", "stale", "embedded", "skipped", *(("failed",) if failed else ()))
    for name in (*names, "seconds", "rows/s"):
        table.add_column(name, justify="right" if name != "column" else "left")
    for stats in results:
        rate = stats.embedded / stats.seconds if stats.seconds else 0.0
        table.add_row(
            stats.column,
            str(stats.stale_at_start),
            str(stats.embedded),
            str(stats.skipped),
            *((str(stats.failed),) if failed else ()),
            f"{stats.seconds:.1f}",
            f"{rate:.1f}",
        )
    Console().print(table)
