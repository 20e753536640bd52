"""Autogenerate for vector columns, vector indexes and embedding sync.

``import semdb.alembic`` in your env.py registers a comparator (Alembic's public
``comparators.dispatch_for``) that runs after Alembic's own and:

1. renders semdb's vector columns as ``pgvector.sqlalchemy.VECTOR(dim=384)`` /
   ``HALFVEC(...)`` (and adds the import), so migrations do not depend on semdb's classes;
2. turns Alembic's ``create_index`` / ``drop_index`` of HNSW and IVFFlat indexes into
   ``op.create_vector_index`` / ``op.drop_vector_index``, which always carry the operator
   class (Alembic renders a halfvec expression index without it: pgvector-python#118,
   alembic#1603), and are reversible;
3. finds drift Alembic does not see: a vector index whose method, operator class or
   WITH options differ from the declaration is dropped and recreated;
4. compares declared embedding columns with ``semdb.vector_columns``, the sync triggers and
   the BM25 statistics (``keyword=True``), and emits ``op.create_embedding_sync`` (with
   ``keyword=True``, or ``keyword=False`` to remove them) / ``op.drop_embedding_sync``.

So that ``alembic check`` shows no drift right after ``alembic upgrade head``.
"""

from __future__ import annotations

import re
from typing import Any

import pgvector.sqlalchemy  # noqa: F401  (registers vector/halfvec for reflection)
import sqlalchemy as sa
from alembic.autogenerate import comparators, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.util import DispatchPriority, PriorityDispatchResult

from semdb.alembic.operations import (
    CreateEmbeddingSyncOp,
    CreateVectorIndexOp,
    DropEmbeddingSyncOp,
    DropVectorIndexOp,
    _target_options,
)
from semdb.orm.chunks import chunk_table_name, chunk_vector_spec
from semdb.orm.declaration import EmbeddingSpec, spec_of
from semdb.orm.distance import Distance
from semdb.orm.indexes import METHODS
from semdb.orm.types import VectorType
from semdb.sync.target import SyncTarget
from semdb.sync.triggers import trigger_names

_OP_IMPORT = "import semdb.alembic  # noqa: F401  (op.create_vector_index & co)"
_PGVECTOR_IMPORT = "import pgvector.sqlalchemy"


@comparators.dispatch_for("autogenerate", priority=DispatchPriority.LAST)
def compare_vectors(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps
) -> PriorityDispatchResult:
    connection = autogen_context.connection
    if connection is None or connection.dialect.name != "postgresql":
        return PriorityDispatchResult.CONTINUE
    tables = [
        table
        for table in autogen_context.sorted_tables
        if autogen_context.run_object_filters(table, table.name, "table", False, None)
    ]
    _leave_shadows(connection, upgrade_ops)
    _render_vector_types(autogen_context, upgrade_ops)
    _swap_index_ops(autogen_context, upgrade_ops, tables)
    _index_drift(autogen_context, upgrade_ops, tables)
    _sync_drift(autogen_context, upgrade_ops, tables)
    _leave_partitions(connection, upgrade_ops, tables)
    return PriorityDispatchResult.CONTINUE


# -- partitions ------------------------------------------------------------------------------


def _leave_partitions(
    connection: sa.Connection, upgrade_ops: ops.UpgradeOps, tables: list[sa.Table]
) -> None:
    """The partitions of a declared partitioned table are part of it (made by migrations
    with ``PARTITION OF``, never declared): no drop_table for them, and no drift in the
    indexes PostgreSQL gives them from the partitioned table's."""
    default_schema = connection.dialect.default_schema_name or "public"
    declared = {(table.schema or default_schema, table.name) for table in tables}
    if not declared:
        return
    rows = connection.execute(
        sa.text(
            "SELECT n.nspname, c.relname, rn.nspname, r.relname FROM pg_class AS c "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "JOIN pg_class AS r ON r.oid = pg_partition_root(c.oid) "
            "JOIN pg_namespace AS rn ON rn.oid = r.relnamespace "
            "WHERE c.relispartition"
        )
    ).all()
    partitions = {(row[0], row[1]) for row in rows if (row[2], row[3]) in declared}
    if not partitions:
        return

    def on_partition(op: Any) -> bool:
        name = getattr(op, "table_name", None)
        return name is not None and ((op.schema or default_schema), name) in partitions

    upgrade_ops.ops = [op for op in upgrade_ops.ops if not on_partition(op)]


# -- 0. activations in progress --------------------------------------------------------------


