"""Declaring an embedding column: "this vector holds the embedding of these text columns".

>>> class Doc(Base):
...     __tablename__ = "docs"
...     id: Mapped[int] = mapped_column(primary_key=True)
...     title: Mapped[str]
...     body: Mapped[str | None]
...     embedding: Mapped[np.ndarray | None] = embedding_column(
...         "title", "body", model="all-MiniLM-L6-v2", dimension=384,
...         distance="cosine", index=HNSW(m=16), sync="queued", fulltext="english")

When the column is attached to its table, semdb adds, with SQLAlchemy's public events only:

- ``embedding_model`` (text): ``name@version`` of the model that made each stored vector;
- ``embedding_hash`` (bytea): SHA-256 of the text that was embedded (see
  :mod:`semdb.orm.document`), so unchanged text is never embedded twice;
- the vector index (HNSW or IVFFlat, operator class from the distance and storage);
- with ``fulltext``, a GIN index on the text's ``to_tsvector`` for hybrid search.

The same call works for Core tables: ``embedding_column(...).column`` is a plain ``Column``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import MappedColumn, mapped_column

from semdb.errors import DeclarationError
from semdb.orm.chunks import Chunks, build_chunk_table
from semdb.orm.distance import STORAGES, Distance
from semdb.orm.document import fulltext_document_sql, regconfig_sql
from semdb.orm.indexes import HNSW, IVFFlat, VectorIndex, build_index, index_name
from semdb.orm.types import FloatArray, VectorType

SyncMode = Literal["inline", "queued", "manual"]
SYNC_MODES: tuple[str, ...] = ("inline", "queued", "manual")
INFO_KEY = "semdb.embedding"
COMPANION_KEY = "semdb.companion_of"
_REGCONFIG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


@dataclass(frozen=True)
class EmbeddingSpec:
    """What a vector column holds and how semdb keeps it. Stored in ``Column.info``.

    ``sync``: ``"inline"`` embeds at flush in the writer's transaction, ``"queued"`` leaves
    it to ``semdb worker`` (triggers enqueue changed rows), ``"manual"`` to your own calls.
    """

    sources: tuple[str, ...]
    model: str
    dimension: int
    distance: Distance = Distance.COSINE
    storage: str = "vector"
    index: VectorIndex | None = field(default_factory=HNSW)
    sync: SyncMode = "inline"
    fulltext: str | None = None
    model_column: str | None = None  # default: <column>_model
    hash_column: str | None = None  # default: <column>_hash
    chunking: Chunks | None = None  # long texts split into chunks (see semdb.orm.chunks)
    keyword: bool = False  # BM25 statistics and postings (semdb.keyword_search, hybrid)

    def __post_init__(self) -> None:
        if not self.sources:
            raise DeclarationError(
                "an embedding column needs at least one source text column",
                fix='name them: embedding_column("title", "body", model=...)',
            )
        for source in self.sources:
            if not isinstance(source, str) or not source:
                raise DeclarationError(
                    f"source columns are given by name; got {source!r}",
                    fix='pass column names as strings, e.g. embedding_column("body", ...)',
                )
        if len(set(self.sources)) != len(self.sources):
            raise DeclarationError(f"source columns repeat: {self.sources}", fix="list each once")
        if not self.model or not isinstance(self.model, str):
            raise DeclarationError(
                "an embedding column names the model that makes its vectors",
                fix='pass model="<bundle name>"',
            )
        if self.storage not in STORAGES:
            raise DeclarationError(
                f"unknown vector storage {self.storage!r}", fix=f"use one of {', '.join(STORAGES)}"
            )
        if self.sync not in SYNC_MODES:
            raise DeclarationError(
                f"unknown sync mode {self.sync!r}", fix=f"use one of {', '.join(SYNC_MODES)}"
            )
        if self.index is not None and not isinstance(self.index, (HNSW, IVFFlat)):
            raise DeclarationError(
                f"index must be HNSW(...), IVFFlat(...) or None, got {self.index!r}",
                fix="pass index=semdb.HNSW() or index=semdb.IVFFlat(lists=...)",
            )
        if self.fulltext is not None:
            check_regconfig(self.fulltext)
        if self.chunking is not None and not isinstance(self.chunking, Chunks):
            raise DeclarationError(
                f"chunking must be semdb.Chunks(...) or None, got {self.chunking!r}",
                fix="pass chunking=semdb.Chunks(max_tokens=256, overlap=32)",
            )

    def model_column_name(self, column: str) -> str:
        return self.model_column or f"{column}_model"

    def hash_column_name(self, column: str) -> str:
        return self.hash_column or f"{column}_hash"


def check_regconfig(name: str) -> str:
    """A text search configuration name (``english``, ``pg_catalog.simple``), or an error."""
    if not isinstance(name, str) or not _REGCONFIG_NAME.match(name):
        raise DeclarationError(
            f"fulltext must name a text search configuration, got {name!r}",
            fix='use a configuration name such as "english" or "simple"',
        )
    return name


def embedding_column(
    *sources: str,
    model: str,
    dimension: int | None = None,
    distance: Distance | str = Distance.COSINE,
    storage: Literal["vector", "halfvec"] = "vector",
    index: VectorIndex | None = HNSW(),  # noqa: B008  (frozen dataclass: a constant)
    sync: SyncMode = "inline",
    fulltext: str | None = None,
    name: str | None = None,
    model_column: str | None = None,
    hash_column: str | None = None,
    chunking: Chunks | None = None,
    keyword: bool = False,
    **column_kwargs: Any,
) -> MappedColumn[FloatArray | None]:
    """A pgvector column holding the embedding of ``sources`` made by ``model``.

    ``dimension`` defaults to the dimension in the model bundle's manifest (the bundle must
    then be installed where the models are declared); give it to declare without the bundle.
    ``keyword=True``: the column's text is keyword-searchable (BM25 statistics and postings
    kept by triggers, for :func:`semdb.keyword_search` and :func:`semdb.hybrid_search`);
    Alembic's autogenerate writes it into ``op.create_embedding_sync``.
    """
    if not isinstance(keyword, bool):
        raise DeclarationError(
            f"keyword must be True or False, got {keyword!r}", fix="keyword=True"
        )
    if dimension is None:
        model, dimension = _from_manifest(model)
    else:
        model = model.partition("@")[0] if isinstance(model, str) else model
    spec = EmbeddingSpec(
        sources=tuple(sources),
        model=model,
        dimension=dimension,
        distance=Distance.parse(distance),
        storage=storage,
        index=index,
        sync=sync,
        fulltext=fulltext,
        model_column=model_column,
        hash_column=hash_column,
        chunking=chunking,
        keyword=keyword,
    )
    info = dict(column_kwargs.pop("info", None) or {})
    info[INFO_KEY] = spec
    column_kwargs.setdefault("nullable", True)
    declared: MappedColumn[FloatArray | None] = mapped_column(
        name, VectorType(spec.dimension, spec.storage), info=info, **column_kwargs
    )
    event.listen(declared.column, "after_parent_attach", _complete_table)
    return declared


def spec_of(column: sa.ColumnElement[Any]) -> EmbeddingSpec | None:
    """The declaration of ``column``, or None when it is no embedding column."""
    info = getattr(column, "info", None) or {}
    spec = info.get(INFO_KEY)
    return spec if isinstance(spec, EmbeddingSpec) else None


def _from_manifest(model: str) -> tuple[str, int]:
    """The model's name and dimension from its bundle's manifest (``model``: a name,
    ``name@version`` or a bundle folder)."""
    try:
        from semdb.bundles import find_bundle
    except ImportError as exc:
        raise DeclarationError(
            f"embedding column for model {model!r} gives no dimension and semdb cannot read "
            "model bundles here",
            fix="pass dimension=<the model's dimension>",
        ) from exc
    try:
        manifest = find_bundle(model, verify=False).manifest
    except Exception as exc:  # the bundle layer explains what is missing
        raise DeclarationError(
            f"cannot read the manifest of model {model!r} to learn its dimension: {exc}",
            fix="install the bundle, or pass dimension=<the model's dimension>",
        ) from exc
    return str(manifest.name), int(manifest.dimension)


def _manifest_max_tokens(model: str) -> int:
    from semdb.bundles import find_bundle

    return int(find_bundle(model, verify=False).manifest.max_tokens)


def _complete_table(column: sa.Column[Any], table: sa.Table) -> None:
    """Add the companion columns and the indexes once the vector column has a table."""
    if not isinstance(table, sa.Table):
        return
    spec = spec_of(column)
    if spec is None:
        return
    if isinstance(column.type, VectorType):
        column.type.label = f"{table.name}.{column.name}"
    for companion, type_ in (
        (spec.model_column_name(column.name), sa.Text()),
        (spec.hash_column_name(column.name), sa.LargeBinary()),
    ):
        if companion not in table.c:
            table.append_column(
                sa.Column(companion, type_, nullable=True, info={COMPANION_KEY: column.name})
            )
    if spec.index is not None:
        name = index_name(table.name, column.name, spec.index.method)
        if not any(ix.name == name for ix in table.indexes):
            build_index(
                column,
                spec.index,
                distance=spec.distance,
                storage=spec.storage,
                dimension=spec.dimension,
                name=name,
            )
    if spec.chunking is not None and build_chunk_table(table, column, spec) is None:
        event.listen(  # the primary key comes later: finish once the table is complete
            table,
            "after_parent_attach",
            lambda target, _parent: build_chunk_table(target, column, spec),
            once=True,
        )
    if spec.fulltext is not None:
        if all(source in table.c for source in spec.sources):
            _add_fulltext_index(table, column, spec)
        else:  # sources declared after the vector: finish once the table is complete
            event.listen(
                table,
                "after_parent_attach",
                lambda target, _parent: _add_fulltext_index(target, column, spec),
                once=True,
            )


def _add_fulltext_index(table: sa.Table, column: sa.Column[Any], spec: EmbeddingSpec) -> None:
    assert spec.fulltext is not None
    name = index_name(table.name, column.name, "fts")
    if any(ix.name == name for ix in table.indexes):
        return
    missing = [source for source in spec.sources if source not in table.c]
    if missing:
        raise DeclarationError(
            f"{table.name}.{column.name} embeds {', '.join(missing)}, which {table.name} lacks",
            fix="declare the source columns in the same table, or correct their names",
        )
    sources = [table.c[source] for source in spec.sources]
    expression = sa.func.to_tsvector(regconfig_sql(spec.fulltext), fulltext_document_sql(sources))
    sa.Index(
        name,
        expression,
        postgresql_using="gin",
        info={"semdb.fulltext_index": True, "semdb.of": column.name},
    )
