"""Declaratively partitioned tables, as the catalog describes them.

PostgreSQL cannot build an index ``CONCURRENTLY`` on a partitioned table. semdb builds it
the documented way instead: ``CREATE INDEX CONCURRENTLY`` on each leaf partition (writes go
on), then a plain ``CREATE INDEX`` on each partitioned table, bottom up, which finds the
equivalent index on every partition and attaches it instead of building one (catalog work:
a brief SHARE lock, no build). The result is one valid partitioned index, which PostgreSQL
also clones onto partitions created later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

_MAX_NAME = 63

_TREE = """
SELECT n.nspname, c.relname, t.isleaf, t.level, c.relkind = 'p'
FROM pg_class AS root
JOIN pg_namespace AS rn ON rn.oid = root.relnamespace
CROSS JOIN LATERAL pg_partition_tree(root.oid) AS t
JOIN pg_class AS c ON c.oid = t.relid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE rn.nspname = %(schema)s AND root.relname = %(table)s AND root.relkind = 'p'
ORDER BY t.level DESC, n.nspname, c.relname
"""

_KEYS = """
SELECT c.relname, a.attname, k.attnum
FROM pg_class AS root
JOIN pg_namespace AS rn ON rn.oid = root.relnamespace
CROSS JOIN LATERAL pg_partition_tree(root.oid) AS t
JOIN pg_partitioned_table AS p ON p.partrelid = t.relid
JOIN pg_class AS c ON c.oid = p.partrelid
CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
LEFT JOIN pg_attribute AS a ON a.attrelid = p.partrelid AND a.attnum = k.attnum
WHERE rn.nspname = %(schema)s AND root.relname = %(table)s
"""


@dataclass(frozen=True)
class Partition:
    """One table of a partition tree (the root has level 0)."""

    schema: str
    name: str
    leaf: bool
    level: int
    partitioned: bool


def partition_tree(connection: Any, schema: str, table: str) -> list[Partition] | None:
    """The tables of ``schema.table``'s partition tree, deepest first (the root last), or
    None when it is not a partitioned table. ``connection``: SQLAlchemy or psycopg."""
    rows = _rows(connection, _TREE, {"schema": schema, "table": table})
    if not rows:
        return None
    return [Partition(str(r[0]), str(r[1]), bool(r[2]), int(r[3]), bool(r[4])) for r in rows]


def partition_key_columns(connection: Any, schema: str, table: str) -> tuple[set[str], bool]:
    """The columns every level of the partition tree is partitioned by, and whether some
    level partitions by an expression (whose columns are not listed)."""
    rows = _rows(connection, _KEYS, {"schema": schema, "table": table})
    columns = {str(r[1]) for r in rows if r[1] is not None}
    return columns, any(int(r[2]) == 0 for r in rows)


def partition_index_name(index: str, partition: str) -> str:
    """The name of ``index``'s index on one partition (63 bytes at most, unique by hash)."""
    name = f"{partition}_{index}"
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name.encode()[: _MAX_NAME - 9].decode(errors="ignore") + "_" + digest


def index_validity(connection: Any, schema: str, names: Sequence[str]) -> dict[str, bool]:
    """Which of these indexes exist in ``schema``, and whether each is valid."""
    rows = _rows(
        connection,
        "SELECT c.relname, x.indisvalid FROM pg_index AS x "
        "JOIN pg_class AS c ON c.oid = x.indexrelid "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(schema)s AND c.relname = ANY(%(names)s)",
        {"schema": schema, "names": list(names)},
    )
    return {str(r[0]): bool(r[1]) for r in rows}


def _rows(connection: Any, query: str, params: dict[str, Any]) -> list[Any]:
    if isinstance(connection, sa.Connection):  # the driver's own placeholders, as psycopg
        return list(connection.exec_driver_sql(query, params).all())
    return list(connection.execute(query, params).fetchall())


def is_partitioned_index(connection: Any, schema: str, name: str) -> bool:
    """Whether ``schema.name`` is the index of a partitioned table (it cannot be dropped
    ``CONCURRENTLY``; a plain DROP INDEX drops it with its partitions' indexes)."""
    rows = _rows(
        connection,
        "SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind = 'I'",
        {"schema": schema, "name": name},
    )
    return bool(rows)


def check_sync_key(connection: Any, schema: str, table: str, key: Sequence[str]) -> None:
    """On a partitioned table, the sync key (what the queue stores and the worker finds rows
    by) must hold every partition key column: the primary key of a partitioned table does
    (PostgreSQL requires it), and without them each lookup would search every partition."""
    columns, _expression = partition_key_columns(connection, schema, table)
    missing = sorted(columns - set(key))
    if missing:
        from semdb.errors import DeclarationError

        wanted = [*missing, *key]
        raise DeclarationError(
            f"{schema}.{table} is partitioned by {', '.join(sorted(columns))}, but the sync key "
            f"({', '.join(key)}) lacks the partition key column(s) {', '.join(missing)}",
            fix=f"use the table's primary key, which holds them: key={wanted!r}",
        )
