"""Corpus vectors in a pgvector table, nearest neighbours by SQL: how evaluation and mining search.

:class:`CorpusTable` copies vectors (binary COPY, :func:`semdb.copy_rows`) into a temporary
table on one connection of the user's database: nothing persists after it closes, and nothing
of the user's is touched. The table is declared like any user table (its vector column by
:func:`semdb.embedding_column`), and its nearest-neighbour SQL is semdb's own
(:func:`semdb.retrieval.statement.knn_statement`), many queries per statement: a LATERAL join
of that statement over a VALUES list of query vectors.

- ``exact=True`` (evaluation): no index, and the exact form of the statement
  (``ORDER BY cosine_distance(embedding, q) LIMIT k``, which no index can serve): PostgreSQL
  computes every distance and the numbers do not depend on index parameters.
- ``exact=False`` (mining): an HNSW index, built after the copy, and the index form
  (``ORDER BY embedding <=> q LIMIT k``) answer in milliseconds with a recall close to 1
  (``hnsw.ef_search`` is raised to twice the number of neighbours asked).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import sqlalchemy as sa
from psycopg import sql

from semdb import HNSW, copy_rows, embedding_column
from semdb.errors import SemdbError
from semdb.orm.columns import VectorColumn, vector_column
from semdb.orm.types import VectorType
from semdb.retrieval.explain import Explain, plan_nodes, plan_root
from semdb.retrieval.statement import PlanPath, knn_statement

logger = logging.getLogger(__name__)

Hit = tuple[str, float]  # (document id, cosine similarity)
_VECTOR_LITERAL = re.compile(r"'\[[^\]]*\]'")  # a query vector inlined in a plan


def corpus_table(name: str, dimension: int, *, indexed: bool) -> sa.Table:
    """A temporary table ``name`` (ord, embedding): an HNSW index for cosine when
    ``indexed``. No text is embedded in it (the vectors are copied in: ``sync="manual"``);
    the declaration names the ordinal as its source, the table's only other column."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("ord", sa.Integer, primary_key=True, autoincrement=False),
        embedding_column(
            "ord",
            model="corpus",
            dimension=dimension,
            index=HNSW() if indexed else None,
            sync="manual",
            name="embedding",
        ).column,
        prefixes=["TEMPORARY"],
    )


