"""``semdb worker``: keep queued vector columns in sync (run as many as you like, anywhere)."""

from __future__ import annotations

import logging
import time

import click
from rich.console import Console
from rich.table import Table

from semdb.cli.embedder import columns_option, default_model, load_embedder, model_option
from semdb.db import create_engine


@click.command()
@model_option
@columns_option
@click.option("--batch-size", default=128, show_default=True, help="Rows claimed per batch.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds to wait when idle.")
@click.option(
    "--max-attempts", default=5, show_default=True, help="Attempts before giving up on a row."
)
@click.option(
    "--lock-timeout",
    default=10.0,
    show_default=True,
    help="Seconds a vector write waits for a row the application keeps locked; then that row "
    "is retried later.",
)
@click.option(
    "--until-empty", is_flag=True, help="Stop when the queue is empty (else run until SIGTERM)."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on http://0.0.0.0:PORT/metrics (queue depth and lag, "
    "embedded rows, errors, batch latency).",
)
def worker(
    model: str | None,
    provider: str,
    columns: tuple[str, ...],
    batch_size: int,
    poll: float,
    max_attempts: int,
    lock_timeout: float,
    until_empty: bool,
    metrics_port: int | None,
) -> None:
    """Embed queued rows: claims with FOR UPDATE SKIP LOCKED, writes in bulk, retries failures.

    SIGTERM or Ctrl-C finishes the batch in hand, then exits.
    """
    from semdb.sync.worker import Worker, WorkerStats, install_signal_handlers

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    console = Console(stderr=True)
    engine = create_engine()
    try:
        embedder = load_embedder(model or default_model(engine, list(columns)), provider)
        runner = Worker(
            engine,
            embedder,
            columns=list(columns),
            batch_size=batch_size,
            poll_seconds=poll,
            max_attempts=max_attempts,
            lock_timeout_seconds=lock_timeout,
        )
        install_signal_handlers(runner)
        if metrics_port is not None:
            from semdb.monitor.metrics import WorkerMetrics

            metrics = WorkerMetrics(engine)
            server, _thread = metrics.serve(metrics_port)
            runner.observers.append(metrics)
            console.print(f"metrics on http://0.0.0.0:{server.server_port}/metrics")
        last_report = [time.monotonic()]

        def report(stats: WorkerStats) -> None:
            if time.monotonic() - last_report[0] >= 5:
                last_report[0] = time.monotonic()
                console.print(
                    f"embedded {stats.embedded}, skipped {stats.skipped}, failed {stats.failed}, "
                    f"batches {stats.batches}"
                )

        console.print(f"semdb worker: model {embedder!r}, batches of {batch_size}")
        stats = runner.run(until_empty=until_empty, on_batch=report)
    finally:
        engine.dispose()
    table = Table(title="semdb worker")
    for name in ("embedded", "skipped", "requeued", "failed", "given up", "seconds", "rows/s"):
        table.add_column(name, justify="right")
    rate = stats.embedded / stats.seconds if stats.seconds else 0.0
    table.add_row(
        str(stats.embedded),
        str(stats.skipped),
        str(stats.requeued),
        str(stats.failed),
        str(stats.given_up),
        f"{stats.seconds:.1f}",
        f"{rate:.1f}",
    )
    Console().print(table)
