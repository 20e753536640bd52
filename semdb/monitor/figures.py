"""The figures of one vector column, read from the catalog and semdb's tables (read only).

Counts that would read the whole table are estimated when the table is large: the row count
comes from ``pg_class.reltuples`` (the planner's, refreshed by ANALYZE and autovacuum), and
rows with a vector, missing, stale or by another model are counted in a ``TABLESAMPLE
SYSTEM`` sample of about :data:`SAMPLE_ROWS` rows, then scaled. Tables of at most
:data:`EXACT_COUNT_ROWS` rows (or ``exact=True``) are counted exactly, in one scan.
Every figure says whether it is an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import Connection

from semdb.orm.distance import Distance
from semdb.sync.target import SyncTarget, ident

#: Tables of at most this many rows (by the catalog) are counted exactly.
EXACT_COUNT_ROWS = 50_000
#: About this many rows are read to estimate the shares of a larger table.
SAMPLE_ROWS = 5_000
#: The window of "lately": rows embedded per second, active workers.
RATE_WINDOW_MINUTES = 5


def run(connection: Connection, statement: sql.Composable, parameters: Any = None) -> Any:
    """Execute a psycopg-composed statement through SQLAlchemy's connection, always with
    parameters (a placeholder-free dict at least): identifiers from :func:`ident` double
    their ``%``, which psycopg reads back only when parameters are given."""
    return connection.exec_driver_sql(statement.as_string(), parameters or {"monitor": 1})


def has_table(connection: Connection, name: str) -> bool:
    return bool(
        connection.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar()
    )


def qualified(target: SyncTarget) -> str:
    """The table's name as to_regclass reads it (quoted)."""
    return sql.Identifier(target.table_schema, target.table_name).as_string()


@dataclass
class Coverage:
    rows: int
    rows_estimated: bool
    with_vector: int
    missing: int  # a text but no vector
    empty: int  # no text at all (never embedded)
    stale: int  # a vector whose text changed since (content hash differs)
    other_model: int  # a vector made by another model than the column's
    estimated: bool  # the four above scaled from a sample
    sampled_rows: int | None = None


def table_rows(connection: Connection, target: SyncTarget) -> tuple[float, bool]:
    """(rows, estimated): the catalog's count, or the planner's when never analysed."""
    reltuples = connection.execute(
        sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:n)"),
        {"n": qualified(target)},
    ).scalar()
    if reltuples is not None and reltuples >= 0:
        return float(reltuples), True
    plan = run(
        connection, sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}").format(target.table_ref)
    ).scalar()
    return float(plan[0]["Plan"]["Plan Rows"]), True


def accepted_model_sql(target: SyncTarget) -> sql.Composed:
    """True where the stored model tag is the column's model (and pinned version)."""
    column = ident("t", target.model_column)
    if target.model_version:
        return sql.SQL("{} = {}").format(column, sql.Literal(target.model_tag))
    return sql.SQL("split_part({}, '@', 1) = {}").format(column, sql.Literal(target.model))


def coverage(connection: Connection, target: SyncTarget, *, exact: bool = False) -> Coverage:
    rows, rows_estimated = table_rows(connection, target)
    sampled = not exact and rows > EXACT_COUNT_ROWS
    source = sql.SQL("{} AS t").format(target.table_ref)
    if sampled:
        percent = min(100.0, 100.0 * SAMPLE_ROWS / rows)
        source = sql.SQL("{} AS t TABLESAMPLE SYSTEM ({}) REPEATABLE (7)").format(
            target.table_ref, sql.Literal(round(percent, 4))
        )
    vector = ident("t", target.column_name)
    document = target.document_sql("t")
    statement = sql.SQL(
        "SELECT count(*), count({vector}), "
        "count(*) FILTER (WHERE {vector} IS NULL AND {document} <> ''), "
        "count(*) FILTER (WHERE {vector} IS NULL AND {document} = ''), "
        "count(*) FILTER (WHERE {vector} IS NOT NULL "
        "AND {stored} IS DISTINCT FROM {current}), "
        "count(*) FILTER (WHERE {vector} IS NOT NULL AND NOT coalesce({accepted}, false)) "
        "FROM {source}"
    ).format(
        vector=vector,
        document=document,
        stored=ident("t", target.hash_column),
        current=target.hash_sql("t"),
        accepted=accepted_model_sql(target),
        source=source,
    )
    counted = run(connection, statement).one()
    total, with_vector, missing, empty, stale, other = (int(v) for v in counted)
    if not sampled:
        return Coverage(total, False, with_vector, missing, empty, stale, other, False)
    scale = rows / total if total else 0.0
    return Coverage(
        int(round(rows)),
        rows_estimated,
        round(with_vector * scale),
        round(missing * scale),
        round(empty * scale),
        round(stale * scale),
        round(other * scale),
        True,
        total,
    )


