"""Alembic operations for vector indexes and embedding sync, registered with Alembic's
public plugin points (``Operations.register_operation`` / ``implementation_for``).

In a migration (after ``import semdb.alembic`` in env.py, or in the migration itself)::

    op.create_vector_index("ix_docs_embedding_hnsw", "docs", "embedding", dimension=384,
                           method="hnsw", distance="cosine", m=16, ef_construction=64,
                           concurrently=True)
    # ((embedding::halfvec(384)) halfvec_cosine_ops):
    op.create_vector_index("ix_docs_embedding_half", "docs", "embedding", dimension=384,
                           halfvec=True)
    op.drop_vector_index("ix_docs_embedding_hnsw", "docs", concurrently=True)
    op.create_embedding_sync("docs", "embedding", sources=["title", "body"],
                             model="all-MiniLM-L6-v2", dimension=384, mode="queued",
                             fulltext="english", keyword=True)  # + BM25 statistics
    # a chunked column (semdb.Chunks): workers split its texts alike
    op.create_embedding_sync("docs", "embedding", sources=["body"], model="all-MiniLM-L6-v2",
                             dimension=384, chunking={"max_tokens": 256, "overlap": 32,
                                                      "max_chunks": 512})
    op.drop_embedding_sync("docs", "embedding")

``concurrently=True`` runs outside the migration's transaction (an autocommit block), as
PostgreSQL requires. Every statement is composed by SQLAlchemy or psycopg.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations
from psycopg import sql
from sqlalchemy.schema import CreateIndex, DropIndex

from semdb.db.partitions import (
    Partition,
    check_sync_key,
    index_validity,
    is_partitioned_index,
    partition_index_name,
    partition_tree,
)
from semdb.errors import DeclarationError
from semdb.orm.distance import Distance
from semdb.orm.indexes import HNSW, METHODS, IVFFlat, VectorIndex, build_index
from semdb.orm.types import VectorType
from semdb.sync import keyword_stats
from semdb.sync.registry import register_statement, unregister_statement
from semdb.sync.target import SyncTarget
from semdb.sync.triggers import install_statements, uninstall_statements


def _index_kind(
    method: str, m: int | None, ef_construction: int | None, lists: int | None, halfvec: bool
) -> VectorIndex:
    if method == "hnsw":
        return HNSW(m=m or 16, ef_construction=ef_construction or 64, halfvec=halfvec)
    if method == "ivfflat":
        return IVFFlat(lists=lists or 100, halfvec=halfvec)
    raise DeclarationError(f"unknown vector index method {method!r}", fix=f"use one of {METHODS}")


@Operations.register_operation("create_vector_index")
class CreateVectorIndexOp(MigrateOperation):
    """``CREATE INDEX [CONCURRENTLY] name ON t USING hnsw|ivfflat (expr opclass) WITH (...)``."""

    def __init__(
        self,
        index_name: str,
        table_name: str,
        column_name: str,
        *,
        dimension: int,
        method: str = "hnsw",
        distance: str = "cosine",
        storage: str = "vector",
        halfvec: bool = False,
        m: int | None = None,
        ef_construction: int | None = None,
        lists: int | None = None,
        concurrently: bool = False,
        if_not_exists: bool = False,
        schema: str | None = None,
    ) -> None:
        self.index_name = index_name
        self.table_name = table_name
        self.column_name = column_name
        self.dimension = dimension
        self.method = method
        self.distance = Distance.parse(distance).value
        self.storage = storage
        self.halfvec = halfvec
        self.m = m
        self.ef_construction = ef_construction
        self.lists = lists
        self.concurrently = concurrently
        self.if_not_exists = if_not_exists
        self.schema = schema
        self.kind = _index_kind(method, m, ef_construction, lists, halfvec)

    @classmethod
    def create_vector_index(
        cls, operations: Operations, index_name: str, table_name: str, column_name: str, **kw: Any
    ) -> None:
        """Create a vector index (see :mod:`semdb.alembic.operations`)."""
        operations.invoke(cls(index_name, table_name, column_name, **kw))

    def options(self) -> dict[str, Any]:
        """The keyword arguments that recreate this operation (for rendering and reversing)."""
        options: dict[str, Any] = {
            "dimension": self.dimension,
            "method": self.method,
            "distance": self.distance,
        }
        if self.storage != "vector":
            options["storage"] = self.storage
        if self.halfvec:
            options["halfvec"] = True
        if isinstance(self.kind, HNSW):
            options["m"] = self.kind.m
            options["ef_construction"] = self.kind.ef_construction
        else:
            options["lists"] = self.kind.lists
        if self.concurrently:
            options["concurrently"] = True
        if self.schema is not None:
            options["schema"] = self.schema
        return options

    def to_index(self) -> sa.Index:
        table = sa.Table(
            self.table_name,
            sa.MetaData(),
            sa.Column(self.column_name, VectorType(self.dimension, self.storage)),
            schema=self.schema,
        )
        return build_index(
            table.c[self.column_name],
            self.kind,
            distance=Distance.parse(self.distance),
            storage=self.storage,
            dimension=self.dimension,
            name=self.index_name,
            postgresql_concurrently=self.concurrently,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_vector_index", self.schema, self.table_name, self.index_name, self.options())

    def reverse(self) -> DropVectorIndexOp:
        return DropVectorIndexOp(
            self.index_name, self.table_name, column_name=self.column_name, **self.options()
        )


@Operations.register_operation("drop_vector_index")
class DropVectorIndexOp(MigrateOperation):
    """``DROP INDEX [CONCURRENTLY] IF EXISTS name``; the other arguments make it reversible."""

    def __init__(
        self,
        index_name: str,
        table_name: str | None = None,
        *,
        column_name: str | None = None,
        concurrently: bool = False,
        schema: str | None = None,
        **create_options: Any,
    ) -> None:
        self.index_name = index_name
        self.table_name = table_name
        self.column_name = column_name
        self.concurrently = concurrently
        self.schema = schema
        self.create_options = create_options

    @classmethod
    def drop_vector_index(
        cls, operations: Operations, index_name: str, table_name: str | None = None, **kw: Any
    ) -> None:
        """Drop a vector index (see :mod:`semdb.alembic.operations`)."""
        operations.invoke(cls(index_name, table_name, **kw))

    def to_index(self) -> sa.Index:
        table = sa.Table(
            self.table_name or "unknown_table",
            sa.MetaData(),
            sa.Column(self.column_name or "unknown_column", sa.Integer),
            schema=self.schema,
        )
        return sa.Index(
            self.index_name,
            table.c[self.column_name or "unknown_column"],
            postgresql_concurrently=self.concurrently,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_vector_index", self.schema, self.table_name, self.index_name)

    def reverse(self) -> CreateVectorIndexOp:
        if self.table_name is None or self.column_name is None or not self.create_options:
            raise DeclarationError(
                f"drop_vector_index({self.index_name!r}) cannot be reversed: it does not say "
                "how the index was built",
                fix="pass table_name, column_name, dimension, method, distance (and m / "
                "ef_construction / lists) to drop_vector_index",
            )
        options = dict(self.create_options)
        options["concurrently"] = self.concurrently
        return CreateVectorIndexOp(
            self.index_name, self.table_name, self.column_name, schema=self.schema, **options
        )


@Operations.implementation_for(CreateVectorIndexOp)
def _create_vector_index(operations: Operations, operation: CreateVectorIndexOp) -> None:
    statement = CreateIndex(operation.to_index(), if_not_exists=operation.if_not_exists)
    if not operation.concurrently:
        operations.execute(statement)
        return
    # CREATE INDEX CONCURRENTLY cannot run in a transaction block
    with operations.get_context().autocommit_block():
        tree = None
        if not operations.get_context().as_sql:
            bind = operations.get_bind()
            schema = operation.schema or bind.dialect.default_schema_name or "public"
            tree = partition_tree(bind, schema, operation.table_name)
        if tree is None:
            operations.execute(statement)
        else:
            _create_partitioned_index(operations, operation, tree)


def _create_partitioned_index(
    operations: Operations, operation: CreateVectorIndexOp, tree: list[Partition]
) -> None:
    """CONCURRENTLY on a partitioned table: each leaf's index concurrently, then the
    partitioned tables' indexes bottom up, which attach them (see semdb.db.partitions)."""
    options = operation.options()
    options.pop("concurrently", None)
    options.pop("schema", None)
    bind = operations.get_bind()
    for part in tree:  # deepest first, the root last
        root = part.level == 0
        name = (
            operation.index_name if root else partition_index_name(operation.index_name, part.name)
        )
        if part.leaf and index_validity(bind, part.schema, [name]).get(name) is False:
            # an interrupted build left it invalid: build it again
            dropped = DropVectorIndexOp(name, part.name, schema=part.schema, concurrently=True)
            operations.execute(DropIndex(dropped.to_index(), if_exists=True))
        sub = CreateVectorIndexOp(
            name,
            part.name,
            operation.column_name,
            schema=part.schema,
            concurrently=part.leaf,
            **options,
        )
        if_not_exists = operation.if_not_exists or not root
        operations.execute(CreateIndex(sub.to_index(), if_not_exists=if_not_exists))


