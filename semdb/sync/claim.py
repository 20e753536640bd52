"""Claiming queued rows: ``FOR UPDATE SKIP LOCKED`` inside the worker's transaction.

One statement claims up to ``limit`` queue entries of one vector column and reads, for each,
the row's key, its document (the text to embed), the document's content hash, and whether
the stored vector is already fresh (same hash, same model). Entries another worker holds are
skipped, never waited for; if this worker dies, its transaction ends and its entries are
free again: nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from semdb.sync.target import SyncTarget, ident


@dataclass(frozen=True)
class Claimed:
    """One claimed queue entry and what the row holds now."""

    queue_id: int
    attempts: int
    key: dict[str, Any]  # as queued (JSON)
    key_values: tuple[Any, ...] | None  # typed, None when the row no longer exists
    document: str | None
    content_hash: bytes | None
    fresh: bool  # the stored vector was made from this text by this model

    @property
    def missing(self) -> bool:
        return self.key_values is None


def claim_statement(target: SyncTarget) -> sql.Composed:
    keys = [ident(name) for name in target.key_columns]
    join = sql.SQL(" AND ").join(sql.SQL("t.{0} = k.{0}").format(key) for key in keys)
    return sql.SQL(
        """
        WITH claimed AS (
            SELECT q.id, q.key, q.attempts FROM semdb.queue AS q
            WHERE q.column_id = %(column)s AND q.not_before <= now()
            ORDER BY q.id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        SELECT c.id, c.attempts, c.key, t.{first_key} IS NOT NULL AS found, {key_values},
               {document} AS document, {hash} AS content_hash,
               (t.{model} IS NOT DISTINCT FROM %(model)s
                AND t.{stored_hash} IS NOT DISTINCT FROM {hash}) AS fresh
        FROM claimed AS c
        LEFT JOIN LATERAL jsonb_populate_record(NULL::{table}, c.key) AS k ON true
        LEFT JOIN {table} AS t ON {join}
        ORDER BY c.id
        """
    ).format(
        first_key=keys[0],
        key_values=sql.SQL(", ").join(sql.SQL("t.{}").format(key) for key in keys),
        document=target.document_sql("t"),
        hash=target.hash_sql("t"),
        model=ident(target.model_column),
        stored_hash=ident(target.hash_column),
        table=target.table_ref,
        join=join,
    )


def claim(
    connection: psycopg.Connection[Any], target: SyncTarget, *, limit: int, model: str
) -> list[Claimed]:
    """Claim up to ``limit`` entries (the caller's transaction holds them until it ends)."""
    assert target.id is not None
    rows = connection.execute(
        claim_statement(target), {"column": target.id, "limit": limit, "model": model}
    ).fetchall()
    width = len(target.key_columns)
    claimed = []
    for row in rows:
        queue_id, attempts, key, found = row[0], row[1], row[2], row[3]
        key_values = tuple(row[4 : 4 + width]) if found else None
        document, content_hash, fresh = row[4 + width], row[5 + width], row[6 + width]
        claimed.append(
            Claimed(
                queue_id=queue_id,
                attempts=attempts,
                key=key,
                key_values=key_values,
                document=document if found else None,
                content_hash=bytes(content_hash) if content_hash is not None else None,
                fresh=bool(fresh) if found else False,
            )
        )
    return claimed
