"""Switching a vector column to another model: a shadow column, filled by the workers, then
swapped in at once (``semdb model activate NAME[@VERSION] --column TABLE.COLUMN``).

The design, step by step, for ``docs.embedding`` going from ``tiny@1`` to ``big@2``:

1. **Start** (one short transaction, :func:`start_activation`). The model must be in the
   database's registry (``semdb.models``: it gives the version and the dimension, which may
   differ from the column's). The column must be registered and kept in sync by workers
   (``queued``). semdb adds the shadow column ``embedding__next`` (``vector(<new dim>)``,
   same storage) and its companions ``embedding__next_model`` and ``embedding__next_hash``,
   registers the shadow in ``semdb.vector_columns`` (``shadow_of`` = the live column's id,
   model and version pinned) with its own queue triggers, and records the activation in
   ``semdb.activations`` (``filling``). From then on every inserted or changed row is queued
   twice: for the live column (the old model's workers keep it fresh, queries go on using
   it) and for the shadow (the new model's workers fill it).
2. **Fill.** Every existing row is queued for the shadow (a second transaction that only
   reads the table), and the workers of the new model (``semdb worker --model big@2``, on
   any number of hosts) embed them like any queued work, claimed with SKIP LOCKED; ``semdb
   backfill --model big@2`` fills it too, and ``--embed`` runs a worker in the activating
   process. Queries never see the shadow. If the live column was registered without a
   version, starting pins it to the one version its stored vectors carry, so that a worker
   of another version of its model never writes into it.
3. **Index.** When the shadow's queue is empty, its vector indexes are built ``CONCURRENTLY``
   (the live column's HNSW/IVFFlat indexes, same method, options and distance, new
   dimension), with the table in full use.
4. **Switch** (one transaction, :func:`finish_activation`). It locks the two registrations
   ``FOR UPDATE`` (so it waits for the batch a worker is writing: every batch holds its
   column's registration, see :mod:`semdb.sync.registration`), then the table against
   writes, and checks that no row of the shadow is stale (else it changes nothing). Then,
   under ACCESS EXCLUSIVE for a few milliseconds: the old column, its companions and its
   indexes are dropped, the shadow and its indexes take their names, the shadow's queue
   entries and errors move to the column, and the registry row says ``big``, version ``2``
   and the new dimension. A query runs either wholly before (old vectors) or wholly after
   (new vectors). The model becomes the active version of its name in ``semdb.models``.

A **chunked** column (``chunking=semdb.Chunks(...)``) is switched the same way, with its chunk
table: starting creates the shadow chunk table ``<table>_<column>__next_chunks`` (the live
one's columns, the new dimension, its primary key and its foreign key ``ON DELETE CASCADE``
to the parent), which the new model's workers and backfill fill as they fill the shadow
column (the new model's tokenizer splits the texts); searches keep reading the live chunk
table, made by the old model. Its vector indexes are built with the shadow column's, and the
switch, in its one transaction, drops the live chunk table and gives the shadow one its name,
its constraints' and its indexes' names: no chunk of the old model is left, and a parent
deleted during the fill took its shadow chunks with it.

The old vectors are dropped: going back is another activation (``semdb model activate
tiny@1 --column docs.embedding``), which re-embeds. ``semdb model cancel`` drops the shadow
and leaves the column as it was. Everything is resumable: running ``activate`` again for an
activation in progress re-queues what the shadow still lacks and goes on; a worker killed
mid-batch loses nothing (its claims return to the queue).

Queries must embed their text with the model the column holds now: a text search's statement
reads the registry row too (:func:`semdb.sync.registry.model_agrees`), under a lock that the
switch waits for, so a query embedded by the old model is never compared with the new
vectors. Update the ORM declaration (``model=``, ``dimension=``) after a switch; until then
text searches on it fail with that fix, they never return wrong neighbours.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from semdb.db.partitions import (
    Partition,
    index_validity,
    partition_index_name,
    partition_tree,
)
from semdb.db.url import libpq_uri
from semdb.errors import DimensionMismatchError, SemdbError, SyncError
from semdb.orm.chunks import VECTOR, chunk_table_name, parent_key_name
from semdb.orm.distance import Distance
from semdb.orm.indexes import METHODS
from semdb.sync.backfill import stale_condition
from semdb.sync.target import SyncTarget, ident
from semdb.sync.triggers import install_statements, uninstall_statements

SHADOW_SUFFIX = "__next"
# pgvector's HNSW and IVFFlat indexes take at most this many dimensions, by storage.
INDEX_MAX_DIMENSIONS = {"vector": 2000, "halfvec": 4000}
_MAX_NAME = 63


class ActivationError(SemdbError):
    """An activation cannot start, go on or finish as asked."""


class NotReady(ActivationError):
    """The shadow column still lacks vectors: the switch changed nothing."""

    def __init__(self, stale: int, queued: int) -> None:
        super().__init__(
            f"{stale} row(s) of the shadow column are not embedded yet ({queued} queued)",
            fix="run workers of the new model, then semdb model activate again",
        )
        self.stale = stale
        self.queued = queued


@dataclass(frozen=True)
class Activation:
    """One row of ``semdb.activations``, with the two columns it concerns."""

    id: int
    column: SyncTarget  # the live column (as it was when read)
    shadow: SyncTarget | None  # None once switched or cancelled
    from_model: str
    to_model: str  # name@version
    dimension: int
    status: str  # filling, switched, cancelled
    started_at: datetime
    finished_at: datetime | None

    @property
    def model_name(self) -> str:
        return self.to_model.partition("@")[0]

    @property
    def model_version(self) -> str:
        return self.to_model.partition("@")[2]


@dataclass(frozen=True)
class Progress:
    """How far the shadow column is: rows in the table, entries still queued for it."""

    rows: int
    queued: int

    @property
    def done(self) -> int:
        return max(self.rows - self.queued, 0)


# -- the model ----------------------------------------------------------------------------------


def resolve_model(engine: sa.Engine, ref: str) -> tuple[str, str, int]:
    """``name`` or ``name@version`` -> (name, version, dimension) from ``semdb.models``.

    A bare name means its active version, else its only one.
    """
    from semdb.bundles.manifest import check_name
    from semdb.bundles.registry import list_registered

    name, _, version = ref.partition("@")
    check_name(name)
    if version or ref.endswith("@"):
        check_name(version, "model version")
    rows = [r for r in list_registered(engine) if r.name == name]
    chosen = [r for r in rows if r.version == version] if version else rows
    if not version and len(rows) > 1:
        chosen = [r for r in rows if r.active]
    if len(chosen) == 1:
        row = chosen[0]
        return row.name, row.version, row.dimension
    if rows and version:
        known = ", ".join(r.version for r in rows)
        raise ActivationError(
            f"model {name} has no version {version} in the registry (versions: {known})",
            fix=f"register it: semdb model register {ref}",
        )
    if rows:
        known = ", ".join(r.version for r in rows)
        raise ActivationError(
            f"model {name} has several registered versions ({known}) and none is active",
            fix=f"name one: {name}@<version>",
        )
    raise ActivationError(
        f"model {ref!r} is not in the database's model registry",
        fix=f"register its bundle first: semdb model register {ref} (see semdb model list)",
    )


# -- names --------------------------------------------------------------------------------------


def _short(name: str) -> str:
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name.encode()[: _MAX_NAME - 9].decode(errors="ignore") + "_" + digest


def shadow_names(column: SyncTarget) -> tuple[str, str, str]:
    """The shadow vector column and its model and hash companions."""
    stem = column.column_name + SHADOW_SUFFIX
    return _short(stem), _short(stem + "_model"), _short(stem + "_hash")


@contextmanager
def _connect(engine: sa.Engine, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection; a lock not granted in time becomes an error that says what to do."""
    try:
        with psycopg.connect(
            libpq_uri(engine.url), application_name="semdb activate", autocommit=autocommit
        ) as connection:
            yield connection
    except psycopg.errors.LockNotAvailable as exc:
        raise ActivationError(
            "the table or its registration stayed locked by other transactions (a long "
            "transaction, or a session left open) longer than the lock timeout; nothing changed",
            fix="end long-running transactions on the table, then run semdb model activate "
            "again (it resumes)",
        ) from exc
    except psycopg.errors.DuplicateColumn as exc:  # two starts at once: the other one won
        raise ActivationError(
            f"another activation of this column started at the same time ({exc})",
            fix="see semdb model status; run semdb model activate again to resume it",
        ) from exc


