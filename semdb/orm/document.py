"""The text a row's vector is made from, and its content hash: one rule in Python and SQL.

The document of a row is its source columns joined by a newline, NULLs skipped, exactly
``concat_ws(E'\\n', title, body)`` in PostgreSQL. Its content hash is SHA-256 of the UTF-8
bytes, exactly ``sha256(convert_to(concat_ws(...), 'UTF8'))``. Both sides must agree to the
byte: the hash stored next to a vector is how a worker or a backfill knows that the text did
not change since the vector was made (tests compare the two).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import UserDefinedType

SEPARATOR = "\n"


def document_text(values: Sequence[str | None]) -> str:
    """The source values joined as PostgreSQL's ``concat_ws(E'\\n', ...)`` joins them."""
    return SEPARATOR.join(value for value in values if value is not None)


def content_hash(document: str) -> bytes:
    """SHA-256 of the document's UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(document.encode("utf-8")).digest()


def document_sql(columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
    """``concat_ws(E'\\n', col, ...)`` for the given source columns."""
    return sa.func.concat_ws(sa.literal(SEPARATOR, sa.Text), *columns, type_=sa.Text)


def content_hash_sql(document: ColumnElement[str]) -> ColumnElement[bytes]:
    """``sha256(convert_to(document, 'UTF8'))``."""
    return sa.func.sha256(
        sa.func.convert_to(document, sa.literal("UTF8", sa.Text), type_=sa.LargeBinary),
        type_=sa.LargeBinary,
    )


def fulltext_document_sql(columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
    """``coalesce(a, '') || ' ' || coalesce(b, '')``: IMMUTABLE, so a GIN index can hold it.

    (``concat_ws`` is only STABLE, which PostgreSQL refuses in an index expression.)
    """
    # Constants are rendered inline (not bound) so that a query's expression matches the
    # index's expression exactly, as the planner requires.
    empty = sa.literal("", sa.Text, literal_execute=True)
    space = sa.literal(" ", sa.Text, literal_execute=True)
    parts = [sa.func.coalesce(column, empty, type_=sa.Text) for column in columns]
    expression: ColumnElement[str] = parts[0]
    for part in parts[1:]:
        expression = expression.op("||", return_type=sa.Text)(space)
        expression = expression.op("||", return_type=sa.Text)(part)
    return expression


def regconfig_sql(config: str) -> ColumnElement[Any]:
    """``'english'::regconfig`` rendered inline (an index expression needs a constant)."""
    return sa.cast(sa.literal(config, sa.Text, literal_execute=True), _Regconfig())


class _Regconfig(UserDefinedType[str]):
    """``regconfig``, renderable by any compiler (Alembic renders index expressions with a
    generic one, which knows no PostgreSQL-only types)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "REGCONFIG"
