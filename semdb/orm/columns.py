"""A declared vector column resolved against its table: what search and sync work with.

>>> target = vector_column(Doc.embedding)        # ORM attribute
>>> target = vector_column(docs.c.embedding)     # Core column
>>> target.sources, target.key, target.model_column, target.document()

Everything is SQLAlchemy Core expressions, so that names (even hostile ones) are quoted by
SQLAlchemy and never pasted into SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement

from semdb.errors import DeclarationError
from semdb.orm.declaration import EmbeddingSpec, spec_of
from semdb.orm.distance import Distance
from semdb.orm.document import (
    content_hash_sql,
    document_sql,
    fulltext_document_sql,
    regconfig_sql,
)
from semdb.orm.indexes import index_storage, indexed_expression
from semdb.orm.types import VectorType

_TEXT_TYPES = (sa.String, sa.Text, sa.Unicode, sa.UnicodeText, sa.Enum)


@dataclass(frozen=True)
class VectorColumn:
    """A vector column, its declaration, its table, companions, sources and key."""

    column: sa.Column[Any]
    spec: EmbeddingSpec
    entity: type[Any] | None = None  # the ORM class, when resolved from one

    # -- where things are --------------------------------------------------------------------

    @property
    def table(self) -> sa.Table:
        table = self.column.table
        assert isinstance(table, sa.Table)
        return table

    @property
    def name(self) -> str:
        """``schema.table.column`` for messages."""
        return f"{self.table.fullname}.{self.column.name}"

    @property
    def model_column(self) -> sa.Column[Any]:
        return self._companion(self.spec.model_column_name(self.column.name))

    @property
    def hash_column(self) -> sa.Column[Any]:
        return self._companion(self.spec.hash_column_name(self.column.name))

    @property
    def sources(self) -> tuple[sa.Column[Any], ...]:
        missing = [s for s in self.spec.sources if s not in self.table.c]
        if missing:
            raise DeclarationError(
                f"{self.name} embeds {', '.join(missing)}, which {self.table.fullname} lacks",
                fix="declare the source columns in the same table, or correct their names",
            )
        return tuple(self.table.c[s] for s in self.spec.sources)

    @property
    def key(self) -> tuple[sa.Column[Any], ...]:
        key = tuple(self.table.primary_key.columns)
        if not key:
            raise DeclarationError(
                f"{self.table.fullname} has no primary key; semdb needs one to keep its "
                "vectors in sync",
                fix="add a primary key to the table",
            )
        return key

    def _companion(self, name: str) -> sa.Column[Any]:
        if name not in self.table.c:
            raise DeclarationError(
                f"{self.name} has no companion column {name!r}",
                fix="declare the column with semdb.embedding_column(...)",
            )
        return self.table.c[name]

    # -- SQL expressions ---------------------------------------------------------------------

    @property
    def distance(self) -> Distance:
        return self.spec.distance

    def document(self) -> ColumnElement[str]:
        """The text the vector is made from, as SQL (see :mod:`semdb.orm.document`)."""
        return document_sql(self.sources)

    def current_hash(self) -> ColumnElement[bytes]:
        """SHA-256 of the current document, as SQL."""
        return content_hash_sql(self.document())

    def fulltext_document(self) -> ColumnElement[Any]:
        """``to_tsvector(config, text)``, the same expression as the GIN index."""
        config = self.spec.fulltext or "english"
        return sa.func.to_tsvector(regconfig_sql(config), fulltext_document_sql(self.sources))

    def index_storage(self) -> str:
        """The storage the vector index works on (halfvec for a halfvec expression index)."""
        if self.spec.index is None:
            return self.spec.storage
        return index_storage(self.spec.index, self.spec.storage)

    def indexed(self) -> ColumnElement[Any]:
        """The expression the vector index covers (an ORDER BY must repeat it)."""
        if self.spec.index is None:
            return self.column
        return indexed_expression(self.column, self.spec.index, self.spec.storage, self.dimension)

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    def query_value(self, vector: Any, *, for_index: bool = True) -> sa.BindParameter[Any]:
        """A bound query vector, checked for the dimension, typed to bind in binary."""
        storage = self.index_storage() if for_index else self.spec.storage
        type_ = VectorType(self.dimension, storage)
        type_.label = f"the query vector for {self.name}"
        return sa.bindparam(None, vector, type_=type_)

    def index_distance(self, query: sa.BindParameter[Any]) -> ColumnElement[float]:
        """``indexed <op> query``: the operator form, which the vector index can serve."""
        return self.indexed().op(self.distance.operator, return_type=sa.Float)(query)

    def exact_distance(self, query: sa.BindParameter[Any]) -> ColumnElement[float]:
        """The same distance through the plain function: no index can serve it."""
        value: ColumnElement[float] = getattr(sa.func, self.distance.function)(
            self.column, query, type_=sa.Float
        )
        return -value if self.distance.exact_sql_sign < 0 else value


def vector_column(target: Any) -> VectorColumn:
    """Resolve ``Doc.embedding`` (ORM) or ``docs.c.embedding`` (Core) to a :class:`VectorColumn`."""
    if isinstance(target, VectorColumn):
        return target
    entity: type[Any] | None = None
    column: Any = target
    if isinstance(target, QueryableAttribute):
        entity = target.class_ if isinstance(target.class_, type) else None
        prop = target.property
        columns = getattr(prop, "columns", None)
        if not columns:
            raise DeclarationError(
                f"{target} is not a column attribute",
                fix="pass the vector column, e.g. Doc.embedding",
            )
        column = columns[0]
    if not isinstance(column, sa.Column):
        raise DeclarationError(
            f"expected a vector column declared with semdb.embedding_column, got {target!r}",
            fix="pass the mapped attribute (Doc.embedding) or the table column (docs.c.embedding)",
        )
    spec = spec_of(column)
    if spec is None:
        raise DeclarationError(
            f"{column.table.name}.{column.name} was not declared with semdb.embedding_column",
            fix="declare it with semdb.embedding_column(<sources>, model=...)",
        )
    return VectorColumn(column=column, spec=spec, entity=entity)


def check_sources_are_text(target: VectorColumn) -> None:
    """Source columns must hold text, so that Python and SQL compose the same document."""
    for column in target.sources:
        if not isinstance(column.type, _TEXT_TYPES):
            raise DeclarationError(
                f"{target.name} embeds {column.name}, a {column.type} column; semdb embeds text "
                "columns only",
                fix=f"embed a text column, e.g. a computed text column derived from {column.name}",
            )