def _leave_shadows(connection: sa.Connection, upgrade_ops: ops.UpgradeOps) -> None:
    """The shadow column of an activation in progress (``semdb model activate``), its
    companions and its indexes are semdb's, for a while: never drift to drop."""
    exists = connection.execute(
        sa.text("SELECT to_regclass('semdb.vector_columns') IS NOT NULL")
    ).scalar()
    if not exists:
        return
    from semdb.db.schema import vector_columns
    from semdb.sync.activation import SHADOW_SUFFIX

    default_schema = connection.dialect.default_schema_name or "public"
    shadows = connection.execute(
        sa.select(
            vector_columns.c.table_schema,
            vector_columns.c.table_name,
            vector_columns.c.column_name,
            vector_columns.c.model_column,
            vector_columns.c.hash_column,
            vector_columns.c.chunking,
        ).where(vector_columns.c.shadow_of.is_not(None))
    ).all()
    if not shadows:
        return
    columns = {(r[0], r[1], name) for r in shadows for name in r[2:5]}
    tables = {(r[0], r[1]) for r in shadows}
    # a chunked column's shadow chunk table, with its indexes
    chunk_tables = {(r[0], chunk_table_name(r[1], r[2])) for r in shadows if r[5] is not None}
    upgrade_ops.ops = [
        op
        for op in upgrade_ops.ops
        if not (
            isinstance(op, (ops.DropTableOp, ops.ModifyTableOps))
            and (op.schema or default_schema, op.table_name) in chunk_tables
        )
    ]
    for container in _containers(upgrade_ops):
        if not isinstance(container, ops.ModifyTableOps):
            continue
        table = (container.schema or default_schema, container.table_name)
        if table not in tables:
            continue
        container.ops = [
            op
            for op in container.ops
            if not (
                (isinstance(op, ops.DropColumnOp) and (*table, op.column_name) in columns)
                or (isinstance(op, ops.DropIndexOp) and str(op.index_name).endswith(SHADOW_SUFFIX))
            )
        ]
    upgrade_ops.ops = [
        op for op in upgrade_ops.ops if not (isinstance(op, ops.ModifyTableOps) and not op.ops)
    ]


# -- 1. column types -------------------------------------------------------------------------


def _pgvector_type(type_: VectorType) -> sa.types.TypeEngine[Any]:
    from pgvector.sqlalchemy import HALFVEC, VECTOR

    return (HALFVEC if type_.storage == "halfvec" else VECTOR)(type_.dimension)


def _render_vector_types(autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps) -> None:
    for op in _walk(upgrade_ops):
        columns: list[sa.Column[Any]] = []
        if isinstance(op, ops.CreateTableOp):
            columns = [c for c in op.columns if isinstance(c, sa.Column)]
        elif isinstance(op, ops.AddColumnOp):
            columns = [op.column]
        elif isinstance(op, ops.DropColumnOp):
            columns = [op.to_column()] if op._reverse is not None else []
        for column in columns:
            if isinstance(column.type, VectorType):
                column.type = _pgvector_type(column.type)
                autogen_context.imports.add(_PGVECTOR_IMPORT)
        if isinstance(op, ops.AlterColumnOp):
            for attribute in ("modify_type", "existing_type"):
                value = getattr(op, attribute, None)
                if isinstance(value, VectorType):
                    setattr(op, attribute, _pgvector_type(value))
                    autogen_context.imports.add(_PGVECTOR_IMPORT)


# -- 2. index operations ---------------------------------------------------------------------


def _metadata_vector_indexes(tables: list[sa.Table]) -> dict[str, tuple[sa.Table, sa.Index]]:
    found = {}
    for table in tables:
        for index in table.indexes:
            if index.info.get("semdb.vector_index") and index.name:
                found[str(index.name)] = (table, index)
    return found


def _create_op_for(table: sa.Table, index: sa.Index) -> CreateVectorIndexOp:
    column = next(iter(_index_columns(index)))
    spec = _indexed_spec(column)
    assert spec is not None and spec.index is not None
    kind = spec.index
    return CreateVectorIndexOp(
        str(index.name),
        table.name,
        column.name,
        dimension=spec.dimension,
        method=kind.method,
        distance=spec.distance.value,
        storage=spec.storage,
        halfvec=kind.halfvec,
        m=getattr(kind, "m", None),
        ef_construction=getattr(kind, "ef_construction", None),
        lists=getattr(kind, "lists", None),
        schema=table.schema,
    )


