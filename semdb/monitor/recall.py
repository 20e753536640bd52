"""ANN health: recall@k of the index path against exact search, and the ef_search for 0.95.

Queries: the most recent entries of the query log for the column (when the log is on),
else vectors of stored rows (a ``TABLESAMPLE``; a stored row finds itself, so recall on
stored rows is a little kinder than on real queries). Each query runs through
``semdb.search(..., plan="index", ef_search=ef)`` for a few ef values (the index's own
first); the exact top k comes from one streamed pass over the column's vectors, computed
for all queries at once (one scan instead of one per query: 100 exact searches of 108k
rows would take 12 s here). A hit counts when its distance is within the exact k-th
distance (ties count as found).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import Connection

from semdb.monitor.figures import IndexInfo, has_table, run
from semdb.orm.declaration import embedding_column
from semdb.orm.distance import Distance
from semdb.orm.indexes import HNSW, IVFFlat, VectorIndex
from semdb.orm.types import decode_vector
from semdb.sync.target import SyncTarget, ident

#: The recall an index should reach; the ef_search (or probes) that reaches it is reported.
TARGET_RECALL = 0.95
#: ef_search values tried after the index's own (HNSW); probes multiples (IVFFlat).
EF_STEPS = (40, 80, 160, 320, 640, 1000)
STREAM_ROWS = 10_000


@dataclass
class Recall:
    k: int
    queries: int
    source: str  # "query log" or "stored rows"
    ef_search: int  # the setting searches run with now
    recall: float  # at that setting
    by_ef: dict[int, float] = field(default_factory=dict)
    ef_needed: int | None = None  # the smallest tried value reaching TARGET_RECALL
    setting: str = "hnsw.ef_search"


def declared_column(target: SyncTarget, index: IndexInfo | None) -> Any:
    """A Core column declared as the registry row says, for ``semdb.search``: the monitor
    has no ORM model of the user's tables."""
    halfvec = target.index_storage == "halfvec" and target.storage == "vector"
    spec_index: VectorIndex | None = None
    if index is not None and index.method == "hnsw":
        m = int(index.options.get("m", 16))
        construction = int(index.options.get("ef_construction", 64))
        spec_index = HNSW(m=m, ef_construction=max(construction, 2 * m), halfvec=halfvec)
    elif index is not None:
        spec_index = IVFFlat(lists=int(index.options.get("lists", 100)), halfvec=halfvec)
    declared = embedding_column(
        *target.sources,
        model=target.model,
        dimension=target.dimension,
        distance=target.distance,
        storage=target.storage,  # type: ignore[arg-type]
        index=spec_index,
        sync=target.sync,  # type: ignore[arg-type]
        name=target.column_name,
        model_column=target.model_column,
        hash_column=target.hash_column,
    )
    column = declared.column
    keys = [sa.Column(name, sa.types.NullType(), primary_key=True) for name in target.key_columns]
    sources = [sa.Column(s, sa.Text()) for s in target.sources if s not in target.key_columns]
    sa.Table(target.table_name, sa.MetaData(), *keys, *sources, column, schema=target.table_schema)
    return column


def sample_queries(
    connection: Connection, target: SyncTarget, count: int, table_rows: float
) -> tuple[np.ndarray, str]:
    """Up to ``count`` query vectors: recent logged queries, else stored rows' vectors."""
    if has_table(connection, "semdb.query_log"):
        logged = connection.execute(
            sa.text(
                "SELECT query FROM semdb.query_log WHERE column_id = :id AND query IS NOT NULL "
                "ORDER BY seq DESC LIMIT :n"
            ),
            {"id": target.id, "n": count},
        ).scalars()
        vectors = [np.frombuffer(v, dtype=np.float32) for v in logged]
        vectors = [v for v in vectors if v.shape[0] == target.dimension]
        if len(vectors) >= min(count, 10):
            return np.vstack(vectors), "query log"
    percent = min(100.0, 100.0 * max(count * 4, 200) / max(table_rows, 1.0))
    statement = sql.SQL(
        "SELECT {vector} FROM {table} AS t TABLESAMPLE SYSTEM ({percent}) REPEATABLE (11) "
        "WHERE {vector} IS NOT NULL LIMIT {count}"
    ).format(
        vector=ident("t", target.column_name),
        table=target.table_ref,
        percent=sql.Literal(round(percent, 4)),
        count=sql.Literal(count),
    )
    rows = [decode_vector(r[0]) for r in run(connection, statement)]
    if len(rows) < count:  # a sample too small (tiny or sparse table): read more rows
        statement = sql.SQL(
            "SELECT {vector} FROM {table} AS t WHERE {vector} IS NOT NULL LIMIT {count}"
        ).format(
            vector=ident("t", target.column_name),
            table=target.table_ref,
            count=sql.Literal(count),
        )
        rows = [decode_vector(r[0]) for r in run(connection, statement)]
    vectors = [r for r in rows if r is not None]
    if not vectors:
        return np.zeros((0, target.dimension), np.float32), "stored rows"
    return np.vstack(vectors), "stored rows"


