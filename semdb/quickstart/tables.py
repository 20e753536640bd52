"""The quickstart's tables, in schema ``quickstart``, declared like any user's table.

Each holds text, columns worth filtering on, and an embedding column kept by semdb (model
and content-hash companions, an HNSW index, a full-text index for hybrid search). They are
built per model: the vector's dimension is the model's.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from semdb.errors import SemdbError
from semdb.orm import HNSW, VectorType, embedding_column

SCHEMA = "quickstart"
STDLIB_TABLE = "stdlib_docs"
_TABLE_NAME = re.compile(r"[^a-z0-9_]+")


def stdlib_docs_table(metadata: sa.MetaData, *, model: str, dimension: int) -> sa.Table:
    """``quickstart.stdlib_docs``: one row per documented module, class, function, method."""
    return sa.Table(
        STDLIB_TABLE,
        metadata,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("qualname", sa.Text, nullable=False, unique=True),
        sa.Column("module", sa.Text, nullable=False, index=True),
        sa.Column("kind", sa.Text, nullable=False, index=True),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        _embedding("qualname", "summary", model=model, dimension=dimension),
        schema=SCHEMA,
    )


def documents_table(metadata: sa.MetaData, name: str, *, model: str, dimension: int) -> sa.Table:
    """``quickstart.<name>``: the documents of a BEIR folder (id, title and text as one)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        _embedding("text", model=model, dimension=dimension),
        schema=SCHEMA,
    )


def _embedding(*sources: str, model: str, dimension: int) -> sa.Column[Any]:
    """The vector column: HNSW for cosine distance, a GIN full-text index for hybrid search,
    kept by the quickstart itself (``sync="manual"``: it runs :func:`semdb.backfill`)."""
    return embedding_column(
        *sources,
        model=model,
        dimension=dimension,
        index=HNSW(),
        sync="manual",
        fulltext="english",
        name="embedding",
    ).column


def table_name_for(folder_name: str) -> str:
    """A table name from a data folder's name: ``debdesc`` -> ``debdesc``, ``My Data`` ->
    ``my_data``. Never the stdlib table's name."""
    name = _TABLE_NAME.sub("_", folder_name.lower()).strip("_")[:50]
    if not name or name == STDLIB_TABLE:
        name = f"data_{name}" if name else "data"
    if name[0].isdigit():
        name = f"data_{name}"
    return name


def check_existing(connection: sa.Connection, table: sa.Table) -> bool:
    """Whether ``table`` exists already; an error when it holds vectors of another dimension."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(table.name, schema=table.schema):
        return False
    expected = table.c.embedding.type
    assert isinstance(expected, VectorType)
    rows = connection.execute(
        sa.text(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = :table "
            "AND a.attname = 'embedding' AND NOT a.attisdropped"
        ),
        {"schema": table.schema, "table": table.name},
    ).fetchall()
    found = rows[0][0] if rows else None
    wanted = f"vector({expected.dimension})"
    if found != wanted:
        raise SemdbError(
            f"{table.fullname} exists with an embedding column of type {found}, "
            f"but the model makes {wanted}",
            fix="run `semdb quickstart --reset` to rebuild the quickstart's tables "
            "(they hold only the quickstart's own data)",
        )
    return True