@Operations.implementation_for(DropVectorIndexOp)
def _drop_vector_index(operations: Operations, operation: DropVectorIndexOp) -> None:
    if not operation.concurrently:
        operations.execute(DropIndex(operation.to_index(), if_exists=True))
        return
    with operations.get_context().autocommit_block():
        index = operation.to_index()
        if not operations.get_context().as_sql:
            bind = operations.get_bind()
            schema = operation.schema or bind.dialect.default_schema_name or "public"
            if is_partitioned_index(bind, schema, operation.index_name):
                # PostgreSQL cannot drop it concurrently; a plain DROP takes its partitions'
                index = DropVectorIndexOp(
                    operation.index_name,
                    operation.table_name,
                    column_name=operation.column_name,
                    schema=operation.schema,
                ).to_index()
        operations.execute(DropIndex(index, if_exists=True))


@Operations.register_operation("create_embedding_sync")
class CreateEmbeddingSyncOp(MigrateOperation):
    """Register a vector column in ``semdb.vector_columns``; in queued mode, install the
    triggers that enqueue changed rows (in other modes, remove them)."""

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        sources: Sequence[str],
        model: str,
        dimension: int,
        key: Sequence[str] = ("id",),
        mode: str = "queued",
        distance: str = "cosine",
        storage: str = "vector",
        index_storage: str | None = None,
        fulltext: str | None = None,
        model_column: str | None = None,
        hash_column: str | None = None,
        keyword: bool | None = None,
        schema: str | None = None,
        chunking: dict[str, Any] | None = None,
    ) -> None:
        if mode not in ("inline", "queued", "manual"):
            raise DeclarationError(
                f"unknown sync mode {mode!r}", fix="use 'queued', 'inline' or 'manual'"
            )
        self.table_name = table_name
        self.column_name = column_name
        self.schema = schema
        self.keyword = keyword
        self.target = SyncTarget(
            table_schema=schema or "public",
            table_name=table_name,
            column_name=column_name,
            key_columns=tuple(key),
            sources=tuple(sources),
            model=model,
            dimension=dimension,
            distance=Distance.parse(distance).value,
            storage=storage,
            index_storage=index_storage or storage,
            sync=mode,
            fulltext=fulltext,
            model_column=model_column or "",
            hash_column=hash_column or "",
            chunking=dict(chunking) if chunking is not None else None,
        )

    @classmethod
    def from_target(
        cls, target: SyncTarget, *, schema: str | None, keyword: bool | None = None
    ) -> CreateEmbeddingSyncOp:
        return cls(
            target.table_name,
            target.column_name,
            schema=schema,
            keyword=keyword,
            **_target_options(target),
        )

    def options(self) -> dict[str, Any]:
        options = _target_options(self.target)
        if self.keyword is not None:
            options["keyword"] = self.keyword
        return options

    @classmethod
    def create_embedding_sync(
        cls, operations: Operations, table_name: str, column_name: str, **kw: Any
    ) -> None:
        """Register the column and (queued mode) install its triggers."""
        operations.invoke(cls(table_name, column_name, **kw))

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_embedding_sync", self.schema, self.table_name, self.column_name)

    def reverse(self) -> DropEmbeddingSyncOp:
        return DropEmbeddingSyncOp(
            self.table_name, self.column_name, schema=self.schema, **self.options()
        )