@dataclass
class Queue:
    depth: int
    retrying: int  # entries waiting for a retry after a failure
    oldest_seconds: float | None
    given_up: int  # rows given up on, last day
    failed_last_day: int
    top_error: str | None
    top_error_count: int
    embedded_recently: int | None  # rows embedded in the last RATE_WINDOW_MINUTES (None: unknown)
    rate: float | None  # rows per second over that window
    batch_seconds: float | None  # mean batch latency over that window
    workers_recently: int | None  # workers that embedded for this column in the window


def queue(connection: Connection, target: SyncTarget, *, activity: bool) -> Queue:
    depth, retrying = connection.execute(
        sa.text(
            "SELECT count(*), count(*) FILTER (WHERE attempts > 0) FROM semdb.queue "
            "WHERE column_id = :id"
        ),
        {"id": target.id},
    ).one()
    oldest = connection.execute(
        sa.text(
            "SELECT extract(epoch FROM now() - enqueued_at) FROM semdb.queue "
            "WHERE column_id = :id ORDER BY id LIMIT 1"
        ),
        {"id": target.id},
    ).scalar()
    failed, given_up = connection.execute(
        sa.text(
            "SELECT count(*), count(*) FILTER (WHERE gave_up) FROM semdb.errors "
            "WHERE column_id = :id AND failed_at > now() - interval '1 day'"
        ),
        {"id": target.id},
    ).one()
    top = connection.execute(
        sa.text(
            "SELECT left(error, 300) AS e, count(*) FROM semdb.errors "
            "WHERE column_id = :id AND failed_at > now() - interval '1 day' "
            "GROUP BY e ORDER BY count(*) DESC, e LIMIT 1"
        ),
        {"id": target.id},
    ).first()
    embedded = rate = batch_seconds = workers = None
    if activity:
        embedded, batches, seconds, workers = connection.execute(
            sa.text(
                "SELECT coalesce(sum(embedded), 0), coalesce(sum(batches), 0), "
                "coalesce(sum(batch_seconds), 0), count(DISTINCT worker) "
                "FROM semdb.sync_activity WHERE column_id = :id "
                "AND minute >= date_trunc('minute', now()) - make_interval(mins => :window)"
            ),
            {"id": target.id, "window": RATE_WINDOW_MINUTES},
        ).one()
        embedded, workers = int(embedded), int(workers)
        rate = embedded / (RATE_WINDOW_MINUTES * 60.0)
        batch_seconds = float(seconds) / int(batches) if batches else None
    return Queue(
        int(depth),
        int(retrying),
        None if oldest is None else float(oldest),
        int(given_up),
        int(failed),
        None if top is None else str(top[0]),
        0 if top is None else int(top[1]),
        embedded,
        rate,
        batch_seconds,
        workers,
    )


def connected_workers(connection: Connection) -> int:
    """Sessions of ``semdb worker`` connected to this database now (any column, any host)."""
    return int(
        connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'semdb worker%'"
            )
        ).scalar()
        or 0
    )


@dataclass
class IndexInfo:
    name: str
    method: str  # hnsw / ivfflat
    operator_class: str
    options: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    valid: bool = True  # pg_index.indisvalid (a failed CREATE INDEX CONCURRENTLY leaves False)
    ready: bool = True  # indisready and indislive
    matches_distance: bool = True  # its operator class serves the column's distance
    planner_uses: bool | None = None  # an EXPLAIN of the index path shows it (None: not asked)
    definition: str = ""

    @property
    def usable(self) -> bool:
        return (
            self.valid and self.ready and self.matches_distance and self.planner_uses is not False
        )


def vector_indexes(connection: Connection, target: SyncTarget) -> list[IndexInfo]:
    """The HNSW and IVFFlat indexes on the vector column (or an expression of it)."""
    found = connection.execute(
        sa.text(
            "SELECT c.relname, am.amname, oc.opcname, coalesce(c.reloptions, '{}'), "
            "pg_relation_size(i.indexrelid), i.indisvalid, i.indisready AND i.indislive, "
            "pg_get_indexdef(i.indexrelid) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam "
            "JOIN pg_opclass oc ON oc.oid = i.indclass[0] "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = :column "
            "WHERE i.indrelid = to_regclass(:table) AND am.amname IN ('hnsw', 'ivfflat') "
            "AND (a.attnum = i.indkey[0] OR (i.indkey[0] = 0 AND "
            "position(quote_ident(:column) IN pg_get_expr(i.indexprs, i.indrelid)) > 0)) "
            "ORDER BY i.indisvalid DESC, c.relname"
        ),
        {"table": qualified(target), "column": target.column_name},
    ).all()
    indexes = []
    for name, method, opclass, options, size, valid, ready, definition in found:
        parsed = dict(option.split("=", 1) for option in options)
        served = Distance.from_operator_class(str(opclass))
        indexes.append(
            IndexInfo(
                str(name),
                str(method),
                str(opclass),
                parsed,
                int(size),
                bool(valid),
                bool(ready),
                served is not None and served[0] is Distance.parse(target.distance),
                None,
                str(definition),
            )
        )
    return indexes
