"""Writing vectors back, and settling queue entries.

A vector is written only if the row's text is still the text that was embedded (its content
hash is compared in the UPDATE itself): if the application changed the row meanwhile, the
write is skipped and the entry stays queued, so the new text is embedded next. Entries are
deleted in the same transaction as the vectors they produced.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from semdb.orm.types import WireVector
from semdb.sync.target import SyncTarget, ident


@dataclass(frozen=True)
class VectorWrite:
    """One row's new vector (None for an empty text), for the text whose hash is given."""

    key_values: tuple[Any, ...]
    vector: bytes | None  # pgvector wire format
    content_hash: bytes


def write_statement(target: SyncTarget) -> sql.Composed:
    keys = sql.SQL(" AND ").join(
        sql.SQL("t.{} = {}").format(ident(name), sql.Placeholder()) for name in target.key_columns
    )
    return sql.SQL(
        "UPDATE {table} AS t SET {vector} = {cast}, {model} = {model_value}, {hash} = {hash_value} "
        "WHERE {keys} AND {current_hash} = {expected} RETURNING true"
    ).format(
        table=target.table_ref,
        vector=ident(target.column_name),
        cast=target.vector_cast_sql(),
        model=ident(target.model_column),
        model_value=sql.Placeholder(),
        hash=ident(target.hash_column),
        hash_value=sql.Placeholder(),
        keys=keys,
        current_hash=target.hash_sql("t"),
        expected=sql.Placeholder(),
    )


def write_vectors(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    writes: Sequence[VectorWrite],
    model: str,
) -> list[bool]:
    """Write the vectors (one pipelined round of UPDATEs); True where the row was written."""
    if not writes:
        return []
    parameters = [
        (
            WireVector(w.vector) if w.vector is not None else None,
            model,
            w.content_hash,
            *w.key_values,
            w.content_hash,
        )
        for w in writes
    ]
    written: list[bool] = []
    with connection.cursor() as cursor:
        cursor.executemany(write_statement(target), parameters, returning=True)
        while True:
            written.append(cursor.fetchone() is not None)
            if not cursor.nextset():
                break
    return written


# Errors that say the table itself changed (a column or the table dropped, a type gone):
# not one row's fault, so they are raised for the caller to leave the column, never
# recorded against a row.
SCHEMA_CHANGED: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedObject,
    psycopg.errors.UndefinedColumn,
)


W = TypeVar("W")
#: Writes a batch in the caller's transaction; True where a row was written (False: its
#: text changed meanwhile). :func:`write_vectors`, or a chunked column's
#: :func:`semdb.sync.chunking.write_rows`.
BatchWriter = Callable[[psycopg.Connection[Any], SyncTarget, Sequence[W], str], list[bool]]


def write_isolated(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    writes: Sequence[W],
    model: str,
    *,
    write: BatchWriter[Any] = write_vectors,
) -> tuple[list[bool], dict[int, str]]:
    """Write the batch with ``write`` in a savepoint; if that fails, write the rows one by
    one, each in a savepoint of its own, so that a row whose write fails (a check
    constraint, a trigger of the user's, a lock timeout, a deadlock) fails alone. Every
    writer (unchunked and chunked columns; the worker and backfill) goes through here.

    Returns ``(written, failed)``: ``written[i]`` as :func:`write_vectors` (False for a row
    that failed too), ``failed`` the error of each failed write by its index in ``writes``.
    A lost connection and a changed table are raised.
    """
    try:
        with connection.transaction():
            return write(connection, target, writes, model), {}
    except psycopg.Error as exc:
        if connection.broken or connection.closed or isinstance(exc, SCHEMA_CHANGED):
            raise
        if len(writes) == 1:
            return [False], {0: _describe(exc)}
    written: list[bool] = []
    failed: dict[int, str] = {}
    for index, one in enumerate(writes):
        try:
            with connection.transaction():
                written.extend(write(connection, target, [one], model))
        except psycopg.Error as exc:
            if connection.broken or connection.closed or isinstance(exc, SCHEMA_CHANGED):
                raise
            written.append(False)
            failed[index] = _describe(exc)
    return written, failed


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def finish(connection: psycopg.Connection[Any], queue_ids: Sequence[int]) -> None:
    """Delete settled queue entries."""
    if queue_ids:
        connection.execute("DELETE FROM semdb.queue WHERE id = ANY(%s)", (list(queue_ids),))


def record_write_errors(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    errors: Sequence[tuple[Sequence[Any], str]],
    *,
    worker: str,
) -> None:
    """Record rows ``(key_values, error)`` whose vector could not be written outside the
    queue (backfill): nothing retries them but a later run, so they are recorded given up."""
    for key_values, error in errors:
        key = json.dumps(dict(zip(target.key_columns, key_values, strict=True)), default=str)
        connection.execute(
            "INSERT INTO semdb.errors (column_id, key, error, attempt, worker, gave_up) "
            "VALUES (%s, %s::jsonb, %s, 1, %s, true)",
            (target.id, key, error[:4000], worker),
        )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def record_failures(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    failures: Sequence[tuple[int, int, dict[str, Any], str]],
    *,
    max_attempts: int,
    backoff_seconds: float,
    backoff_cap_seconds: float,
) -> int:
    """Record failed entries ``(queue_id, attempts_before, key, error)``: retry later with
    exponential backoff, or give up after ``max_attempts`` (the entry leaves the queue).

    Returns how many were given up.
    """
    from psycopg.types.json import Jsonb

    given_up = 0
    name = worker_name()
    for queue_id, attempts_before, key, error in failures:
        attempt = attempts_before + 1
        gave_up = attempt >= max_attempts
        connection.execute(
            "INSERT INTO semdb.errors (column_id, key, error, attempt, worker, gave_up) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (target.id, Jsonb(key), error[:4000], attempt, name, gave_up),
        )
        if gave_up:
            given_up += 1
            connection.execute("DELETE FROM semdb.queue WHERE id = %s", (queue_id,))
        else:
            delay = min(backoff_seconds * 2 ** (attempt - 1), backoff_cap_seconds)
            connection.execute(
                "UPDATE semdb.queue SET attempts = %s, last_error = %s, "
                "not_before = now() + make_interval(secs => %s) WHERE id = %s",
                (attempt, error[:4000], delay, queue_id),
            )
    return given_up
