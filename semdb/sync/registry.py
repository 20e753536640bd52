"""``semdb.vector_columns``: which vector columns semdb keeps in sync, readable by any host.

Also the one answer to "which model made the vectors of this column, now": the registry row
(``model``, pinned ``model_version`` after an activation, ``dimension``).
:func:`model_agrees` is what a text search adds to its statement (and :func:`check_query_model`
what it asks when that statement returns too few rows), so that a query is never compared with
vectors of another model, even while an activation switches the column (see
:mod:`semdb.sync.activation`).
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert

from semdb.db.partitions import check_sync_key
from semdb.db.schema import vector_columns
from semdb.errors import DimensionMismatchError, SchemaNotReadyError, SearchError, SyncError
from semdb.orm.columns import VectorColumn
from semdb.protocols import TextEmbedder
from semdb.sync.target import SyncTarget


def register_statement(target: SyncTarget) -> sa.Executable:
    """An upsert of ``target`` (what the migration operation runs)."""
    row = target.as_row()
    statement = insert(vector_columns).values(**row)
    keys = ("table_schema", "table_name", "column_name")
    updates: dict[str, Any] = {k: v for k, v in row.items() if k not in keys}
    # A version pinned by an activation stays, unless the migration names another model.
    updates["model_version"] = sa.case(
        (vector_columns.c.model == statement.excluded.model, vector_columns.c.model_version),
        else_=sa.null(),
    )
    return statement.on_conflict_do_update(index_elements=list(keys), set_=updates)


def unregister_statement(target: SyncTarget) -> sa.Executable:
    return sa.delete(vector_columns).where(
        vector_columns.c.table_schema == target.table_schema,
        vector_columns.c.table_name == target.table_name,
        vector_columns.c.column_name == target.column_name,
    )


def register(connection: Connection, target: SyncTarget) -> SyncTarget:
    """Record ``target`` (insert or update); returns it with its id."""
    _require_schema(connection)
    check_sync_key(connection, target.table_schema, target.table_name, target.key_columns)
    connection.execute(register_statement(target))
    found = find(connection, target.table_schema, target.table_name, target.column_name)
    assert found is not None
    return found


def find(connection: Connection, schema: str, table: str, column: str) -> SyncTarget | None:
    row = connection.execute(
        sa.select(vector_columns).where(
            vector_columns.c.table_schema == schema,
            vector_columns.c.table_name == table,
            vector_columns.c.column_name == column,
        )
    ).first()
    return None if row is None else SyncTarget.from_row(row)


def registered_target(connection: Connection, declared: SyncTarget) -> SyncTarget | None:
    """The registration of the column ``declared`` names, or None (no registry, or the
    column is not in it)."""
    if not has_registry(connection):
        return None
    return find(connection, declared.table_schema, declared.table_name, declared.column_name)


def registered(
    connection: Connection,
    *,
    model: str | None = None,
    names: list[str] | None = None,
    shadows: bool = True,
) -> list[SyncTarget]:
    """The registered columns, optionally those of ``model`` or named ``[schema.]table.column``.

    ``shadows=False`` leaves out the shadow columns of activations in progress (the columns
    queries do not see).
    """
    _require_schema(connection)
    statement = sa.select(vector_columns).order_by(vector_columns.c.id)
    if not shadows:
        statement = statement.where(vector_columns.c.shadow_of.is_(None))
    if model is not None:
        statement = statement.where(vector_columns.c.model == model)
    targets = [SyncTarget.from_row(row) for row in connection.execute(statement)]
    if names:
        wanted = []
        for name in names:
            parts = name.split(".")
            matches = [t for t in targets if _matches(t, parts)]
            if not matches:
                known = ", ".join(t.name for t in targets) or "none"
                raise SyncError(
                    f"no registered vector column is called {name!r} (registered: {known})",
                    fix="name it as table.column or schema.table.column, or register it with "
                    "a migration (op.create_embedding_sync)",
                )
            wanted += [m for m in matches if m not in wanted]
        targets = wanted
    return targets


def _matches(target: SyncTarget, parts: list[str]) -> bool:
    if len(parts) == 3:
        return [target.table_schema, target.table_name, target.column_name] == parts
    if len(parts) == 2:
        return [target.table_name, target.column_name] == parts
    if len(parts) == 1:
        return target.table_name == parts[0]
    return False


def bind_model_version(
    connection: Connection, target: SyncTarget, name: str, version: str
) -> SyncTarget:
    """Bind ``target``'s column to one exact version of its model, if it is bound to none
    yet; returns the registration as it is then.

    A column registered with a model name alone (``model="all-MiniLM-L6-v2"``) is bound at
    its first embedding: to the version its stored vectors already carry, if they carry one,
    else to ``version`` (the writer's). From then on only that version writes into it (and
    queries it): ``semdb model activate`` alone moves it to another one. Writers of another
    model name, shadow columns and unregistered columns are left as they are. The caller
    commits.
    """
    if target.id is None or target.model != name or target.model_version is not None:
        return target
    stored = _stored_version(connection, target, name, version)
    connection.execute(
        sa.update(vector_columns)
        .where(vector_columns.c.id == target.id, vector_columns.c.model_version.is_(None))
        .values(model_version=stored or version)
    )
    bound = find(connection, target.table_schema, target.table_name, target.column_name)
    return bound or target


def _stored_version(
    connection: Connection, target: SyncTarget, name: str, version: str
) -> str | None:
    """The version of ``name`` that a vector stored in the column carries, if any carries
    another than ``version`` (one read, which stops at the first such row)."""
    table = sa.table(
        target.table_name, sa.column(target.model_column, sa.Text), schema=target.table_schema
    )
    tag = table.c[target.model_column]
    other = connection.execute(
        sa.select(tag)
        .where(tag.startswith(f"{name}@", autoescape=True), tag != f"{name}@{version}")
        .limit(1)
    ).scalar()
    if other is None:
        return None
    return str(other).partition("@")[2] or None


def version_refusal(target: SyncTarget, name: str, version: str, who: str) -> SyncError:
    """The error for a writer of ``name@version`` on a column bound to another version."""
    return SyncError(
        f"{target.name} holds vectors of {target.model_tag}; {who} runs {name}@{version}: "
        "one column holds the vectors of one model version",
        fix=f"use the model {target.model_tag} (--model {target.model_tag}), or move the column "
        f"to the other version with: semdb model activate {name}@{version} --column "
        f"{target.name}",
    )


_REGISTRY_SEEN: weakref.WeakKeyDictionary[sa.Engine, bool] = weakref.WeakKeyDictionary()


def has_registry(connection: Connection) -> bool:
    """Does this database have semdb.vector_columns? (Remembered per engine once it has.)"""
    engine = connection.engine
    if _REGISTRY_SEEN.get(engine):
        return True
    exists = bool(
        connection.execute(
            sa.text("SELECT to_regclass('semdb.vector_columns') IS NOT NULL")
        ).scalar()
    )
    if exists:
        _REGISTRY_SEEN[engine] = True
    return exists


def _require_schema(connection: Connection) -> None:
    exists = connection.execute(
        sa.text("SELECT to_regclass('semdb.vector_columns') IS NOT NULL")
    ).scalar()
    if not exists:
        raise SchemaNotReadyError(
            "semdb's sync tables are missing from this database",
            fix="run: semdb db upgrade",
        )


def current_model_statement(target: VectorColumn, default_schema: str) -> sa.Select[Any]:
    """The registry row of ``target``'s column, read under a lock on its table.

    The reference to the table (a subquery that reads no row) makes PostgreSQL take ACCESS
    SHARE on it before the statement's snapshot is taken, and keep it to the end of the
    transaction: an activation's switch (ACCESS EXCLUSIVE) either committed before this read,
    and the row says so, or waits until the caller's transaction (its search) is over.
    """
    table = target.table
    holds_table = sa.exists(sa.select(sa.literal(1)).select_from(table).where(sa.false()))
    return sa.select(
        vector_columns.c.model, vector_columns.c.model_version, vector_columns.c.dimension
    ).where(
        vector_columns.c.table_schema == (table.schema or default_schema),
        vector_columns.c.table_name == table.name,
        vector_columns.c.column_name == target.column.name,
        vector_columns.c.shadow_of.is_(None),
        ~holds_table,
    )


#: The values :func:`model_agrees` compares the registry row with: the query's embedder's.
QUERY_MODEL = ("semdb_query_model", "semdb_query_model_version", "semdb_query_dimension")


def model_agrees(target: VectorColumn, default_schema: str) -> sa.ColumnElement[bool]:
    """What a text search adds to its own statement: false when the registry row of
    ``target``'s column names another model, pinned version or dimension than the query's
    embedder (bound as :data:`QUERY_MODEL`, see :func:`query_model_values`).

    The condition reads no row of the searched table, so PostgreSQL evaluates it once, under
    the statement's snapshot, taken after the statement locked the table it searches (the
    guarantee of :func:`current_model_statement`, without its round trip). A mismatch returns
    no rows; the search then asks :func:`check_query_model` for the error.
    """
    c = vector_columns.c
    model = sa.bindparam(QUERY_MODEL[0], type_=sa.Text)
    version = sa.bindparam(QUERY_MODEL[1], type_=sa.Text)
    dimension = sa.bindparam(QUERY_MODEL[2], type_=sa.Integer)
    table = target.table
    return ~sa.exists().where(
        c.table_schema == (table.schema or default_schema),
        c.table_name == table.name,
        c.column_name == target.column.name,
        c.shadow_of.is_(None),
        sa.or_(
            c.model != model,
            c.dimension != dimension,
            sa.and_(c.model_version != "", c.model_version != version),
        ),
    )


def query_model_values(embedder: TextEmbedder) -> dict[str, Any]:
    """The values of :func:`model_agrees`'s parameters for ``embedder``."""
    model, version, dimension = QUERY_MODEL
    return {
        model: embedder.model_name,
        version: embedder.model_version,
        dimension: embedder.dimension,
    }