def _index_columns(index: sa.Index) -> list[sa.Column[Any]]:
    columns: list[sa.Column[Any]] = []
    for expression in index.expressions:
        if isinstance(expression, str):
            continue
        for element in sa.sql.visitors.iterate(expression):
            if isinstance(element, sa.Column) and _indexed_spec(element) is not None:
                columns.append(element)
    return columns


def _indexed_spec(column: sa.Column[Any]) -> EmbeddingSpec | None:
    """The declaration of a vector column, or of the chunked column a chunk table serves."""
    return spec_of(column) or chunk_vector_spec(column)


def _swap_index_ops(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, tables: list[sa.Table]
) -> None:
    declared = _metadata_vector_indexes(tables)
    for container in _containers(upgrade_ops):
        swapped: list[ops.MigrateOperation] = []
        for op in container.ops:
            replacement: ops.MigrateOperation = op
            if isinstance(op, ops.CreateIndexOp) and op.index_name in declared:
                replacement = _create_op_for(*declared[str(op.index_name)])
            elif isinstance(op, ops.DropIndexOp) and _is_vector_method(op.kw):
                reflected = reflect_vector_index(
                    autogen_context.connection, op.schema, str(op.index_name)
                )
                if reflected is not None:
                    replacement = reflected.reverse()
            if replacement is not op:
                autogen_context.imports.add(_OP_IMPORT)
            swapped.append(replacement)
        container.ops[:] = swapped


def _is_vector_method(kw: dict[str, Any]) -> bool:
    return str(kw.get("postgresql_using", "")).lower() in METHODS


# -- 3. drift in vector indexes ----------------------------------------------------------------


def _index_drift(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, tables: list[sa.Table]
) -> None:
    touched = {
        str(op.index_name)
        for op in _walk(upgrade_ops)
        if isinstance(op, (CreateVectorIndexOp, DropVectorIndexOp, ops.CreateIndexOp))
    }
    created_tables = {
        (op.schema, op.table_name) for op in _walk(upgrade_ops) if isinstance(op, ops.CreateTableOp)
    }
    for name, (table, index) in _metadata_vector_indexes(tables).items():
        if name in touched or (table.schema, table.name) in created_tables:
            continue
        wanted = _create_op_for(table, index)
        existing = reflect_vector_index(autogen_context.connection, table.schema, name)
        if existing is None:
            continue  # Alembic itself reports a missing index
        if _signature(existing.reverse()) != _signature(wanted):
            autogen_context.imports.add(_OP_IMPORT)
            upgrade_ops.ops.append(
                ops.ModifyTableOps(table.name, [existing, wanted], schema=table.schema)
            )


def _signature(op: CreateVectorIndexOp) -> tuple[Any, ...]:
    options = op.options()
    options.pop("concurrently", None)
    options.pop("schema", None)
    return (op.table_name, op.column_name, tuple(sorted(options.items())))


_HALFVEC_EXPRESSION = re.compile(
    r'^\(*(?P<column>"(?:[^"]|"")+"|[^()":\s]+)\)*::halfvec\((?P<dimension>\d+)\)\)*$'
)


def reflect_vector_index(
    connection: sa.Connection | None, schema: str | None, name: str
) -> DropVectorIndexOp | None:
    """A reversible drop of the HNSW/IVFFlat index ``name`` as it exists in the database."""
    if connection is None:
        return None
    row = connection.execute(
        sa.text(
            """
            SELECT t.relname AS table_name, am.amname AS method, opc.opcname AS opclass,
                   coalesce(c.reloptions, '{}') AS options,
                   pg_get_indexdef(c.oid, 1, false) AS expression,
                   i.indkey[0] AS attnum, i.indrelid AS table_oid
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_index i ON i.indexrelid = c.oid
            JOIN pg_class t ON t.oid = i.indrelid
            JOIN pg_am am ON am.oid = c.relam
            JOIN pg_opclass opc ON opc.oid = i.indclass[0]
            WHERE c.relname = :name AND n.nspname = coalesce(:schema, current_schema())
            """
        ),
        {"name": name, "schema": schema},
    ).first()
    if row is None or row.method not in METHODS:
        return None
    parsed = Distance.from_operator_class(row.opclass)
    if parsed is None:
        return None
    distance, index_storage = parsed
    if row.attnum != 0:  # a plain column
        column_name, type_text = connection.execute(
            sa.text(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = :table AND attnum = :attnum"
            ),
            {"table": row.table_oid, "attnum": row.attnum},
        ).one()
        match = re.match(r"^(vector|halfvec)\((\d+)\)$", type_text)
        if match is None:
            return None
        storage, dimension, halfvec = match.group(1), int(match.group(2)), False
    else:
        match = _HALFVEC_EXPRESSION.match(row.expression.strip())
        if match is None:
            return None
        column_name = match.group("column")
        if column_name.startswith('"'):
            column_name = column_name[1:-1].replace('""', '"')
        storage, dimension, halfvec = "vector", int(match.group("dimension")), True
    options: dict[str, Any] = {}
    for item in row.options:
        key, _, value = str(item).partition("=")
        options[key] = int(value)
    create = CreateVectorIndexOp(
        name,
        row.table_name,
        column_name,
        dimension=dimension,
        method=row.method,
        distance=distance.value,
        storage=storage if not halfvec else "vector",
        halfvec=halfvec and index_storage == "halfvec",
        m=options.get("m"),
        ef_construction=options.get("ef_construction"),
        lists=options.get("lists"),
        schema=schema,
    )
    return create.reverse()