def _run(connection: psycopg.Connection[Any], statement: sql.Composable) -> None:
    """A composed DDL statement (no parameters)."""
    connection.execute(statement.as_string(connection))


def _set_lock_timeout(connection: psycopg.Connection[Any], seconds: float) -> None:
    connection.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(seconds * 1000)}ms",))


def _live_column(engine: sa.Engine, name: str) -> SyncTarget:
    from semdb.sync.registry import registered

    with engine.connect() as connection:
        targets = registered(connection, names=[name], shadows=False)
    if len(targets) != 1:
        raise ActivationError(
            f"{name!r} names {len(targets)} registered columns: "
            f"{', '.join(t.name for t in targets)}",
            fix="name one as table.column or schema.table.column",
        )
    return targets[0]


def _target(connection: psycopg.Connection[Any], column_id: int | None) -> SyncTarget | None:
    if column_id is None:
        return None
    with connection.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            "SELECT * FROM semdb.vector_columns WHERE id = %s", (column_id,)
        ).fetchone()
    return None if row is None else SyncTarget.from_row(row)


def _activation(connection: psycopg.Connection[Any], row: dict[str, Any]) -> Activation:
    column = _target(connection, row["column_id"])
    if column is None:
        raise ActivationError(
            f"activation {row['id']} concerns a vector column that is no longer registered",
            fix="nothing to finish: the column's sync was dropped",
        )
    shadow = _target(connection, row["shadow_column_id"]) if row["status"] == "filling" else None
    return Activation(
        id=row["id"],
        column=column,
        shadow=shadow,
        from_model=row["from_model"],
        to_model=row["to_model"],
        dimension=row["dimension"],
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _filling(
    connection: psycopg.Connection[Any], column_id: int, *, lock: bool = False
) -> dict[str, Any] | None:
    statement = "SELECT * FROM semdb.activations WHERE column_id = %s AND status = 'filling'"
    with connection.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(statement + (" FOR UPDATE" if lock else ""), (column_id,)).fetchone()


def list_activations(engine: sa.Engine, column: str | None = None) -> list[Activation]:
    """Every activation (of ``column``), newest first."""
    live = _live_column(engine, column) if column else None
    with _connect(engine) as connection, connection.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            "SELECT * FROM semdb.activations WHERE %(id)s::int IS NULL OR column_id = %(id)s "
            "ORDER BY id DESC",
            {"id": live.id if live else None},
        ).fetchall()
        return [
            _activation(connection, row) for row in rows if _target(connection, row["column_id"])
        ]


