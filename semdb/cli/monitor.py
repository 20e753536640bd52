"""``semdb monitor``: coverage, queue lag, index health, drift of every vector column."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table


@click.command()
@click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="[SCHEMA.]TABLE.COLUMN",
    help="Only these registered columns (repeatable). Default: all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--prometheus", is_flag=True, help="Print the report in Prometheus' text format.")
@click.option(
    "--watch",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Print the report again every SECONDS until Ctrl-C.",
)
@click.option(
    "--recall",
    "recall_queries",
    type=click.IntRange(0, 10_000),
    default=0,
    show_default=True,
    help="Measure the index's recall@k against exact search on N queries (logged queries, "
    "else stored rows). 0: skip (the fast report).",
)
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--ef-search",
    type=click.IntRange(1, 1000),
    default=None,
    help="The ef_search (probes) your searches use. Default: the database's setting, else 40.",
)
@click.option("--exact", is_flag=True, help="Count every row instead of sampling large tables.")
@click.option(
    "--snapshot",
    is_flag=True,
    help="Take a drift reference snapshot of the columns now (after activating or "
    "evaluating a model), then exit.",
)
def monitor(
    columns: tuple[str, ...],
    as_json: bool,
    prometheus: bool,
    watch: float | None,
    recall_queries: int,
    k: int,
    ef_search: int | None,
    exact: bool,
    snapshot: bool,
) -> None:
    """Report, per registered vector column: rows with a vector, missing, stale, made by
    another model; the queue, its lag and errors; the index and whether the planner uses
    it; recall of the index against exact search (--recall N); drift against the reference
    snapshot, with "retrain suggested" past the threshold.

    Read only: it never writes to your tables (--snapshot writes semdb.drift_snapshots).
    Figures marked ~ are estimates (catalog statistics, or a sample of a large table).
    """
    from semdb.db import create_engine
    from semdb.monitor import report as reporting

    console = Console()
    engine = create_engine()
    try:
        if snapshot:
            taken = reporting.snapshot(engine, columns=list(columns))
            for name, snapshot_id in taken.items():
                console.print(f"snapshot {snapshot_id} of {name} taken")
            return
        while True:
            report = reporting.monitor(
                engine,
                columns=list(columns),
                recall_queries=recall_queries,
                k=k,
                ef_search=ef_search,
                exact=exact,
            )
            if as_json:
                click.echo(json.dumps(report.as_dict(), indent=2, default=str))
            elif prometheus:
                from semdb.monitor.metrics import report_text

                click.echo(report_text(report), nl=False)
            else:
                if watch:
                    console.clear()
                render(console, report)
            if not watch:
                break
            time.sleep(watch)
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()


def _n(value: Any, estimated: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"
    return f"~{text}" if estimated else text


def _bytes(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size = int(size / 1024)
    return f"{size} TB"


def render(console: Console, report: Any) -> None:
    if report.message:
        console.print(report.message)
    for column in report.columns:
        table = Table(
            title=f"{column.name}  ({column.model}, {column.dimension}-d, "
            f"{column.distance}, sync {column.sync})",
            show_header=False,
            title_justify="left",
        )
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("note")
        cov, queue = column.coverage, column.queue
        if not column.table_exists:
            table.add_row("table", "missing", "registered, but the table was dropped")
        if cov is not None:
            est = cov.estimated
            note = f"sampled {cov.sampled_rows:,} rows" if est else "exact"
            table.add_row(
                "rows",
                _n(cov.rows, cov.rows_estimated and est),
                "pg_class.reltuples" if est else "exact",
            )
            table.add_row("with a vector", _n(cov.with_vector, est), note)
            table.add_row("missing", _n(cov.missing, est), "text, no vector yet")
            table.add_row("empty text", _n(cov.empty, est), "nothing to embed")
            table.add_row("stale", _n(cov.stale, est), "text changed since embedded")
            table.add_row("other model", _n(cov.other_model, est), f"not {column.model}")
        if queue is not None:
            oldest = "-" if queue.oldest_seconds is None else f"{queue.oldest_seconds:,.0f} s"
            table.add_row(
                "queued", _n(queue.depth), f"oldest {oldest}, {queue.retrying} waiting for a retry"
            )
            rate = "-" if queue.rate is None else f"{queue.rate:,.1f}/s"
            batch = "" if queue.batch_seconds is None else f", {queue.batch_seconds:.2f} s/batch"
            table.add_row(
                "embedded lately",
                rate,
                f"{_n(queue.embedded_recently)} rows in 5 min by "
                f"{_n(queue.workers_recently)} workers{batch}",
            )
            table.add_row(
                "errors (1 day)",
                _n(queue.failed_last_day),
                f"{queue.given_up} given up"
                + (
                    f"; top ({queue.top_error_count}x): {queue.top_error[:80]}"
                    if queue.top_error
                    else ""
                ),
            )
        index = column.index
        if index is None and column.table_exists:
            table.add_row("index", "none", "searches are exact (full scans)")
        elif index is not None:
            options = ", ".join(f"{k}={v}" for k, v in index.options.items())
            state = "usable" if index.usable else "NOT usable"
            table.add_row(
                "index",
                f"{index.method} {_bytes(index.size_bytes)}",
                f"{index.name} ({options or 'defaults'}), {state}",
            )
        if column.recall is not None:
            r = column.recall
            steps = ", ".join(f"{ef}: {v:.3f}" for ef, v in sorted(r.by_ef.items()))
            needed = "-" if r.ef_needed is None else str(r.ef_needed)
            table.add_row(
                f"recall@{r.k}",
                f"{r.recall:.3f}",
                f"{r.setting} {r.ef_search}, {r.queries} {r.source}; {steps}",
            )
            table.add_row(f"{r.setting} for 0.95", needed, "")
        if column.drift is not None:
            d = column.drift
            for side in (d.rows, d.queries):
                if side is None:
                    continue
                if side.psi is None:
                    table.add_row(f"drift ({side.what})", "-", side.note or "")
                else:
                    table.add_row(
                        f"drift ({side.what})",
                        f"PSI {side.psi:.3f}",
                        f"centroid shift {side.centroid_shift:.4f}, "
                        f"{side.probes} sampled, vs snapshot {d.taken_at}",
                    )
        elif column.drift_note:
            table.add_row("drift", "-", column.drift_note)
        if column.production_ndcg is not None:
            table.add_row(
                "nDCG@10 (production)",
                f"{column.production_ndcg:.3f}",
                f"{column.production_judged} logged searches with feedback",
            )
        console.print(table)
        for problem in column.problems:
            style = "bold red" if problem.startswith("retrain suggested") else "yellow"
            console.print(f"  ! {problem}", style=style, soft_wrap=True)
    console.print(
        f"workers connected: {report.workers_connected}; query log entries: "
        f"{_n(report.query_log_entries)}; {report.seconds:.2f} s",
        style="dim",
    )