#: The model-check statement of each column (a select() is immutable): SQLAlchemy then finds
#: its compiled form without building and walking a new statement per text search.
_model_statements: dict[tuple[Any, str], sa.Select[Any]] = {}


def check_query_model(connection: Connection, column: Any, embedder: TextEmbedder) -> None:
    """Raise unless ``embedder`` is the model whose vectors ``column`` holds now.

    ``column``: ``Doc.embedding``, ``docs.c.embedding`` or a VectorColumn. Columns missing
    from the registry (declared only in Python) are left to the declaration's checks.
    Returns nothing useful beyond the check; one indexed read of a small table.
    """
    from semdb.orm.columns import vector_column

    target = vector_column(column)
    if not has_registry(connection):
        return
    default_schema = connection.dialect.default_schema_name or "public"
    key = (target.column, default_schema)
    statement = _model_statements.get(key)
    if statement is None:  # built once per column: building it cost 0.26 ms a text search
        if len(_model_statements) >= 256:
            _model_statements.clear()
        statement = _model_statements[key] = current_model_statement(target, default_schema)
    row = connection.execute(statement).first()
    if row is None:
        return
    model, version, dimension = row
    tag = f"{model}@{version}" if version else model
    spec = target.spec
    if model != spec.model or dimension != spec.dimension:
        raise SearchError(
            f"{target.name} is declared with model {spec.model!r} ({spec.dimension} "
            f"dimensions), but the database column now holds vectors of {tag} ({dimension} "
            "dimensions): the column was switched with semdb model activate",
            fix=f"update the declaration: embedding_column(..., model={model!r}, "
            f"dimension={dimension}), and load that model",
        )
    if embedder.dimension != dimension:
        raise DimensionMismatchError(
            f"{target.name} holds {dimension}-dimensional vectors of {tag}; the embedder "
            f"makes {embedder.dimension}-dimensional ones ({embedder.model_name})",
            fix=f"load the model {tag}",
        )
    if embedder.model_name != model or (version and embedder.model_version != version):
        raise SearchError(
            f"{target.name} holds vectors of {tag}; the embedder is "
            f"{embedder.model_name}@{embedder.model_version}: its vectors are not comparable",
            fix=f"load the model {tag}: semdb.Embedder.load({tag!r})",
        )
