"""The triggers that put changed rows in the queue (queued sync mode).

For a vector column ``docs.embedding`` made from ``title`` and ``body``:

- after each INSERT statement, the new rows without a content hash (rows that came without
  a vector made by semdb) are queued, in one ``INSERT ... SELECT`` over the transition table;
- after an UPDATE of ``title`` or ``body`` that really changes one of them, the row is queued.

A queue entry is ``(column_id, key)``, inserted with ``ON CONFLICT DO NOTHING``: it never
waits for a worker (a claimed entry is locked ``FOR UPDATE``, which DO NOTHING does not
wait for) and never fails the write because of semdb (an unregistered column is skipped).
The worker's own vector writes change no source column, so they queue nothing.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from semdb.sync.target import SyncTarget

_MAX_NAME = 63


def _short(name: str) -> str:
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name.encode()[: _MAX_NAME - 9].decode(errors="ignore") + "_" + digest


def function_names(target: SyncTarget) -> tuple[str, str]:
    """The two trigger functions' names (in the semdb schema)."""
    base = f"sync_{target.table_schema}_{target.table_name}_{target.column_name}"
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    stem = _short(f"sync_{target.table_name}_{target.column_name}")[:50] + f"_{digest}"
    return f"{stem}_ins", f"{stem}_upd"


def trigger_names(target: SyncTarget) -> tuple[str, str]:
    return (
        _short(f"semdb_sync_{target.column_name}_insert"),
        _short(f"semdb_sync_{target.column_name}_update"),
    )


def install_statements(target: SyncTarget) -> list[sql.Composable]:
    """CREATE OR REPLACE the functions and (re)create the triggers."""
    insert_function, update_function = function_names(target)
    insert_trigger, update_trigger = trigger_names(target)
    lookup = sql.SQL(
        "SELECT id FROM semdb.vector_columns "
        "WHERE table_schema = {} AND table_name = {} AND column_name = {}"
    ).format(
        sql.Literal(target.table_schema),
        sql.Literal(target.table_name),
        sql.Literal(target.column_name),
    )
    insert_body = sql.SQL(
        """
DECLARE
    target_id integer;
BEGIN
    {lookup} INTO target_id;
    IF target_id IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO semdb.queue (column_id, key)
    SELECT target_id, {key_new} FROM semdb_inserted AS n
    WHERE n.{hash} IS NULL
    ON CONFLICT (column_id, key) DO NOTHING;
    RETURN NULL;
END
"""
    ).format(
        lookup=lookup,
        key_new=target.key_json_sql("n"),
        hash=sql.Identifier(target.hash_column),
    )
    update_body = sql.SQL(
        """
DECLARE
    target_id integer;
BEGIN
    {lookup} INTO target_id;
    IF target_id IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO semdb.queue (column_id, key)
    VALUES (target_id, {key_new})
    ON CONFLICT (column_id, key) DO NOTHING;
    RETURN NULL;
END
"""
    ).format(lookup=lookup, key_new=target.key_json_sql("new"))

    def function(name: str, body: sql.Composable) -> sql.Composable:
        return sql.SQL(
            "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}"
        ).format(
            name=sql.Identifier("semdb", name),
            body=sql.Literal(body.as_string(None)),
        )

    changed = sql.SQL(" OR ").join(
        sql.SQL("OLD.{0} IS DISTINCT FROM NEW.{0}").format(sql.Identifier(source))
        for source in target.sources
    )
    return [
        function(insert_function, insert_body),
        function(update_function, update_body),
        *uninstall_statements(target, functions=False),
        sql.SQL(
            "CREATE TRIGGER {trigger} AFTER INSERT ON {table} "
            "REFERENCING NEW TABLE AS semdb_inserted "
            "FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        ).format(
            trigger=sql.Identifier(insert_trigger),
            table=target.table_sql,
            function=sql.Identifier("semdb", insert_function),
        ),
        sql.SQL(
            "CREATE TRIGGER {trigger} AFTER UPDATE OF {sources} ON {table} "
            "FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION {function}()"
        ).format(
            trigger=sql.Identifier(update_trigger),
            sources=sql.SQL(", ").join(sql.Identifier(s) for s in target.sources),
            table=target.table_sql,
            changed=changed,
            function=sql.Identifier("semdb", update_function),
        ),
    ]


def uninstall_statements(target: SyncTarget, *, functions: bool = True) -> list[sql.Composable]:
    """DROP the triggers (and their functions)."""
    statements: list[sql.Composable] = [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), target.table_sql)
        for name in trigger_names(target)
    ]
    if functions:
        statements += [
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier("semdb", name))
            for name in function_names(target)
        ]
    return statements