# -- 4. embedding sync -------------------------------------------------------------------------


def _sync_drift(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, tables: list[sa.Table]
) -> None:
    connection = autogen_context.connection
    assert connection is not None
    default_schema = connection.dialect.default_schema_name or "public"
    declared: dict[tuple[str, str, str], tuple[sa.Table, SyncTarget]] = {}
    for table in tables:
        for column in table.c:
            if spec_of(column) is not None:
                target = SyncTarget.from_column(column, default_schema=default_schema)
                declared[(target.table_schema, target.table_name, target.column_name)] = (
                    table,
                    target,
                )
    registered = _registered(connection)
    if not declared and not registered:
        return
    keyword = _keyword_columns(connection)
    dropped_tables = {
        (op.schema or default_schema, op.table_name)
        for op in _walk(upgrade_ops)
        if isinstance(op, ops.DropTableOp)
    }
    table_names = {(t.schema or default_schema, t.name) for t in tables}
    creates: list[ops.MigrateOperation] = []
    drops: list[ops.MigrateOperation] = []
    for key, (table, target) in declared.items():
        existing = registered.get(key)
        spec = spec_of(table.c[target.column_name])
        want, have = bool(spec is not None and spec.keyword), key in keyword
        up_to_date = existing is not None and existing.as_row() == target.as_row()
        if up_to_date and target.sync == "queued":
            up_to_date = _triggers_present(connection, target)
        if not up_to_date or want != have:
            create = CreateEmbeddingSyncOp.from_target(
                target, schema=table.schema, keyword=want if (want or have) else None
            )
            previous = have if (want or have) else None
            creates.append(_with_reverse(create, existing, table.schema, previous))
    for key, existing in registered.items():
        schema_table = (existing.table_schema, existing.table_name)
        if key in declared or (
            schema_table not in table_names and schema_table not in dropped_tables
        ):
            continue
        schema = None if existing.table_schema == default_schema else existing.table_schema
        drops.append(
            DropEmbeddingSyncOp(
                existing.table_name,
                existing.column_name,
                schema=schema,
                **_target_options(existing),
                **({"keyword": True} if key in keyword else {}),
            )
        )
    if creates or drops:
        autogen_context.imports.add(_OP_IMPORT)
        upgrade_ops.ops[:0] = drops
        upgrade_ops.ops.extend(creates)


class _ReplaceSyncOp(CreateEmbeddingSyncOp):
    """A create over an existing registration: its reverse restores the previous one."""

    previous: CreateEmbeddingSyncOp | None = None

    def reverse(self) -> Any:
        return self.previous if self.previous is not None else super().reverse()


def _with_reverse(
    create: CreateEmbeddingSyncOp,
    existing: SyncTarget | None,
    schema: str | None,
    keyword: bool | None = None,
) -> CreateEmbeddingSyncOp:
    """``create`` over an existing registration: its reverse restores the registration and
    the keyword statistics (``keyword``: whether they were installed; None: untouched)."""
    if existing is None:
        return create
    replacement = _ReplaceSyncOp(
        create.table_name, create.column_name, schema=schema, **create.options()
    )
    replacement.previous = CreateEmbeddingSyncOp.from_target(
        existing, schema=schema, keyword=keyword
    )
    return replacement


def _keyword_columns(connection: sa.Connection) -> set[tuple[str, str, str]]:
    """The registered columns with BM25 statistics and postings (``keyword=True``)."""
    exists = connection.execute(
        sa.text("SELECT to_regclass('semdb.bm25_stats') IS NOT NULL")
    ).scalar()
    if not exists:
        return set()
    from semdb.db.schema import bm25_stats, vector_columns

    rows = connection.execute(
        sa.select(
            vector_columns.c.table_schema, vector_columns.c.table_name, vector_columns.c.column_name
        )
        .join(bm25_stats, bm25_stats.c.column_id == vector_columns.c.id)
        .where(bm25_stats.c.postings.is_not(None))
    ).all()
    return {(row[0], row[1], row[2]) for row in rows}