# -- start --------------------------------------------------------------------------------------


def start_activation(
    engine: sa.Engine,
    column: str,
    model: str,
    *,
    dimension: int | None = None,
    lock_timeout_seconds: float = 10.0,
) -> Activation:
    """Start switching ``column`` (``[schema.]table.column``) to ``model`` (``name[@version]``),
    or resume the activation to that model already in progress. Returns it; the shadow's
    rows are queued for the new model's workers.

    ``dimension``: the dimension you expect the new vectors to have (a guard: the model's
    must match).
    """
    name, version, model_dimension = resolve_model(engine, model)
    tag = f"{name}@{version}"
    live = _live_column(engine, column)
    assert live.id is not None
    if dimension is not None and dimension != model_dimension:
        raise DimensionMismatchError(
            f"{tag} makes {model_dimension}-dimensional vectors, not the {dimension} asked for",
            fix=f"pass --dimension {model_dimension}, or activate another model",
        )
    _check_can_start(live, name, version, model_dimension)
    with _connect(engine) as connection:
        if live.model_version is None:
            with connection.transaction():  # reads the table: before any lock against reads
                _pin_live_version(connection, live)
            live = _target(connection, live.id) or live
        assert live.id is not None
        with connection.transaction():
            _set_lock_timeout(connection, lock_timeout_seconds)
            running = _filling(connection, live.id, lock=True)
            if running is not None and running["to_model"] != tag:
                raise ActivationError(
                    f"{live.name} is already being switched to {running['to_model']} "
                    f"(activation {running['id']}, started {running['started_at']:%Y-%m-%d %H:%M})",
                    fix=f"finish it (semdb model activate {running['to_model']} --column "
                    f"{live.name}) or cancel it (semdb model cancel --column {live.name})",
                )
            if running is None:
                _check_can_start(live, name, version, model_dimension)  # pinned now
                _create_shadow(connection, live, name, version, model_dimension)
        activation = _activation_of(connection, live.id)
        enqueue_stale(connection, activation)
        return activation


def _activation_of(connection: psycopg.Connection[Any], column_id: int) -> Activation:
    row = _filling(connection, column_id)
    assert row is not None
    return _activation(connection, row)


def _check_can_start(live: SyncTarget, name: str, version: str, dimension: int) -> None:
    if live.sync != "queued":
        raise ActivationError(
            f"{live.name} is synced {live.sync}: only columns kept by workers (queued) can be "
            "switched while the application writes",
            fix=f"register it with mode='queued' (op.create_embedding_sync) to activate {name}",
        )
    if live.model == name and live.model_version == version:
        raise ActivationError(
            f"{live.name} already holds vectors of {name}@{version}",
            fix="nothing to do (semdb model status shows the columns' models)",
        )
    limit = INDEX_MAX_DIMENSIONS[live.index_storage]
    if dimension > limit:
        raise DimensionMismatchError(
            f"{name}@{version} makes {dimension}-dimensional vectors; the {live.index_storage} "
            f"index of {live.name} takes at most {limit}",
            fix="index the column as halfvec (HNSW(halfvec=True), up to 4000), or pick a model "
            f"of at most {limit} dimensions",
        )


def _create_shadow(
    connection: psycopg.Connection[Any],
    live: SyncTarget,
    name: str,
    version: str,
    dimension: int,
) -> None:
    vector, model_column, hash_column = shadow_names(live)
    existing = {
        row[0]
        for row in connection.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (live.table_schema, live.table_name),
        )
    }
    clash = [c for c in (vector, model_column, hash_column) if c in existing]
    if clash:
        raise ActivationError(
            f"{live.table_schema}.{live.table_name} already has a column {clash[0]!r}, which the "
            "activation needs for its shadow column",
            fix="rename or drop that column (a cancelled activation's leftovers: semdb model "
            "cancel)",
        )
    connection.execute(
        sql.SQL(
            "ALTER TABLE {table} ADD COLUMN {vector} {storage}({dimension}), "
            "ADD COLUMN {model} text, ADD COLUMN {hash} bytea"
        ).format(
            table=live.table_sql,
            vector=sql.Identifier(vector),
            storage=sql.SQL(live.storage),
            dimension=sql.Literal(dimension),
            model=sql.Identifier(model_column),
            hash=sql.Identifier(hash_column),
        )
    )
    shadow = replace(
        live,
        column_name=vector,
        model=name,
        model_version=version,
        dimension=dimension,
        sync="queued",
        fulltext=None,
        model_column=model_column,
        hash_column=hash_column,
        shadow_of=live.id,
        id=None,
    )
    row = shadow.as_row() | {"model_version": version, "shadow_of": live.id}
    if shadow.chunking is not None:
        row["chunking"] = Jsonb(shadow.chunking)
    columns = sql.SQL(", ").join(sql.Identifier(key) for key in row)
    values = sql.SQL(", ").join(sql.Placeholder(key) for key in row)
    shadow_id = connection.execute(
        sql.SQL("INSERT INTO semdb.vector_columns ({}) VALUES ({}) RETURNING id").format(
            columns, values
        ),
        row,
    ).fetchone()
    assert shadow_id is not None
    if live.chunking is not None:
        _create_shadow_chunks(connection, live, shadow)
    for statement in install_statements(shadow):
        _run(connection, statement)
    connection.execute(
        "INSERT INTO semdb.activations (column_id, shadow_column_id, from_model, to_model, "
        "dimension) VALUES (%s, %s, %s, %s, %s)",
        (live.id, shadow_id[0], live.model_tag, f"{name}@{version}", dimension),
    )