class CorpusTable:
    """A temporary pgvector table of corpus vectors, searched by SQL.

    >>> with CorpusTable.open(ids, vectors, exact=True) as table:
    ...     hits = table.search(query_vectors, k=100)   # [[(id, similarity), ...], ...]
    """

    def __init__(
        self, connection: sa.Connection, ids: Sequence[str], *, exact: bool, dimension: int
    ) -> None:
        self._connection = connection
        self._ids = list(ids)
        self.exact = exact
        self.path: PlanPath = "exact" if exact else "index"
        self.table = corpus_table(f"semdb_corpus_{id(self):x}", dimension, indexed=not exact)
        self.target: VectorColumn = vector_column(self.table.c.embedding)

    @classmethod
    def open(
        cls,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        exact: bool = True,
        url: str | None = None,
        progress: bool = False,
    ) -> CorpusTable:
        """Connect (``url``, else SEMDB_DATABASE_URL, else the embedded server), copy, index."""
        from semdb.db import create_engine

        if vectors.ndim != 2 or len(ids) != vectors.shape[0]:
            raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
        engine = create_engine(url, preflight=False, poolclass=sa.NullPool)
        connection = engine.connect()
        try:
            has_vector = connection.execute(
                sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
            ).first()
            connection.rollback()
            if not has_vector:
                raise SemdbError(
                    "the database has no pgvector extension, which evaluation searches with",
                    fix="run: semdb db upgrade (it creates the extension)",
                )
            table = cls(connection, ids, exact=exact, dimension=vectors.shape[1])
            table._load(np.ascontiguousarray(vectors, dtype=np.float32), progress=progress)
        except BaseException:
            connection.close()
            engine.dispose()
            raise
        return table

    def _load(self, vectors: np.ndarray, *, progress: bool) -> None:
        connection = self._connection
        with connection.begin():
            # The table first, its index after the vectors are in (faster to build).
            connection.execute(sa.schema.CreateTable(self.table))
            copy_rows(connection, self.table, {"ord": range(len(vectors)), "embedding": vectors})
        if not self.exact:
            if progress:
                logger.info("building an HNSW index over %d vectors", len(vectors))
            with connection.begin():
                for index in self.table.indexes:
                    index.create(connection)
        with connection.begin():
            analyze = sql.SQL("ANALYZE {}").format(sql.Identifier(self.table.name))
            connection.exec_driver_sql(analyze.as_string(None))

    def statement(self, queries: np.ndarray, k: int) -> sa.Select[Any]:
        """The k nearest rows of each query vector, in one statement: semdb's k-NN statement
        (the exact or the index form) as a LATERAL subquery over a VALUES list of the
        queries, numbered from 1. Columns: the query's number, the row's ordinal, distance."""
        queries_list = sa.values(
            sa.column("n", sa.Integer),
            sa.column("v", VectorType(self.target.dimension)),
            name="q",
        ).data([(number, vector) for number, vector in enumerate(queries, start=1)])
        ordinal = self.table.c.ord
        nearest = knn_statement(
            self.target, sa.select(ordinal), path=self.path, k=k, query=queries_list.c.v
        )
        if self.exact:
            # Ties broken by ordinal, so the answer is fully determined. Approximate: the
            # distance alone, the only order an HNSW index can return.
            nearest = nearest.order_by(ordinal)
        hit = nearest.lateral("hit")
        return (
            sa.select(queries_list.c.n, hit.c.ord, hit.c.distance)
            .select_from(queries_list.join(hit, sa.true()))
            .order_by(queries_list.c.n, hit.c.distance, hit.c.ord)
        )

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        batch_size: int = 64,
        progress: bool = False,
    ) -> list[list[Hit]]:
        """The ``k`` nearest documents of each query vector, nearest first, ties by id order."""
        if queries.ndim != 2:
            raise ValueError(f"query vectors must be a matrix, not of shape {queries.shape}")
        results: list[list[Hit]] = []
        with self._connection.begin():
            self._steer_plan(k)
            for start in _progress(range(0, len(queries), batch_size), progress, len(queries)):
                chunk = np.asarray(queries[start : start + batch_size], dtype=np.float32)
                rows = self._connection.execute(self.statement(chunk, k))
                hits: list[list[Hit]] = [[] for _ in chunk]
                for number, ordinal, distance in rows:  # number counts from 1
                    hits[number - 1].append((self._ids[ordinal], 1.0 - float(distance)))
                results.extend(hits)
        return results

    def _steer_plan(self, k: int) -> None:
        """Inside a transaction: make the plan the one this table promises.

        Exact tables have no index, so every plan is a full scan. Approximate ones are made
        to use their HNSW index (the planner would scan small tables instead), searching at
        least 2k candidates per query.
        """
        if self.exact:
            return
        ef_search = min(max(40, 2 * k), 1000)
        self._connection.execute(
            sa.select(
                sa.func.set_config("enable_seqscan", "off", True),
                sa.func.set_config("hnsw.ef_search", str(ef_search), True),
            )
        )

    def explain(self, query: np.ndarray, k: int = 10) -> str:
        """PostgreSQL's plan for one query, as :meth:`search` runs it: the plan's outline,
        then its sort keys (an exact search's distance function, an index's operator)."""
        with self._connection.begin():
            self._steer_plan(k)
            explained = self._connection.execute(
                Explain(self.statement(np.asarray(query, dtype=np.float32)[None, :], k))
            ).scalar()
        root = plan_root(explained)
        keys = []
        for node in plan_nodes(root):
            for key in ("Sort Key", "Order By"):
                value = node.get(key)
                if value is not None:
                    text = ", ".join(value) if isinstance(value, list) else str(value)
                    text = _VECTOR_LITERAL.sub("'[...]'", text)
                    keys.append(f"{key}: {text}")
        return "\n".join([describe_plan(root), *keys])

    def close(self) -> None:
        engine = self._connection.engine
        self._connection.close()
        engine.dispose()

    def __enter__(self) -> CorpusTable:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def exact_search_numpy(
    corpus_ids: Sequence[str], corpus: np.ndarray, queries: np.ndarray, k: int
) -> list[list[Hit]]:
    """The same answer as an exact :class:`CorpusTable` search, in memory (no database)."""
    results: list[list[Hit]] = []
    corpus = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-12)
    for start in range(0, len(queries), 256):
        chunk = queries[start : start + 256]
        chunk = chunk / np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
        scores = chunk @ corpus.T
        top = min(k, scores.shape[1])
        for row in scores:
            candidates = np.argpartition(-row, top - 1)[:top] if top else np.array([], int)
            order = sorted(candidates.tolist(), key=lambda i: (-row[i], i))
            results.append([(corpus_ids[i], float(row[i])) for i in order])
    return results


def _progress(items: range, enabled: bool, total: int) -> Iterator[int]:
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="searching", unit="query") as bar:
        for start in items:
            yield start
            bar.update(min(items.step, total - start))


def describe_plan(node: dict[str, Any], depth: int = 0) -> str:
    """A short, readable outline: node types and the indexes they use, no parameter values."""
    label = node["Node Type"]
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    if node.get("Relation Name") and "Index Name" not in node:
        label += f" on {node['Relation Name']}"
    lines = ["  " * depth + label]
    for child in node.get("Plans", ()):
        lines.append(describe_plan(child, depth + 1))
    return "\n".join(lines)