def _registered(connection: sa.Connection) -> dict[tuple[str, str, str], SyncTarget]:
    exists = connection.execute(
        sa.text("SELECT to_regclass('semdb.vector_columns') IS NOT NULL")
    ).scalar()
    if not exists:
        return {}
    from semdb.db.schema import vector_columns

    rows = connection.execute(
        sa.select(vector_columns).where(vector_columns.c.shadow_of.is_(None))
    ).all()
    targets = [SyncTarget.from_row(row) for row in rows]
    return {(t.table_schema, t.table_name, t.column_name): t for t in targets}


def _triggers_present(connection: sa.Connection, target: SyncTarget) -> bool:
    names = list(trigger_names(target))
    count = connection.execute(
        sa.text(
            "SELECT count(*) FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = :table AND g.tgname = ANY(:names)"
        ),
        {"schema": target.table_schema, "table": target.table_name, "names": names},
    ).scalar()
    return count == len(names)


# -- rendering -------------------------------------------------------------------------------


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Pass as ``context.configure(render_item=semdb.alembic.render_item)``: renders vector
    types as ``pgvector.sqlalchemy.VECTOR(dim=384)`` and adds the import they need."""
    if type_ != "type":
        return False
    from pgvector.sqlalchemy import HALFVEC, VECTOR

    if isinstance(obj, VectorType):
        obj = _pgvector_type(obj)
    if isinstance(obj, (VECTOR, HALFVEC)):
        autogen_context.imports.add(_PGVECTOR_IMPORT)
        name = "HALFVEC" if isinstance(obj, HALFVEC) else "VECTOR"
        return f"pgvector.sqlalchemy.{name}(dim={obj.dim!r})"
    return False


def _call(
    autogen_context: AutogenContext, name: str, positional: list[Any], options: dict[str, Any]
) -> str:
    autogen_context.imports.add(_OP_IMPORT)
    arguments = [repr(value) for value in positional]
    arguments += [f"{key}={value!r}" for key, value in options.items()]
    return f"op.{name}({', '.join(arguments)})"


@renderers.dispatch_for(CreateVectorIndexOp)
def _render_create_vector_index(autogen_context: AutogenContext, op: CreateVectorIndexOp) -> str:
    return _call(
        autogen_context,
        "create_vector_index",
        [op.index_name, op.table_name, op.column_name],
        op.options(),
    )


@renderers.dispatch_for(DropVectorIndexOp)
def _render_drop_vector_index(autogen_context: AutogenContext, op: DropVectorIndexOp) -> str:
    options: dict[str, Any] = {}
    if op.column_name is not None:
        options["column_name"] = op.column_name
    options.update(op.create_options)
    if op.concurrently:
        options["concurrently"] = True
    if op.schema is not None:
        options["schema"] = op.schema
    return _call(autogen_context, "drop_vector_index", [op.index_name, op.table_name], options)


@renderers.dispatch_for(CreateEmbeddingSyncOp)
@renderers.dispatch_for(_ReplaceSyncOp)
def _render_create_sync(autogen_context: AutogenContext, op: CreateEmbeddingSyncOp) -> str:
    options = op.options()  # keyword=True / False when the statistics change
    if op.schema is not None:
        options["schema"] = op.schema
    return _call(autogen_context, "create_embedding_sync", [op.table_name, op.column_name], options)


@renderers.dispatch_for(DropEmbeddingSyncOp)
def _render_drop_sync(autogen_context: AutogenContext, op: DropEmbeddingSyncOp) -> str:
    options = dict(op.create_options)
    if op.schema is not None:
        options["schema"] = op.schema
    return _call(autogen_context, "drop_embedding_sync", [op.table_name, op.column_name], options)


# -- walking the operation tree ----------------------------------------------------------------


def _containers(upgrade_ops: ops.UpgradeOps) -> list[Any]:
    found: list[Any] = [upgrade_ops]
    for op in upgrade_ops.ops:
        if isinstance(op, ops.ModifyTableOps):
            found.append(op)
    return found


def _walk(upgrade_ops: ops.UpgradeOps) -> list[ops.MigrateOperation]:
    found: list[ops.MigrateOperation] = []
    for container in _containers(upgrade_ops):
        for op in container.ops:
            if not isinstance(op, ops.ModifyTableOps):
                found.append(op)
    return found