# -- chunk tables ----------------------------------------------------------------------------------


def chunk_table_target(target: SyncTarget) -> SyncTarget:
    """The chunk table of a chunked column, seen as a vector column (its vector indexes are
    read and copied as the parent column's are)."""
    return replace(
        target,
        table_name=chunk_table_name(target.table_name, target.column_name),
        column_name=VECTOR,
        chunking=None,
    )


def _table_exists(connection: psycopg.Connection[Any], target: SyncTarget) -> bool:
    return (
        connection.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (target.table_schema, target.table_name),
        ).fetchone()
        is not None
    )


#: Table privileges a grant on the live chunk table may hold (copied to the shadow one).
_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _create_shadow_chunks(
    connection: psycopg.Connection[Any], live: SyncTarget, shadow: SyncTarget
) -> None:
    """The shadow chunk table: the live one's columns with the new dimension, its primary
    key, its cascading foreign key to the parent and its grants (its vector indexes come
    with the shadow column's, see :func:`build_shadow_indexes`)."""
    live_chunks, shadow_chunks = chunk_table_target(live), chunk_table_target(shadow)
    if not _table_exists(connection, live_chunks):
        raise ActivationError(
            f"{live.name} is chunked and its chunk table {live_chunks.table_schema}."
            f"{live_chunks.table_name} does not exist",
            fix="create it (alembic revision --autogenerate renders it), fill it with semdb "
            "backfill, then activate",
        )
    if _table_exists(connection, shadow_chunks):
        raise ActivationError(
            f"a table {shadow_chunks.table_schema}.{shadow_chunks.table_name} already exists, "
            f"which the activation needs for the shadow chunks of {live.name}",
            fix="rename or drop that table (a cancelled activation's leftovers: semdb model "
            "cancel)",
        )
    keys = sql.SQL(", ").join(sql.Identifier(parent_key_name(k)) for k in live.key_columns)
    _run(
        connection,
        sql.SQL(
            "CREATE TABLE {shadow} (LIKE {live} INCLUDING DEFAULTS INCLUDING STORAGE "
            "INCLUDING COMMENTS)"
        ).format(shadow=shadow_chunks.table_sql, live=live_chunks.table_sql),
    )
    _run(
        connection,
        sql.SQL(
            "ALTER TABLE {shadow} ALTER COLUMN {vector} TYPE {storage}({dimension}), "
            "ADD CONSTRAINT {pk} PRIMARY KEY ({keys}, chunk), "
            "ADD CONSTRAINT {fk} FOREIGN KEY ({keys}) REFERENCES {parent} ({parent_keys}) "
            "ON DELETE CASCADE ON UPDATE CASCADE"
        ).format(
            shadow=shadow_chunks.table_sql,
            vector=sql.Identifier(VECTOR),
            storage=sql.SQL(shadow.storage),
            dimension=sql.Literal(shadow.dimension),
            pk=sql.Identifier(_short("pk_" + shadow_chunks.table_name)),
            fk=sql.Identifier(_short("fk_" + shadow_chunks.table_name)),
            keys=keys,
            parent=live.table_sql,
            parent_keys=sql.SQL(", ").join(sql.Identifier(k) for k in live.key_columns),
        ),
    )
    grants = connection.execute(
        "SELECT a.privilege_type, r.rolname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace, "
        "aclexplode(c.relacl) AS a JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE n.nspname = %s AND c.relname = %s AND a.grantee <> c.relowner",
        (live_chunks.table_schema, live_chunks.table_name),
    ).fetchall()
    for privilege, role in grants:
        if privilege in _PRIVILEGES:
            _run(
                connection,
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(privilege), shadow_chunks.table_sql, sql.Identifier(role)
                ),
            )


def _constraint_names(connection: psycopg.Connection[Any], target: SyncTarget) -> dict[str, str]:
    """The primary key's (``p``) and foreign key's (``f``) constraint names of a table."""
    rows = connection.execute(
        "SELECT k.contype::text, k.conname FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND k.contype IN ('p', 'f') ORDER BY k.conname",
        (target.table_schema, target.table_name),
    ).fetchall()
    return {str(kind): str(name) for kind, name in rows}


