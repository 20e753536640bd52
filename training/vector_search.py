"""Corpus vectors in a pgvector table, nearest neighbours by SQL: how evaluation and mining search.

:class:`CorpusTable` copies vectors (binary COPY) into a temporary table on one connection of
the user's database: nothing persists after it closes, and nothing of the user's is touched.
Queries run as SQL, ``ORDER BY embedding <=> :query LIMIT k``, many queries per statement
(a LATERAL join over an array of query vectors).

- ``exact=True`` (evaluation): the table has no index, so PostgreSQL computes every distance
  and the numbers do not depend on index parameters.
- ``exact=False`` (mining): an HNSW index, built after the copy, answers in milliseconds
  with a recall close to 1 (``hnsw.ef_search`` is raised to the number of neighbours asked).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import numpy as np
from psycopg import sql

from semdb.errors import SemdbError

logger = logging.getLogger(__name__)

Hit = tuple[str, float]  # (document id, cosine similarity)


class CorpusTable:
    """A temporary pgvector table of corpus vectors, searched by SQL.

    >>> with CorpusTable.open(ids, vectors, exact=True) as table:
    ...     hits = table.search(query_vectors, k=100)   # [[(id, similarity), ...], ...]
    """

    def __init__(self, connection: Any, ids: Sequence[str], *, exact: bool) -> None:
        self._connection = connection
        self._ids = list(ids)
        self.exact = exact
        self.table = sql.Identifier(f"semdb_corpus_{id(self):x}")

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
        import psycopg
        from pgvector.psycopg import register_vector

        from semdb.db import libpq_uri, resolve_url

        if vectors.ndim != 2 or len(ids) != vectors.shape[0]:
            raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
        connection = psycopg.connect(libpq_uri(resolve_url(url)), autocommit=True)
        try:
            has_vector = connection.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            if not has_vector:
                raise SemdbError(
                    "the database has no pgvector extension, which evaluation searches with",
                    fix="run: semdb db upgrade (it creates the extension)",
                )
            register_vector(connection)
            table = cls(connection, ids, exact=exact)
            table._load(np.ascontiguousarray(vectors, dtype=np.float32), progress=progress)
        except BaseException:
            connection.close()
            raise
        return table

    def _load(self, vectors: np.ndarray, *, progress: bool) -> None:
        dimension = vectors.shape[1]
        self._connection.execute(
            sql.SQL(
                "CREATE TEMPORARY TABLE {} (ord integer PRIMARY KEY, embedding vector({}))"
            ).format(self.table, sql.Literal(dimension))
        )
        copy_sql = sql.SQL("COPY {} (ord, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
            self.table
        )
        with self._connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
            copy.set_types(["int4", "vector"])
            for ordinal, vector in enumerate(vectors):
                copy.write_row((ordinal, vector))
        if not self.exact:
            if progress:
                logger.info("building an HNSW index over %d vectors", len(vectors))
            self._connection.execute(
                sql.SQL("CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops)").format(
                    self.table
                )
            )
        self._connection.execute(sql.SQL("ANALYZE {}").format(self.table))

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
        # Exact: ties broken by ordinal, so the answer is fully determined. Approximate: the
        # distance alone, the only order an HNSW index can return.
        order = sql.SQL("embedding <=> q.v, ord" if self.exact else "embedding <=> q.v")
        statement = sql.SQL(
            "SELECT q.n, hit.ord, 1 - hit.distance FROM unnest(%s::vector[]) WITH ORDINALITY"
            " AS q(v, n) CROSS JOIN LATERAL (SELECT ord, embedding <=> q.v AS distance FROM {}"
            " ORDER BY {} LIMIT %s) AS hit ORDER BY q.n, hit.distance, hit.ord"
        ).format(self.table, order)
        results: list[list[Hit]] = []
        with self._connection.transaction():
            self._steer_plan(k)
            for start in _progress(range(0, len(queries), batch_size), progress, len(queries)):
                chunk = [
                    np.asarray(v, dtype=np.float32) for v in queries[start : start + batch_size]
                ]
                rows = self._connection.execute(statement, (chunk, k)).fetchall()
                hits: list[list[Hit]] = [[] for _ in chunk]
                for number, ordinal, score in rows:  # number counts from 1 (WITH ORDINALITY)
                    hits[number - 1].append((self._ids[ordinal], float(score)))
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
        self._connection.execute("SET LOCAL enable_seqscan = off")
        self._connection.execute(
            sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(min(max(40, 2 * k), 1000)))
        )

    def explain(self, query: np.ndarray, k: int = 10) -> str:
        """PostgreSQL's plan for one query, as :meth:`search` runs it."""
        with self._connection.transaction():
            self._steer_plan(k)
            rows = self._connection.execute(
                sql.SQL("EXPLAIN SELECT ord FROM {} ORDER BY embedding <=> %s LIMIT %s").format(
                    self.table
                ),
                (np.asarray(query, dtype=np.float32), k),
            ).fetchall()
        return "\n".join(row[0] for row in rows)

    def close(self) -> None:
        self._connection.close()

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