def distances(distance: Distance, queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    """queries x block distances, as pgvector computes them (``<#>``: the negated product)."""
    q = queries.astype(np.float64)
    b = block.astype(np.float64)
    if distance is Distance.COSINE:
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        bn = np.linalg.norm(b, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            similarity = (q @ b.T) / (qn * bn[None, :])
        result: np.ndarray = np.nan_to_num(1.0 - similarity, nan=np.inf)
        return result
    if distance is Distance.L2:
        squared = (q**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * (q @ b.T)
        root: np.ndarray = np.sqrt(np.maximum(squared, 0.0))
        return root
    if distance is Distance.INNER_PRODUCT:
        negated: np.ndarray = -(q @ b.T)
        return negated
    manhattan: np.ndarray = np.abs(q[:, None, :] - b[None, :, :]).sum(2)
    return manhattan


def exact_kth(
    connection: Connection, target: SyncTarget, queries: np.ndarray, k: int
) -> np.ndarray:
    """The exact k-th smallest distance of each query over every stored vector (one pass,
    streamed in binary through a server-side cursor of the caller's transaction)."""
    distance = Distance.parse(target.distance)
    best = np.full((len(queries), k), np.inf)
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = sql.SQL("SELECT {vector} FROM {table} AS t WHERE {vector} IS NOT NULL").format(
        vector=sql.Identifier("t", target.column_name), table=target.table_sql
    )
    with driver.cursor(name="semdb_monitor_exact", binary=True) as cursor:
        cursor.itersize = STREAM_ROWS
        cursor.execute(statement)
        while True:
            rows = cursor.fetchmany(STREAM_ROWS)
            if not rows:
                break
            block = np.vstack([v for row in rows if (v := decode_vector(row[0])) is not None])
            found = distances(distance, queries, block)
            merged = np.concatenate([best, found], axis=1)
            keep = min(k, merged.shape[1])
            best = np.partition(merged, keep - 1, axis=1)[:, :keep]
    return np.sort(best, axis=1)[:, k - 1]


def index_recall(
    connection: Connection,
    target: SyncTarget,
    index: IndexInfo,
    queries: np.ndarray,
    kth: np.ndarray,
    *,
    k: int,
    configured: int,
    steps: Sequence[int],
) -> dict[int, float]:
    """Recall@k of the index path at each ef_search (probes) in ``steps``."""
    from semdb.monitor.query_log import not_logged
    from semdb.retrieval import search

    column = declared_column(target, index)
    keys = [column.table.c[name] for name in target.key_columns]
    statement = sa.select(*keys)
    tolerance = 1e-5 * np.maximum(1.0, np.abs(kth))
    by_ef: dict[int, float] = {}
    with not_logged():
        for ef in steps:
            found = 0
            for query, limit, slack in zip(queries, kth, tolerance, strict=True):
                hits = search(
                    connection,
                    column,
                    query,
                    k=k,
                    plan="index",
                    ef_search=ef,
                    statement=statement,
                )
                found += sum(1 for hit in hits if hit.distance <= limit + slack)
            by_ef[ef] = found / (k * len(queries)) if len(queries) else 1.0
    return by_ef


def measure(
    connection: Connection,
    target: SyncTarget,
    index: IndexInfo,
    *,
    queries: int,
    k: int,
    table_rows: float,
    ef_search: int | None = None,
) -> Recall | None:
    """Recall of the index path now, and the ef_search that reaches :data:`TARGET_RECALL`."""
    vectors, source = sample_queries(connection, target, queries, table_rows)
    if len(vectors) == 0:
        return None
    kth = exact_kth(connection, target, vectors, k)
    if index.method == "hnsw":
        configured = ef_search or 40
        steps = sorted({configured, *(s for s in EF_STEPS if s > configured)})
        setting = "hnsw.ef_search"
    else:
        lists = int(index.options.get("lists", 100))
        configured = ef_search or min(10, lists)
        steps = sorted({configured, *(min(lists, configured * 2**i) for i in range(1, 8))})
        setting = "ivfflat.probes"
    by_ef: dict[int, float] = {}
    for ef in steps:  # stop at the first value reaching the target
        by_ef.update(
            index_recall(
                connection,
                target,
                index,
                vectors,
                kth,
                k=k,
                configured=configured,
                steps=[ef],
            )
        )
        if by_ef[ef] >= TARGET_RECALL:
            break
    needed = next((ef for ef in sorted(by_ef) if by_ef[ef] >= TARGET_RECALL), None)
    return Recall(k, len(vectors), source, configured, by_ef[configured], by_ef, needed, setting)