def _swap_chunk_tables(
    connection: psycopg.Connection[Any], live: SyncTarget, shadow: SyncTarget
) -> None:
    """In the switch's transaction: the live chunk table (the old model's chunks) dropped,
    the shadow one given its name, its constraints' and its vector indexes' names."""
    live_chunks, shadow_chunks = chunk_table_target(live), chunk_table_target(shadow)
    indexes = _vector_indexes(connection, shadow_chunks, VECTOR)
    invalid = [index.name for index, valid in indexes if not valid]
    if invalid:
        raise ActivationError(
            f"the shadow chunk index {invalid[0]} is invalid (its build was interrupted)",
            fix="run semdb model activate again: it rebuilds it",
        )
    renames = {
        _shadow_index_name(index): index.name
        for index, _ in _vector_indexes(connection, live_chunks, VECTOR)
    }
    old_names = _constraint_names(connection, live_chunks)
    new_names = _constraint_names(connection, shadow_chunks)
    try:
        _run(connection, sql.SQL("DROP TABLE {}").format(live_chunks.table_sql))
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise ActivationError(
            f"other objects depend on the chunk table {live_chunks.table_name} of {live.name} "
            f"(a view?): {exc.diag.message_detail or exc}",
            fix="drop or change them, then run semdb model activate again",
        ) from exc
    _run(
        connection,
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            shadow_chunks.table_sql, sql.Identifier(live_chunks.table_name)
        ),
    )
    for kind, name in new_names.items():
        if kind in old_names and old_names[kind] != name:
            _run(
                connection,
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    live_chunks.table_sql, sql.Identifier(name), sql.Identifier(old_names[kind])
                ),
            )
    for index, _ in indexes:
        if index.name in renames:
            _run(
                connection,
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(live.table_schema, index.name),
                    sql.Identifier(renames[index.name]),
                ),
            )


def _pin_live_version(connection: psycopg.Connection[Any], live: SyncTarget) -> None:
    """A live column registered without a version is pinned to the one version its vectors
    carry, so that workers of another version of the same model leave it alone."""
    if live.model_version is not None:
        return
    tags = connection.execute(
        sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL LIMIT 2").format(
            sql.Identifier(live.model_column),
            live.table_sql,
            sql.Identifier(live.model_column),
        )
    ).fetchall()
    if len(tags) != 1:
        return
    name, _, version = str(tags[0][0]).partition("@")
    if name == live.model and version:
        connection.execute(
            "UPDATE semdb.vector_columns SET model_version = %s WHERE id = %s", (version, live.id)
        )


def enqueue_stale(connection: psycopg.Connection[Any], activation: Activation) -> int:
    """Queue, for the shadow, every row whose shadow vector is missing or stale (idempotent:
    rows already queued stay as they are). Reads the table, never locks it against writes."""
    shadow = activation.shadow
    assert shadow is not None and shadow.id is not None
    pairs = sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(name), ident("t", name)) for name in shadow.key_columns
    )
    statement = sql.SQL(
        "INSERT INTO semdb.queue (column_id, key) "
        "SELECT %(column)s, jsonb_build_object({pairs}) FROM {table} AS t WHERE {stale} "
        "ON CONFLICT (column_id, key) DO NOTHING"
    ).format(pairs=pairs, table=shadow.table_ref, stale=stale_condition(shadow))
    with connection.transaction():
        cursor = connection.execute(statement, {"column": shadow.id, "model": activation.to_model})
        return cursor.rowcount


# -- progress -----------------------------------------------------------------------------------


def activation_progress(engine: sa.Engine, activation: Activation) -> Progress:
    """Rows in the table and entries still queued for the shadow (cheap: no hashing)."""
    with _connect(engine) as connection:
        return _progress(connection, activation)


def _progress(connection: psycopg.Connection[Any], activation: Activation) -> Progress:
    shadow = activation.shadow
    if shadow is None:
        return Progress(0, 0)
    rows = connection.execute(
        sql.SQL("SELECT count(*) FROM {}").format(shadow.table_sql)
    ).fetchone()
    queued = connection.execute(
        "SELECT count(*) FROM semdb.queue WHERE column_id = %s", (shadow.id,)
    ).fetchone()
    return Progress(int(rows[0]) if rows else 0, int(queued[0]) if queued else 0)


# -- indexes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VectorIndex:
    name: str
    method: str
    options: tuple[tuple[str, str], ...]


def _vector_indexes(
    connection: psycopg.Connection[Any], target: SyncTarget, column: str
) -> list[tuple[_VectorIndex, bool]]:
    """The HNSW / IVFFlat indexes over ``column`` of ``target``'s table, with validity."""
    rows = connection.execute(
        """
        SELECT i.relname, am.amname, coalesce(i.reloptions, '{}'), x.indisvalid
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_am am ON am.oid = i.relam
        JOIN pg_class c ON c.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %s
        WHERE n.nspname = %s AND c.relname = %s AND am.amname = ANY(%s)
          AND EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = x.indexrelid
                        AND d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid
                        AND d.refobjsubid = a.attnum)
        ORDER BY i.relname
        """,
        (column, target.table_schema, target.table_name, list(METHODS)),
    ).fetchall()
    found = []
    for name, method, options, valid in rows:
        pairs = tuple(tuple(str(option).split("=", 1)) for option in options)
        found.append((_VectorIndex(name, method, pairs), bool(valid)))  # type: ignore[arg-type]
    return found


def _shadow_index_name(index: _VectorIndex) -> str:
    return _short(index.name + SHADOW_SUFFIX)


