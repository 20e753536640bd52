"""Writing vectors back, and settling queue entries.

A vector is written only if the row's text is still the text that was embedded (its content
hash is compared in the UPDATE itself): if the application changed the row meanwhile, the
write is skipped and the entry stays queued, so the new text is embedded next. Entries are
deleted in the same transaction as the vectors they produced.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def finish(connection: psycopg.Connection[Any], queue_ids: Sequence[int]) -> None:
    """Delete settled queue entries."""
    if queue_ids:
        connection.execute("DELETE FROM semdb.queue WHERE id = ANY(%s)", (list(queue_ids),))


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
