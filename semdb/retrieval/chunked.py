"""Searching a chunked column: parent rows ranked by their best chunk.

>>> hits = semdb.search(session, Doc.embedding, "cheap flights", embedder=embedder, k=10,
...                     where=Doc.lang == "en")
>>> hit = hits[0]
>>> hit.row, hit.distance, hit.chunk.number, hit.chunk.start, hit.chunk.end
>>> hit.row.body[hit.chunk.start:hit.chunk.end]     # the passage that matched

The index path's statement (:mod:`.statement`'s k-NN builder over the chunk table):

1. candidates: the k-NN statement over the chunk table's HNSW index (the iterative scan for
   filters), joined to the parent rows (and the statement's own joins), filtered by
   ``where``, ``LIMIT`` two chunks per parent wanted (at least 20);
2. each parent's best chunk (``row_number() OVER (PARTITION BY parent ORDER BY distance)``,
   i.e. its maximum similarity) among the candidates;
3. the parent rows (the statement given, entities and joins kept) joined to their best
   chunk, nearest first, ``LIMIT k``.

When the candidates hold fewer than k parents it asks for eight times as many, then runs
exact.

The exact path ranks every parent row that passes the filter by its best chunk's distance,
a ``LATERAL min()`` over the parent's own chunks (the chunk table's primary key), nearest
first, ``LIMIT k``, and looks up which chunk that was for the k parents kept only: k parents
come back whenever k pass the filter (and have text). Its
filter is the outermost ``WHERE``, so the statement is built once and each filter only
added to it. It runs without parallel workers: they cost more to start than the few
thousand chunks a selective filter leaves (measured in ``bench/chunks_latency.py``); its
statement calls ``semdb.serial_plan()`` (migration 0008), which the planner folds to true
after it has ruled workers out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Connection

from semdb.orm.chunks import VECTOR, chunk_table_of, parent_key_name
from semdb.orm.columns import VectorColumn
from semdb.retrieval.results import Hit
from semdb.retrieval.settings import Bind, run_statement
from semdb.retrieval.statement import MAX_K, PlanPath, knn_statement, query_parameter

#: Chunks fetched per parent wanted (then eight times more, then exact). Two per parent:
#: the index path's iterative scan visits about candidates / selectivity chunks, each joined
#: to its parent for the filter, so its time grows with the candidates (bench/chunks_latency:
#: 30% filter, 10,000 parents of 4 chunks, 40 candidates 2.9x the unchunked search's median,
#: 20 candidates 1.9x); a search whose candidates hold fewer than k parents widens.
CANDIDATES_PER_ROW = 2
MIN_CANDIDATES = 20
WIDER = 8


class ChunkMatch(NamedTuple):
    """The chunk of a parent row that matched: ``document[start:end]``."""

    number: int
    start: int
    end: int


class ChunkHit(Hit):
    """A hit of a chunked column: ``row``, ``distance`` (its best chunk's) and ``chunk``.
    Unpacks as ``row, distance`` like every hit."""

    chunk: ChunkMatch

    def __new__(cls, row: Any, distance: float, chunk: ChunkMatch) -> ChunkHit:
        self = super().__new__(cls, row, distance)
        self.chunk = chunk
        return self


def chunk_column(target: VectorColumn) -> VectorColumn:
    """The chunk table's vector column, with the parent's declaration (index, distance)."""
    table = chunk_table_of(target.column)
    assert table is not None
    return VectorColumn(column=table.c[VECTOR], spec=target.spec, entity=None)


def candidates_for(
    k: int, level: int, per_row: int = CANDIDATES_PER_ROW, minimum: int = MIN_CANDIDATES
) -> int:
    wanted: int = max(k * per_row, minimum) * (WIDER**level)
    return min(wanted, MAX_K)


#: hybrid_search's semantic leg: the chunks the SQL function ``semdb.hybrid_search``
#: (migration 0008) fetches, ``greatest(4 * candidates, 40)``, so that both legs agree.
HYBRID_PER_ROW = 4
HYBRID_MIN_CANDIDATES = 40


@dataclass
class ChunkedStatements:
    """The statements of one chunked search (built once per path and width)."""

    target: VectorColumn
    base: sa.Select[Any]
    where: Any
    k: int
    per_row: int = CANDIDATES_PER_ROW
    minimum: int = MIN_CANDIDATES

    def build(self, path: PlanPath, level: int | None) -> sa.Select[Any]:
        """The statement of ``path``: on the index path, fetching :func:`candidates_for`
        ``(k, level)`` chunks; the exact path's ranks every passing parent (see the module)."""
        if path == "exact":
            exact = self.exact_template()
            return exact if self.where is None else exact.where(self.where)
        target = self.target
        chunks = chunk_table_of(target.column)
        assert chunks is not None
        keys = [chunks.c[parent_key_name(column.name)] for column in target.key]
        on = sa.and_(*[key == column for key, column in zip(keys, target.key, strict=True)])
        inner = self.base.with_only_columns(
            *keys,
            chunks.c.chunk,
            chunks.c.char_start,
            chunks.c.char_end,
            maintain_column_froms=True,
        ).join(chunks, on)
        fetch = candidates_for(self.k, level or 0, self.per_row, self.minimum)
        found = knn_statement(chunk_column(target), inner, path=path, k=fetch, where=self.where)
        candidates = found.subquery("semdb_chunk_hits")
        parent = [candidates.c[key.name] for key in keys]
        ranked = sa.select(
            candidates,
            sa.func.row_number()
            .over(partition_by=parent, order_by=candidates.c.distance)
            .label("semdb_rank"),
        ).subquery("semdb_best_chunks")
        joined = sa.and_(
            *[ranked.c[key.name] == column for key, column in zip(keys, target.key, strict=True)]
        )
        limit = sa.literal_column(str(self.k), sa.Integer)
        return (
            self.base.join(ranked, joined)
            .where(ranked.c.semdb_rank == 1)
            .add_columns(
                ranked.c.chunk.label("semdb_chunk"),
                ranked.c.char_start.label("semdb_char_start"),
                ranked.c.char_end.label("semdb_char_end"),
                ranked.c.distance.label("distance"),
            )
            .order_by(ranked.c.distance)
            .limit(limit)
        )

    def exact_template(self) -> sa.Select[Any]:
        """The exact path without the filter (``.where(filter)`` completes it): each parent
        row of the statement and its best chunk's distance, a ``LATERAL min()`` over its own
        chunks (the chunk table's primary key), nearest parents first, ``LIMIT k``; which
        chunk that is (number, offsets) is looked up for the k parents kept only (the
        planner evaluates those subqueries after the sort and limit). Every passing parent
        is ranked: k come back whenever k pass the filter and have text."""
        target = self.target
        chunks = chunk_table_of(target.column)
        assert chunks is not None
        keys = [chunks.c[parent_key_name(column.name)] for column in target.key]
        own = [key == column for key, column in zip(keys, target.key, strict=True)]
        distance = chunk_column(target).exact_distance(query_parameter(target, "exact"))
        best = (
            sa.select(sa.func.min(distance).label("distance"))
            .where(*own)
            .lateral("semdb_best_chunk")
        )

        def of_best(column: sa.Column[Any], label: str) -> Any:
            # ties between equal chunks go to the first: the three agree on one chunk
            return (
                sa.select(column)
                .where(*own)
                .order_by(distance, chunks.c.chunk)
                .limit(1)
                .scalar_subquery()
                .label(label)
            )

        limit = sa.literal_column(str(self.k), sa.Integer)
        return (
            self.base.join(best, sa.true())
            .add_columns(
                of_best(chunks.c.chunk, "semdb_chunk"),
                of_best(chunks.c.char_start, "semdb_char_start"),
                of_best(chunks.c.char_end, "semdb_char_end"),
                best.c.distance.label("distance"),
            )
            .where(best.c.distance.is_not(None), sa.func.semdb.serial_plan(type_=sa.Boolean))
            .order_by(best.c.distance)
            .limit(limit)
        )


def chunk_hit(row: Any, one_entity: bool) -> ChunkHit:
    match = ChunkMatch(int(row[-4]), int(row[-3]), int(row[-2]))
    return ChunkHit(row[0] if one_entity else row, float(row[-1]), match)


def wider_rows(
    search: Any,
    bind: Bind,
    connection: Connection,
    path: PlanPath,
    settings: Any,
    parameters: dict[str, Any],
) -> list[sa.Row[Any]]:
    """The index path again with eight times the candidates (fewer than k parents came;
    the exact path ranks every passing parent and never needs it)."""
    wider = dict(settings)
    if "hnsw.ef_search" in wider or not wider:
        wider["hnsw.ef_search"] = str(min(1000, candidates_for(search.k, 1, *search.candidates())))
    return run_statement(
        bind,
        connection,
        search.statement(path, 1),
        parameters,
        wider,
        custom_plan=search.filtered,
    )