def build_shadow_indexes(
    engine: sa.Engine, activation: Activation, *, on_step: Callable[[str], None] | None = None
) -> list[str]:
    """Build, ``CONCURRENTLY``, the live column's vector indexes on the shadow column (the
    table stays in full use); an index left invalid by an interrupted build is rebuilt."""
    live, shadow = activation.column, activation.shadow
    assert shadow is not None
    built = []
    with _connect(engine, autocommit=True) as connection:
        wanted = [index for index, _ in _vector_indexes(connection, live, live.column_name)]
        present = {
            index.name: valid
            for index, valid in _vector_indexes(connection, shadow, shadow.column_name)
        }
        tree = partition_tree(connection, live.table_schema, live.table_name)
        for index in wanted:
            name = _shadow_index_name(index)
            if present.get(name):
                continue
            if name in present:  # invalid: a build was interrupted
                concurrently = sql.SQL("" if tree is not None else "CONCURRENTLY ")
                connection.execute(
                    sql.SQL("DROP INDEX {}IF EXISTS {}").format(
                        concurrently, sql.Identifier(live.table_schema, name)
                    )
                )
            if on_step is not None:
                on_step(f"building {index.method} index {name}")
            if tree is None:
                connection.execute(_create_index_statement(live, shadow, index, name))
            else:
                _build_partitioned(connection, live, shadow, index, name, tree)
            built.append(name)
        if live.chunking is not None:
            built += _build_chunk_indexes(connection, live, shadow, on_step)
    return built


def _build_chunk_indexes(
    connection: psycopg.Connection[Any],
    live: SyncTarget,
    shadow: SyncTarget,
    on_step: Callable[[str], None] | None,
) -> list[str]:
    """The live chunk table's vector indexes, built ``CONCURRENTLY`` on the shadow one."""
    live_chunks, shadow_chunks = chunk_table_target(live), chunk_table_target(shadow)
    present = dict(
        (index.name, valid) for index, valid in _vector_indexes(connection, shadow_chunks, VECTOR)
    )
    built = []
    for index, _ in _vector_indexes(connection, live_chunks, VECTOR):
        name = _shadow_index_name(index)
        if present.get(name):
            continue
        if name in present:  # invalid: a build was interrupted
            connection.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    sql.Identifier(live.table_schema, name)
                )
            )
        if on_step is not None:
            on_step(f"building {index.method} index {name}")
        connection.execute(
            _create_index_statement(
                live_chunks, shadow_chunks, index, name, table=shadow_chunks.table_sql
            )
        )
        built.append(name)
    return built


def _build_partitioned(
    connection: psycopg.Connection[Any],
    live: SyncTarget,
    shadow: SyncTarget,
    index: _VectorIndex,
    name: str,
    tree: list[Partition],
) -> None:
    """A partitioned table's index: each leaf's CONCURRENTLY, then the partitioned tables'
    bottom up, which attach them (see :mod:`semdb.db.partitions`)."""
    for part in tree:  # deepest first, the root last
        table = sql.Identifier(part.schema, part.name)
        if part.level == 0:
            connection.execute(
                _create_index_statement(live, shadow, index, name, concurrently=False)
            )
            continue
        part_name = partition_index_name(name, part.name)
        if not part.leaf:
            connection.execute(
                _create_index_statement(
                    live, shadow, index, part_name, table=table, concurrently=False
                )
            )
            continue
        valid = index_validity(connection, part.schema, [part_name]).get(part_name)
        if valid:
            continue
        if valid is False:  # an interrupted build
            connection.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    sql.Identifier(part.schema, part_name)
                )
            )
        connection.execute(_create_index_statement(live, shadow, index, part_name, table=table))


def _create_index_statement(
    live: SyncTarget,
    shadow: SyncTarget,
    index: _VectorIndex,
    name: str,
    *,
    table: sql.Composable | None = None,
    concurrently: bool = True,
) -> sql.Composed:
    if index.method not in METHODS:  # pragma: no cover - filtered by the catalog query
        raise ActivationError(f"unknown vector index method {index.method!r}")
    opclass = Distance.parse(live.distance).operator_class(live.index_storage)
    if live.index_storage == live.storage:
        expression: sql.Composable = sql.Identifier(shadow.column_name)
    else:
        expression = sql.SQL("({}::{}({}))").format(
            sql.Identifier(shadow.column_name),
            sql.SQL(live.index_storage),
            sql.Literal(shadow.dimension),
        )
    with_options: sql.Composable = sql.SQL("")
    if index.options:
        with_options = sql.SQL(" WITH ({})").format(
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(key), sql.Literal(value))
                for key, value in index.options
            )
        )
    return sql.SQL(
        "CREATE INDEX {concurrently}IF NOT EXISTS {name} ON {table} USING {method} "
        "({expression} {opclass}){options}"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(name),
        table=live.table_sql if table is None else table,
        method=sql.SQL(index.method),
        expression=expression,
        opclass=sql.SQL(opclass),
        options=with_options,
    )


# -- switch -------------------------------------------------------------------------------------


