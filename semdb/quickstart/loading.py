"""Rows into a quickstart table so that running again changes nothing that did not change.

Rows are upserted by their natural key (``qualname``, a document's id): new rows are
inserted, changed rows updated (their vectors then become stale and are embedded again),
unchanged rows left alone, and rows that are gone from the source deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.sql.dml import ReturningInsert

_BATCH = 2000


@dataclass
class LoadCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return (
            f"{self.inserted:,} new, {self.updated:,} changed, {self.deleted:,} removed, "
            f"{self.unchanged:,} unchanged"
        )


def upsert_rows(
    connection: sa.Connection, table: sa.Table, key: str, rows: Sequence[dict[str, Any]]
) -> LoadCounts:
    """Make ``table`` hold exactly ``rows`` (by ``key``), touching only what differs."""
    counts = LoadCounts()
    if not rows:
        raise ValueError("no rows to load")
    columns = [name for name in rows[0] if name != key]
    new = insert(table)
    changed = sa.or_(*(table.c[name].is_distinct_from(new.excluded[name]) for name in columns))
    statement: ReturningInsert[Any] = new.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={name: new.excluded[name] for name in columns},
        where=changed,
    ).returning(sa.literal_column("xmax = 0").label("inserted"))
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        results = connection.execute(statement, list(batch)).fetchall()
        inserted = sum(1 for row in results if row.inserted)
        counts.inserted += inserted
        counts.updated += len(results) - inserted
        counts.unchanged += len(batch) - len(results)
    keys = [row[key] for row in rows]
    deleted = connection.execute(
        sa.delete(table).where(
            table.c[key] != sa.func.all(sa.bindparam("keys", keys, type_=ARRAY(sa.Text)))
        )
    )
    counts.deleted = deleted.rowcount or 0
    return counts
