"""``semdb backfill``: embed every row whose vector is missing or stale, at the embedder's speed.

A row is stale when its stored content hash differs from the hash of its current text, its
vector was made by another model version (``name@version``), or its vector is missing although
it has text. Rows are read in primary
key order (keyset pagination, no OFFSET), embedded in batches and written with the same
hash-checked UPDATE as the worker, one short transaction per batch: the application keeps
writing meanwhile, and an interrupted backfill resumes where it stopped when run again. A row
whose vector cannot be written (a check constraint, a trigger of the application's, a lock
timeout) is left as it is, counted in ``failed`` and recorded in ``semdb.errors``; the other
rows are written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from semdb.db.url import libpq_uri
from semdb.errors import DimensionMismatchError, SyncError
from semdb.orm.types import encode_matrix
from semdb.protocols import TextEmbedder, model_tag
from semdb.sync.registration import TargetChanged, hold_registration
from semdb.sync.registry import bind_model_version, registered_target, version_refusal
from semdb.sync.target import SyncTarget, ident
from semdb.sync.write import (
    BatchWriter,
    VectorWrite,
    record_write_errors,
    worker_name,
    write_isolated,
    write_vectors,
)


@dataclass
class BackfillStats:
    column: str
    stale_at_start: int = 0
    embedded: int = 0
    skipped: int = 0  # changed meanwhile (the worker or a later run takes them)
    failed: int = 0  # writing the vector failed (recorded in semdb.errors; a later run retries)
    seconds: float = 0.0
    embed_seconds: float = 0.0


def stale_condition(target: SyncTarget) -> sql.Composed:
    """Made by another model, from another text, or missing although there is text (for a
    chunked column: or its chunks are)."""
    if target.chunking is not None:
        from semdb.sync.chunking import missing_chunks_sql

        return sql.SQL("({} OR {})").format(_stale(target), missing_chunks_sql(target))
    return _stale(target)


def _stale(target: SyncTarget) -> sql.Composed:
    return sql.SQL(
        "(t.{model} IS DISTINCT FROM %(model)s OR t.{hash} IS DISTINCT FROM {current}"
        " OR (t.{vector} IS NULL AND {document} <> ''))"
    ).format(
        model=ident(target.model_column),
        hash=ident(target.hash_column),
        current=target.hash_sql("t"),
        vector=ident(target.column_name),
        document=target.document_sql("t"),
    )


def count_stale(connection: psycopg.Connection[Any], target: SyncTarget, model: str) -> int:
    statement = sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
        target.table_ref, stale_condition(target)
    )
    row = connection.execute(statement, {"model": model}).fetchone()
    return int(row[0]) if row else 0


def _page_statement(target: SyncTarget, first: bool) -> sql.Composed:
    keys = [ident("t", name) for name in target.key_columns]
    key_list = sql.SQL(", ").join(keys)
    after: sql.Composable = sql.SQL("")
    if not first:
        placeholders = sql.SQL(", ").join(
            sql.Placeholder(f"k{i}") for i in range(len(target.key_columns))
        )
        after = sql.SQL(" AND ({}) > ({})").format(key_list, placeholders)
    return sql.SQL(
        "SELECT {keys}, {document}, {hash} FROM {table} AS t WHERE {stale}{after} "
        "ORDER BY {keys} LIMIT %(limit)s"
    ).format(
        keys=key_list,
        document=target.document_sql("t"),
        hash=target.hash_sql("t"),
        table=target.table_ref,
        stale=stale_condition(target),
        after=after,
    )


def backfill(
    engine: sa.Engine,
    target: SyncTarget | Any,
    embedder: TextEmbedder,
    *,
    batch_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> BackfillStats:
    """Embed the missing and stale rows of ``target`` (a SyncTarget, ``Doc.embedding`` or
    ``docs.c.embedding``). ``on_total(n)`` is told the stale count first, ``on_progress(k)``
    after each batch (for a progress bar)."""
    if not isinstance(target, SyncTarget):
        default_schema = engine.dialect.default_schema_name or "public"
        declared = SyncTarget.from_column(target, default_schema=default_schema)
        with engine.connect() as connection:
            target = registered_target(connection, declared) or declared
    if batch_size < 1:
        raise SyncError(f"batch_size must be positive, got {batch_size}", fix="use 64-512")
    if target.id is not None and target.shadow_of is None:
        with engine.begin() as connection:  # one column, one model version
            target = bind_model_version(
                connection, target, embedder.model_name, embedder.model_version
            )
    if target.model == embedder.model_name and not target.accepts(
        embedder.model_name, embedder.model_version
    ):
        raise version_refusal(target, embedder.model_name, embedder.model_version, "backfill")
    if not target.accepts(embedder.model_name, embedder.model_version):
        raise SyncError(
            f"{target.name} is embedded with model {target.model_tag!r}, not "
            f"{model_tag(embedder)!r}",
            fix=f"load the model {target.model_tag!r}",
        )
    if target.dimension != embedder.dimension:
        raise DimensionMismatchError(
            f"{target.name} holds {target.dimension}-dimensional vectors; "
            f"{model_tag(embedder)} makes {embedder.dimension}",
            fix="declare the column with the model's dimension",
        )
    model = model_tag(embedder)
    stats = BackfillStats(column=target.name)
    started = time.perf_counter()
    try:
        _run(engine, target, embedder, model, batch_size, stats, on_progress, on_total)
    except psycopg.OperationalError as exc:
        if not _connection_lost(exc):
            raise
        raise SyncError(
            f"backfill of {target.name} lost its database connection after {stats.embedded} "
            f"rows ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}); the "
            "batch in hand was rolled back",
            fix="run it again: it resumes with the rows still missing or stale",
        ) from exc
    stats.seconds = time.perf_counter() - started
    return stats


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """A lost session (terminated, server gone), not a lock timeout or a cancel."""
    return not isinstance(exc, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled))


def _run(
    engine: sa.Engine,
    target: SyncTarget,
    embedder: TextEmbedder,
    model: str,
    batch_size: int,
    stats: BackfillStats,
    on_progress: Callable[[int], None] | None,
    on_total: Callable[[int], None] | None,
) -> None:
    uri = libpq_uri(engine.url)
    with psycopg.connect(
        uri, application_name=f"semdb backfill {worker_name()}"[:63]
    ) as connection:
        stats.stale_at_start = count_stale(connection, target, model)
        connection.commit()
        if on_total is not None:
            on_total(stats.stale_at_start)
        last: tuple[Any, ...] | None = None
        width = len(target.key_columns)
        while True:
            parameters: dict[str, Any] = {"model": model, "limit": batch_size}
            if last is not None:
                parameters.update({f"k{i}": value for i, value in enumerate(last)})
            with connection.transaction():
                try:
                    hold_registration(connection, target)
                except TargetChanged as exc:
                    raise SyncError(
                        f"backfill stopped: {exc.message}", fix="run semdb backfill again"
                    ) from exc
                rows = connection.execute(
                    _page_statement(target, last is None), parameters
                ).fetchall()
                if not rows:
                    break
                last = tuple(rows[-1][:width])
                texts = [(row[:width], row[width], bytes(row[width + 1])) for row in rows]
                refused_rows: list[tuple[tuple[Any, ...], str]] = []
                write: BatchWriter[Any] = write_vectors
                writes: Sequence[Any]
                embed_started = time.perf_counter()
                if target.chunking is not None:  # semdb.sync.chunking
                    from semdb.sync.chunking import prepare_page, write_rows

                    writes, refused_rows = prepare_page(connection, target, texts, embedder, model)
                    write = write_rows
                else:
                    writes = _vector_writes(target, texts, embedder)
                stats.embed_seconds += time.perf_counter() - embed_started
                written, refused = write_isolated(connection, target, writes, model, write=write)
                errors = refused_rows + [
                    (writes[i].key_values, f"writing the vector failed: {error}")
                    for i, error in refused.items()
                ]
                if errors and target.id is not None:
                    record_write_errors(
                        connection, target, errors, worker=f"backfill {worker_name()}"
                    )
            stats.failed += len(errors)
            stats.embedded += sum(written)
            stats.skipped += len(written) - sum(written) - len(refused)
            if on_progress is not None:
                on_progress(len(rows))


def _vector_writes(
    target: SyncTarget, texts: Sequence[tuple[Any, str, bytes]], embedder: TextEmbedder
) -> list[VectorWrite]:
    """One backfill page of an unchunked column embedded (an empty text: no vector)."""
    non_empty = [t for t in texts if t[1]]
    encoded: list[bytes] = []
    if non_empty:
        matrix = embedder.embed([t[1] for t in non_empty], kind="document")
        encoded = encode_matrix(
            matrix, dimension=target.dimension, storage=target.storage, where=target.name
        )
    vectors = iter(encoded)
    return [
        VectorWrite(tuple(keys), next(vectors) if document else None, digest)
        for keys, document, digest in texts
    ]