def finish_activation(
    engine: sa.Engine,
    activation: Activation,
    *,
    lock_timeout_seconds: float = 30.0,
    on_step: Callable[[str], None] | None = None,
) -> Activation:
    """Build the shadow's indexes, then swap the columns in one transaction (see the module
    docstring). Raises :class:`NotReady` (changing nothing) while rows still lack vectors."""
    if activation.status != "filling" or activation.shadow is None:
        raise ActivationError(
            f"activation {activation.id} of {activation.column.name} is {activation.status}",
            fix="start a new one: semdb model activate NAME --column COLUMN",
        )
    with _connect(engine) as connection:
        progress = _progress(connection, activation)
    if progress.queued:
        raise NotReady(progress.queued, progress.queued)
    build_shadow_indexes(engine, activation, on_step=on_step)
    if on_step is not None:
        on_step("switching")
    with _connect(engine) as connection:
        with connection.transaction():
            _switch(connection, activation, lock_timeout_seconds)
        with connection.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(
                "SELECT * FROM semdb.activations WHERE id = %s", (activation.id,)
            ).fetchone()
        assert row is not None
        return _activation(connection, row)


def _switch(
    connection: psycopg.Connection[Any], activation: Activation, lock_timeout_seconds: float
) -> None:
    live, shadow = activation.column, activation.shadow
    assert shadow is not None and live.id is not None and shadow.id is not None
    _set_lock_timeout(connection, lock_timeout_seconds)
    status = connection.execute(
        "SELECT status FROM semdb.activations WHERE id = %s FOR UPDATE", (activation.id,)
    ).fetchone()
    if status is None or status[0] != "filling":
        raise ActivationError(
            f"activation {activation.id} of {live.name} is no longer in progress",
            fix="see semdb model status",
        )
    # Waits for the batch each worker is writing (they hold their column's registration).
    connection.execute(
        "SELECT id FROM semdb.vector_columns WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        ([live.id, shadow.id],),
    )
    current = _target(connection, live.id)
    if current is None or current.column_name != live.column_name:
        raise ActivationError(f"{live.name} changed during the activation", fix="cancel it")
    # No more writes (queries go on): nothing can turn stale between the check and the swap.
    connection.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(live.table_sql))
    stale = connection.execute(
        sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
            shadow.table_ref, stale_condition(shadow)
        ),
        {"model": activation.to_model},
    ).fetchone()
    if stale and stale[0]:
        queued = _progress(connection, activation).queued
        raise NotReady(int(stale[0]), queued)
    indexes = _vector_indexes(connection, shadow, shadow.column_name)
    invalid = [index.name for index, valid in indexes if not valid]
    if invalid:
        raise ActivationError(
            f"the shadow index {invalid[0]} is invalid (its build was interrupted)",
            fix="run semdb model activate again: it rebuilds it",
        )
    renames = {
        _shadow_index_name(index): index.name
        for index, _ in _vector_indexes(connection, live, live.column_name)
    }
    if live.chunking is not None:
        # The parent first, then its chunks: the order a search's statement locks them in
        # (the other order could deadlock with a search that holds the parent already).
        connection.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(live.table_sql))
        _swap_chunk_tables(connection, live, shadow)
    for statement in uninstall_statements(shadow):
        _run(connection, statement)
    try:
        connection.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN {}, DROP COLUMN {}, DROP COLUMN {}").format(
                live.table_sql,
                sql.Identifier(live.column_name),
                sql.Identifier(live.model_column),
                sql.Identifier(live.hash_column),
            )
        )
    except psycopg.errors.DependentObjectsStillExist as exc:
        raise ActivationError(
            f"other objects depend on {live.name} (a view?): {exc.diag.message_detail or exc}",
            fix="drop or change them, then run semdb model activate again",
        ) from exc
    for old, new in (
        (shadow.column_name, live.column_name),
        (shadow.model_column, live.model_column),
        (shadow.hash_column, live.hash_column),
    ):
        connection.execute(
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                live.table_sql, sql.Identifier(old), sql.Identifier(new)
            )
        )
    for index, _ in indexes:
        if index.name in renames:
            connection.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(live.table_schema, index.name),
                    sql.Identifier(renames[index.name]),
                )
            )
            # a partitioned index: its partitions' indexes follow the name
            children = connection.execute(
                "SELECT n.nspname, c.relname, t.relname FROM pg_partition_tree(%s::regclass) p "
                "JOIN pg_class c ON c.oid = p.relid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_index x ON x.indexrelid = c.oid JOIN pg_class t ON t.oid = x.indrelid "
                "WHERE p.level > 0",
                (sql.Identifier(live.table_schema, renames[index.name]).as_string(connection),),
            ).fetchall()
            for schema, child, table_name in children:
                connection.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(schema, child),
                        sql.Identifier(partition_index_name(renames[index.name], table_name)),
                    )
                )
    connection.execute(
        "INSERT INTO semdb.queue (column_id, key, enqueued_at) "
        "SELECT %(live)s, key, enqueued_at FROM semdb.queue WHERE column_id = %(shadow)s "
        "ON CONFLICT (column_id, key) DO NOTHING",
        {"live": live.id, "shadow": shadow.id},
    )
    connection.execute("DELETE FROM semdb.queue WHERE column_id = %s", (shadow.id,))
    connection.execute(
        "UPDATE semdb.errors SET column_id = %s WHERE column_id = %s", (live.id, shadow.id)
    )
    connection.execute(
        "UPDATE semdb.vector_columns SET model = %s, model_version = %s, dimension = %s "
        "WHERE id = %s",
        (shadow.model, shadow.model_version, shadow.dimension, live.id),
    )
    connection.execute("DELETE FROM semdb.vector_columns WHERE id = %s", (shadow.id,))
    connection.execute(
        "UPDATE semdb.models SET active = false WHERE name = %s AND active", (shadow.model,)
    )
    connection.execute(
        "UPDATE semdb.models SET active = true WHERE name = %s AND version = %s",
        (shadow.model, shadow.model_version),
    )
    connection.execute(
        "UPDATE semdb.activations SET status = 'switched', finished_at = now() WHERE id = %s",
        (activation.id,),
    )


