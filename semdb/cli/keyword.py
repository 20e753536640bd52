"""``semdb keyword refresh``: fold deferred BM25 upkeep (see
:func:`semdb.sync.keyword_stats.refresh_keyword_stats`)."""

from __future__ import annotations

import click
import sqlalchemy as sa

from semdb.db import create_engine
from semdb.db.schema import bm25_stats, vector_columns
from semdb.errors import SemdbError


@click.group("keyword")
def keyword() -> None:
    """BM25 statistics of keyword-searchable columns."""


@keyword.command("refresh")
@click.option("--column", "name", help="TABLE.COLUMN (default: every keyword column).")
def refresh(name: str | None) -> None:
    """Fold the rows written since the last fold into the statistics and postings of
    deferred keyword columns (a column kept in the writer's statement has nothing to fold)."""
    from semdb.sync.keyword_stats import refresh_keyword_stats
    from semdb.sync.registry import find

    engine = create_engine()
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    vector_columns.c.table_schema,
                    vector_columns.c.table_name,
                    vector_columns.c.column_name,
                )
                .join(bm25_stats, bm25_stats.c.column_id == vector_columns.c.id)
                .order_by(vector_columns.c.id)
            ).all()
        if name is not None:
            parts = name.split(".")
            wanted = tuple((["public"] + parts)[-3:])
            rows = [row for row in rows if tuple(row) == wanted]
            if len(parts) not in (2, 3) or not rows:
                raise SemdbError(
                    f"{name} is not a keyword-searchable column",
                    fix="semdb.install_keyword_stats(connection, column, deferred=True) first",
                )
        for schema, table, column in rows:
            with engine.begin() as connection:
                target = find(connection, schema, table, column)
                if target is None:
                    continue
                folded = refresh_keyword_stats(connection, target)
            shown = f"{table}.{column}" if schema == "public" else f"{schema}.{table}.{column}"
            click.echo(f"{shown}: {'folded' if folded else 'nothing to fold'}")
    finally:
        engine.dispose()
