"""A vector column as the sync machinery sees it: names only, from the ORM or the registry.

Workers on other hosts have no ORM models: they read :class:`SyncTarget` rows from
``semdb.vector_columns``, written by the migration that set the column up. Everything here
is plain data; SQL is composed from it with ``psycopg.sql`` (identifiers quoted, never
pasted).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from psycopg import sql

from semdb.errors import DeclarationError
from semdb.orm.columns import VectorColumn, check_sources_are_text, vector_column
from semdb.orm.distance import STORAGES, Distance


def ident(*names: str) -> sql.Identifier:
    """An identifier for a statement executed *with* parameters: psycopg reads every ``%`` in
    such a statement as a placeholder, quoted identifiers included, so ``%`` is doubled."""
    return sql.Identifier(*(name.replace("%", "%%") for name in names))


_TARGET_FIELDS = (
    "table_schema",
    "table_name",
    "column_name",
    "key_columns",
    "sources",
    "model",
    "dimension",
    "distance",
    "storage",
    "index_storage",
    "sync",
    "fulltext",
    "model_column",
    "hash_column",
)
# Read with a default (a registry row written before migration 0007 has no such column).
_OPTIONAL_FIELDS = ("chunking",)


@dataclass(frozen=True)
class SyncTarget:
    """One vector column: where it is, what it is made from, how it is kept."""

    table_schema: str
    table_name: str
    column_name: str
    key_columns: tuple[str, ...]
    sources: tuple[str, ...]
    model: str
    dimension: int
    distance: str = "cosine"
    storage: str = "vector"
    index_storage: str = "vector"
    sync: str = "queued"
    fulltext: str | None = None
    model_column: str = ""
    hash_column: str = ""
    id: int | None = None
    # Set by activations only (never by migrations): the pinned model version, and for the
    # shadow column of an activation in progress, the id of the column it will replace.
    model_version: str | None = None
    shadow_of: int | None = None
    # Chunks(...).as_dict() for a chunked column (semdb.orm.chunks), else None.
    chunking: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.key_columns:
            raise DeclarationError(
                f"{self.name} needs its table's primary key columns", fix="pass key=['id']"
            )
        if not self.sources:
            raise DeclarationError(f"{self.name} needs source columns", fix="pass sources=[...]")
        if self.storage not in STORAGES or self.index_storage not in STORAGES:
            raise DeclarationError(
                f"{self.name}: storage must be one of {', '.join(STORAGES)}", fix="use vector"
            )
        Distance.parse(self.distance)
        if not self.model_column:
            object.__setattr__(self, "model_column", f"{self.column_name}_model")
        if not self.hash_column:
            object.__setattr__(self, "hash_column", f"{self.column_name}_hash")

    @property
    def name(self) -> str:
        return f"{self.table_schema}.{self.table_name}.{self.column_name}"

    @property
    def model_tag(self) -> str:
        """``name@version`` when the version is pinned, else the model name alone."""
        return f"{self.model}@{self.model_version}" if self.model_version else self.model

    def accepts(self, name: str, version: str) -> bool:
        """Are vectors of model ``name`` version ``version`` what this column holds?"""
        return name == self.model and (self.model_version is None or version == self.model_version)

    @property
    def table_sql(self) -> sql.Identifier:
        """The table, for statements run without parameters (DDL)."""
        return sql.Identifier(self.table_schema, self.table_name)

    @property
    def table_ref(self) -> sql.Identifier:
        """The table, for statements run with parameters (see :func:`ident`)."""
        return ident(self.table_schema, self.table_name)

    def with_id(self, id: int) -> SyncTarget:
        return replace(self, id=id)

    def as_row(self) -> dict[str, Any]:
        row = {field: getattr(self, field) for field in _TARGET_FIELDS}
        row["key_columns"] = list(self.key_columns)
        row["sources"] = list(self.sources)
        if self.chunking is not None:
            # only when set: a migration that runs before 0007 (which adds the column)
            # registers unchunked columns
            row["chunking"] = self.chunking
        return row

    @classmethod
    def from_row(cls, row: Any) -> SyncTarget:
        mapping = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
        values = {field: mapping[field] for field in _TARGET_FIELDS}
        values["key_columns"] = tuple(values["key_columns"])
        values["sources"] = tuple(values["sources"])
        return cls(
            id=mapping.get("id"),
            model_version=mapping.get("model_version"),
            shadow_of=mapping.get("shadow_of"),
            chunking=mapping.get("chunking"),  # _OPTIONAL_FIELDS
            **values,
        )

    @classmethod
    def from_column(cls, column: Any, *, default_schema: str = "public") -> SyncTarget:
        """From ``Doc.embedding`` / ``docs.c.embedding`` (declared with embedding_column)."""
        target = column if isinstance(column, VectorColumn) else vector_column(column)
        check_sources_are_text(target)
        spec = target.spec
        return cls(
            table_schema=target.table.schema or default_schema,
            table_name=target.table.name,
            column_name=target.column.name,
            key_columns=tuple(c.name for c in target.key),
            sources=spec.sources,
            model=spec.model,
            dimension=spec.dimension,
            distance=spec.distance.value,
            storage=spec.storage,
            index_storage=target.index_storage(),
            sync=spec.sync,
            fulltext=spec.fulltext,
            model_column=spec.model_column_name(target.column.name),
            hash_column=spec.hash_column_name(target.column.name),
            chunking=spec.chunking.as_dict() if spec.chunking is not None else None,
        )

    # -- SQL pieces ----------------------------------------------------------------------------

    def document_sql(self, alias: str = "t") -> sql.Composed:
        """``concat_ws(E'\\n', t."title", t."body")`` (see semdb.orm.document)."""
        columns = sql.SQL(", ").join(ident(alias, source) for source in self.sources)
        return sql.SQL("concat_ws(E'\\n', {})").format(columns)

    def hash_sql(self, alias: str = "t") -> sql.Composed:
        return sql.SQL("sha256(convert_to({}, 'UTF8'))").format(self.document_sql(alias))

    def key_json_sql(self, alias: str) -> sql.Composed:
        """``jsonb_build_object('id', n."id")``: how a row's key is written in the queue."""
        pairs = sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(name), sql.Identifier(alias, name))
            for name in self.key_columns
        )
        return sql.SQL("jsonb_build_object({})").format(pairs)

    def vector_cast_sql(self) -> sql.Composed:
        """``CAST(%s AS vector(384))`` for a bound wire vector."""
        return sql.SQL("CAST({} AS {}({}))").format(
            sql.Placeholder(), sql.SQL(self.storage), sql.Literal(self.dimension)
        )