# -- cancel -------------------------------------------------------------------------------------


def cancel_activation(
    engine: sa.Engine, column: str, *, lock_timeout_seconds: float = 30.0
) -> Activation:
    """Drop the shadow column of ``column``'s activation in progress; the column and its
    vectors stay as they were."""
    live = _live_column(engine, column)
    assert live.id is not None
    with _connect(engine) as connection:
        with connection.transaction():
            _set_lock_timeout(connection, lock_timeout_seconds)
            row = _filling(connection, live.id, lock=True)
            if row is None:
                raise ActivationError(
                    f"no activation of {live.name} is in progress", fix="see semdb model status"
                )
            activation = _activation(connection, row)
            shadow = activation.shadow
            if shadow is not None:
                assert shadow.id is not None
                connection.execute(
                    "SELECT id FROM semdb.vector_columns WHERE id = %s FOR UPDATE", (shadow.id,)
                )
                for statement in uninstall_statements(shadow):
                    _run(connection, statement)
                connection.execute(
                    sql.SQL(
                        "ALTER TABLE {} DROP COLUMN IF EXISTS {}, DROP COLUMN IF EXISTS {}, "
                        "DROP COLUMN IF EXISTS {}"
                    ).format(
                        live.table_sql,
                        sql.Identifier(shadow.column_name),
                        sql.Identifier(shadow.model_column),
                        sql.Identifier(shadow.hash_column),
                    )
                )
                if shadow.chunking is not None:
                    _run(
                        connection,
                        sql.SQL("DROP TABLE IF EXISTS {}").format(
                            chunk_table_target(shadow).table_sql
                        ),
                    )
                connection.execute("DELETE FROM semdb.queue WHERE column_id = %s", (shadow.id,))
                connection.execute("DELETE FROM semdb.errors WHERE column_id = %s", (shadow.id,))
                connection.execute("DELETE FROM semdb.vector_columns WHERE id = %s", (shadow.id,))
            connection.execute(
                "UPDATE semdb.activations SET status = 'cancelled', finished_at = now() "
                "WHERE id = %s",
                (activation.id,),
            )
        return replace(activation, status="cancelled", shadow=None)


# -- the whole run ------------------------------------------------------------------------------


def activate(
    engine: sa.Engine,
    column: str,
    model: str,
    *,
    dimension: int | None = None,
    embedder: Any = None,
    wait: bool = True,
    poll_seconds: float = 1.0,
    timeout_seconds: float | None = None,
    batch_size: int = 128,
    on_progress: Callable[[Activation, Progress], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    max_attempts: int = 5,
    backoff_seconds: float = 2.0,
) -> Activation:
    """Start (or resume) switching ``column`` to ``model`` and, with ``wait``, see it through:
    wait for the workers to fill the shadow (or fill it here with ``embedder``, the new
    model's), build its indexes, switch. Without ``wait``, return once it is started.
    ``max_attempts`` and ``backoff_seconds``: the filling worker's retries of a failing row
    (with ``embedder``); a row that still fails stops the activation with an error."""
    from semdb.protocols import model_tag
    from semdb.sync.worker import Worker

    activation = start_activation(engine, column, model, dimension=dimension)
    if not wait:
        return activation
    if embedder is not None and model_tag(embedder) != activation.to_model:
        raise ActivationError(
            f"the embedder is {model_tag(embedder)}, the activation is to {activation.to_model}",
            fix=f"load {activation.to_model}",
        )
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    requeued = 0
    while True:
        assert activation.shadow is not None
        if embedder is not None:

            def report(_: Any) -> None:
                if on_progress is not None:
                    on_progress(activation, activation_progress(engine, activation))

            worker = Worker(
                engine,
                embedder,
                columns=[activation.shadow.name],
                batch_size=batch_size,
                max_attempts=max_attempts,
                backoff_seconds=backoff_seconds,
            )
            worker.run(until_empty=True, on_batch=report)
        progress = activation_progress(engine, activation)
        if on_progress is not None:
            on_progress(activation, progress)
        if progress.queued == 0:
            try:
                return finish_activation(engine, activation, on_step=on_step)
            except NotReady as exc:
                if exc.queued == 0:  # stale and not queued: failed rows that gave up
                    requeued += 1
                    if requeued > 3:
                        raise SyncError(
                            f"{exc.stale} row(s) of {activation.shadow.name} cannot be embedded "
                            f"by {activation.to_model} (see semdb.errors)",
                            fix="fix the cause, then run semdb model activate again",
                        ) from exc
                    with _connect(engine) as connection:
                        enqueue_stale(connection, activation)
        if deadline is not None and time.monotonic() > deadline:
            raise ActivationError(
                f"{activation.shadow.name} still has {progress.queued} queued row(s) after "
                f"{timeout_seconds:.0f} s",
                fix=f"run workers of the new model (semdb worker --model {activation.to_model}), "
                "then semdb model activate again (it resumes)",
            )
        # Workers fill the shadow (or, with embedder, rows back off before their next try).
        time.sleep(poll_seconds)