@Operations.register_operation("drop_embedding_sync")
class DropEmbeddingSyncOp(MigrateOperation):
    """Remove the triggers and the registration (the vectors stay in the table)."""

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        **create_options: Any,
    ) -> None:
        self.table_name = table_name
        self.column_name = column_name
        self.schema = schema
        self.create_options = create_options

    @classmethod
    def drop_embedding_sync(
        cls, operations: Operations, table_name: str, column_name: str, **kw: Any
    ) -> None:
        """Remove a column's sync triggers and registration."""
        operations.invoke(cls(table_name, column_name, **kw))

    @property
    def target(self) -> SyncTarget:
        options: dict[str, Any] = {"sources": ("unknown",), "model": "unknown", "dimension": 1}
        options.update(self.create_options)
        options.pop("keyword", None)
        return CreateEmbeddingSyncOp(
            self.table_name, self.column_name, schema=self.schema, **options
        ).target

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_embedding_sync", self.schema, self.table_name, self.column_name)

    def reverse(self) -> CreateEmbeddingSyncOp:
        if not {"sources", "model", "dimension"} <= set(self.create_options):
            raise DeclarationError(
                f"drop_embedding_sync({self.table_name!r}, {self.column_name!r}) cannot be "
                "reversed: it does not say what the column embeds",
                fix="pass sources=, model=, dimension= (as create_embedding_sync took them)",
            )
        return CreateEmbeddingSyncOp(
            self.table_name, self.column_name, schema=self.schema, **self.create_options
        )


