"""Chunked embedding columns: long texts split into token windows, one vector per window.

>>> class Doc(Base):
...     __tablename__ = "docs"
...     id: Mapped[int] = mapped_column(primary_key=True)
...     body: Mapped[str]
...     embedding: Mapped[np.ndarray | None] = embedding_column(
...         "body", model="all-MiniLM-L6-v2", dimension=384,
...         chunking=Chunks(max_tokens=256, overlap=32))

The column itself keeps the vector of the text's first chunk (so a text that fits the window
is embedded exactly as an unchunked column embeds it). Every chunk's vector lives in a
companion table, ``<table>_<column>_chunks``, declared in the same ``MetaData`` (so
``create_all`` and Alembic's autogenerate create it like any table):

- ``parent_<key>`` for each primary-key column of the parent, a foreign key
  ``ON DELETE CASCADE ON UPDATE CASCADE`` (a deleted parent leaves no chunk);
- ``chunk`` (0, 1, ...), ``char_start`` / ``char_end`` (the chunk's characters in the
  parent's document: ``document[char_start:char_end]``);
- ``embedding`` (the vector), ``model`` (``name@version``), ``content_hash`` (SHA-256 of
  the chunk's text: an unchanged chunk keeps its vector);
- the vector index the parent column declares.

Searches over the parent column (:func:`semdb.search`) rank parent rows by their best chunk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from semdb.errors import DeclarationError
from semdb.orm.indexes import build_index, index_name
from semdb.orm.types import VectorType

if TYPE_CHECKING:
    from semdb.orm.declaration import EmbeddingSpec

#: ``Column.info`` key of a chunk table's vector column: the parent column's EmbeddingSpec.
CHUNK_VECTOR_KEY = "semdb.chunk_vector_of"
#: ``Table.info`` key of a chunk table: (parent table name, parent column name).
CHUNK_TABLE_KEY = "semdb.chunks_of"
#: ``Column.info`` key of a chunked vector column: its chunk table.
CHUNK_TABLE_OF_COLUMN = "semdb.chunk_table"
DEFAULT_MAX_CHUNKS = 512
VECTOR = "embedding"
_MAX_NAME = 63


@dataclass(frozen=True)
class Chunks:
    """How a long text is split: windows of ``max_tokens`` tokens of the model's own
    tokenizer (None: the model's maximum), consecutive windows sharing ``overlap`` tokens,
    cut at a paragraph or sentence boundary near the window's edge. A text that fits is one
    chunk. A text that would need more than ``max_chunks`` chunks is refused (the row's error
    is recorded; other rows go on)."""

    max_tokens: int | None = None
    overlap: int = 32
    max_chunks: int = DEFAULT_MAX_CHUNKS

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int)
            or isinstance(self.max_tokens, bool)
            or self.max_tokens < 8
        ):
            raise DeclarationError(
                f"Chunks max_tokens must be an integer of at least 8, got {self.max_tokens!r}",
                fix="pass max_tokens=256, or None for the model's maximum",
            )
        if not isinstance(self.overlap, int) or isinstance(self.overlap, bool) or self.overlap < 0:
            raise DeclarationError(
                f"Chunks overlap must be a non-negative integer, got {self.overlap!r}",
                fix="pass overlap=32",
            )
        if self.max_tokens is not None and self.overlap >= self.max_tokens:
            raise DeclarationError(
                f"Chunks overlap ({self.overlap}) must be smaller than the window "
                f"max_tokens ({self.max_tokens})",
                fix=f"pass overlap={self.max_tokens // 8}",
            )
        if (
            not isinstance(self.max_chunks, int)
            or isinstance(self.max_chunks, bool)
            or self.max_chunks < 1
        ):
            raise DeclarationError(
                f"Chunks max_chunks must be a positive integer, got {self.max_chunks!r}",
                fix=f"pass max_chunks={DEFAULT_MAX_CHUNKS}",
            )

    def check_model(self, model: str, model_max_tokens: int) -> None:
        """Refuse a window wider than the model reads."""
        if self.max_tokens is not None and self.max_tokens > model_max_tokens:
            raise DeclarationError(
                f"Chunks max_tokens ({self.max_tokens}) is above what model {model!r} reads "
                f"({model_max_tokens} tokens)",
                fix=f"pass max_tokens={model_max_tokens} or less",
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "overlap": self.overlap,
            "max_chunks": self.max_chunks,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunks:
        return cls(
            max_tokens=data.get("max_tokens"),
            overlap=int(data.get("overlap", 32)),
            max_chunks=int(data.get("max_chunks", DEFAULT_MAX_CHUNKS)),
        )


def chunk_table_name(table: str, column: str) -> str:
    """``<table>_<column>_chunks``, shortened with a digest past PostgreSQL's 63 bytes."""
    name = f"{table}_{column}_chunks"
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name.encode()[: _MAX_NAME - 9].decode(errors="ignore") + "_" + digest


def parent_key_name(key: str) -> str:
    return f"parent_{key}"


def build_chunk_table(
    table: sa.Table, column: sa.Column[Any], spec: EmbeddingSpec
) -> sa.Table | None:
    """Declare the chunk table of ``table.column`` in the same MetaData (once)."""
    metadata = table.metadata
    name = chunk_table_name(table.name, column.name)
    key = f"{table.schema}.{name}" if table.schema else name
    if key in metadata.tables:
        return metadata.tables[key]
    primary = list(table.primary_key.columns)
    if not primary:
        return None  # the primary key is attached later (completed when the table is)
    keys = [
        sa.Column(parent_key_name(c.name), c.type.copy() if hasattr(c.type, "copy") else c.type)
        for c in primary
    ]
    for key_column in keys:
        key_column.nullable = False
    vector = sa.Column(
        VECTOR,
        VectorType(spec.dimension, spec.storage),
        nullable=False,
        info={CHUNK_VECTOR_KEY: spec},
    )
    chunks = sa.Table(
        name,
        metadata,
        *keys,
        sa.Column("chunk", sa.Integer, nullable=False),
        sa.Column("char_start", sa.Integer, nullable=False),
        sa.Column("char_end", sa.Integer, nullable=False),
        vector,
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("content_hash", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint(*[k.name for k in keys], "chunk", name=f"pk_{name}"[:63]),
        sa.ForeignKeyConstraint(
            [k.name for k in keys],
            [c for c in primary],
            ondelete="CASCADE",
            onupdate="CASCADE",
            name=f"fk_{name}"[:63],
        ),
        schema=table.schema,
        info={CHUNK_TABLE_KEY: (table.name, column.name)},
    )
    assert isinstance(vector.type, VectorType)
    vector.type.label = f"{name}.{VECTOR}"
    if spec.index is not None:
        build_index(
            vector,
            spec.index,
            distance=spec.distance,
            storage=spec.storage,
            dimension=spec.dimension,
            name=index_name(name, VECTOR, spec.index.method),
        )
    column.info[CHUNK_TABLE_OF_COLUMN] = chunks
    return chunks


def chunk_table_of(column: sa.Column[Any]) -> sa.Table | None:
    """The chunk table of a chunked vector column (None for an unchunked one)."""
    found = (getattr(column, "info", None) or {}).get(CHUNK_TABLE_OF_COLUMN)
    return found if isinstance(found, sa.Table) else None


def chunk_vector_spec(column: Any) -> EmbeddingSpec | None:
    """The parent's declaration, for a chunk table's vector column (else None)."""
    spec = (getattr(column, "info", None) or {}).get(CHUNK_VECTOR_KEY)
    return spec if spec is None or hasattr(spec, "chunking") else None
