"""``semdb.vector_columns``: which vector columns semdb keeps in sync, readable by any host."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert

from semdb.db.schema import vector_columns
from semdb.errors import SchemaNotReadyError, SyncError
from semdb.sync.target import SyncTarget


def register_statement(target: SyncTarget) -> sa.Executable:
    """An upsert of ``target`` (what the migration operation runs)."""
    row = target.as_row()
    statement = insert(vector_columns).values(**row)
    keys = ("table_schema", "table_name", "column_name")
    return statement.on_conflict_do_update(
        index_elements=list(keys), set_={k: v for k, v in row.items() if k not in keys}
    )


def unregister_statement(target: SyncTarget) -> sa.Executable:
    return sa.delete(vector_columns).where(
        vector_columns.c.table_schema == target.table_schema,
        vector_columns.c.table_name == target.table_name,
        vector_columns.c.column_name == target.column_name,
    )


def register(connection: Connection, target: SyncTarget) -> SyncTarget:
    """Record ``target`` (insert or update); returns it with its id."""
    _require_schema(connection)
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


def registered(
    connection: Connection, *, model: str | None = None, names: list[str] | None = None
) -> list[SyncTarget]:
    """The registered columns, optionally those of ``model`` or named ``[schema.]table.column``."""
    _require_schema(connection)
    statement = sa.select(vector_columns).order_by(vector_columns.c.id)
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


def _require_schema(connection: Connection) -> None:
    exists = connection.execute(
        sa.text("SELECT to_regclass('semdb.vector_columns') IS NOT NULL")
    ).scalar()
    if not exists:
        raise SchemaNotReadyError(
            "semdb's sync tables are missing from this database",
            fix="run: semdb db upgrade",
        )