@Operations.implementation_for(CreateEmbeddingSyncOp)
def _create_embedding_sync(operations: Operations, operation: CreateEmbeddingSyncOp) -> None:
    target = operation.target
    if not operations.get_context().as_sql:
        check_sync_key(
            operations.get_bind(), target.table_schema, target.table_name, target.key_columns
        )
    operations.execute(register_statement(target))
    statements = install_statements(target) if target.sync == "queued" else []
    if target.sync != "queued":
        statements = uninstall_statements(target)
    if operation.keyword:  # BM25 statistics kept by triggers (semdb.sync.keyword_stats)
        statements += keyword_stats.install_statements(target)
    elif operation.keyword is False:  # (None: as they are)
        statements += keyword_stats.uninstall_statements(target)
    for statement in statements:
        _run_composed(operations, statement)


@Operations.implementation_for(DropEmbeddingSyncOp)
def _drop_embedding_sync(operations: Operations, operation: DropEmbeddingSyncOp) -> None:
    target = operation.target
    extra = (
        keyword_stats.uninstall_statements(target) if "keyword" in operation.create_options else []
    )
    for statement in uninstall_statements(target) + extra:
        _run_composed(operations, statement)
    operations.execute(unregister_statement(target))


def _run_composed(operations: Operations, statement: sql.Composable) -> None:
    """Run psycopg.sql output through Alembic (online and --sql), colons kept literal."""
    text = statement.as_string(None)
    operations.execute(sa.text(text.replace(":", "\\:")))


def _target_options(target: SyncTarget) -> dict[str, Any]:
    options: dict[str, Any] = {
        "sources": list(target.sources),
        "model": target.model,
        "dimension": target.dimension,
        "key": list(target.key_columns),
        "mode": target.sync,
        "distance": target.distance,
    }
    if target.storage != "vector":
        options["storage"] = target.storage
    if target.index_storage != target.storage:
        options["index_storage"] = target.index_storage
    if target.fulltext is not None:
        options["fulltext"] = target.fulltext
    if target.model_column != f"{target.column_name}_model":
        options["model_column"] = target.model_column
    if target.hash_column != f"{target.column_name}_hash":
        options["hash_column"] = target.hash_column
    if target.chunking is not None:
        options["chunking"] = dict(target.chunking)
    return options
