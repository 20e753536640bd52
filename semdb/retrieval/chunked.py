"""Searching a chunked column: parent rows ranked by their best chunk.

>>> hits = semdb.search(session, Doc.embedding, "cheap flights", embedder=embedder, k=10,
...                     where=Doc.lang == "en")
>>> hit = hits[0]
>>> hit.row, hit.distance, hit.chunk.number, hit.chunk.start, hit.chunk.end
>>> hit.row.body[hit.chunk.start:hit.chunk.end]     # the passage that matched

The statement, for both paths (:mod:`.statement`'s one k-NN builder over the chunk table):

1. candidates: the k-NN statement over the chunk table's vectors, joined to the parent
   rows (and the statement's own joins), filtered by ``where``: ``LIMIT`` a few times k on
   the index path (the HNSW index of the chunk table, the iterative scan for filters), every
   passing chunk on the exact path;
2. each parent's best chunk (``row_number() OVER (PARTITION BY parent ORDER BY distance)``,
   i.e. its maximum similarity);
3. the parent rows (the statement given, entities and joins kept) joined to their best
   chunk, nearest first, ``LIMIT k``.

When the index's candidates hold fewer than k parents, the search asks for eight times as
many, then runs exact: k parents come back whenever k pass the filter (and have text).
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
from semdb.retrieval.statement import MAX_K, PlanPath, knn_statement

#: Chunks fetched per parent wanted on the index path (then eight times more, then exact).
CANDIDATES_PER_ROW = 4
MIN_CANDIDATES = 40
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


def candidates_for(k: int, level: int) -> int:
    wanted: int = max(k * CANDIDATES_PER_ROW, MIN_CANDIDATES) * (WIDER**level)
    return min(wanted, MAX_K)


@dataclass
class ChunkedStatements:
    """The statements of one chunked search (built once per path and width)."""

    target: VectorColumn
    base: sa.Select[Any]
    where: Any
    k: int

    def build(self, path: PlanPath, level: int) -> sa.Select[Any]:
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
        fetch = candidates_for(self.k, level)
        found = knn_statement(chunk_column(target), inner, path=path, k=fetch, where=self.where)
        if path == "exact":
            found = found.order_by(None).limit(None)  # every passing chunk: the true best
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


def chunk_hit(row: Any, one_entity: bool) -> ChunkHit:
    match = ChunkMatch(int(row[-4]), int(row[-3]), int(row[-2]))
    return ChunkHit(row[0] if one_entity else row, float(row[-1]), match)


def wider_rows(
    search: Any,
    bind: Bind,
    connection: Connection,
    settings: Any,
    parameters: dict[str, Any],
) -> list[sa.Row[Any]]:
    """The index path again with eight times the candidates (fewer than k parents came)."""
    wider = dict(settings)
    if "hnsw.ef_search" in wider or not wider:
        wider["hnsw.ef_search"] = str(min(1000, candidates_for(search.k, 1)))
    return run_statement(
        bind,
        connection,
        search.statement("index", 1),
        parameters,
        wider,
        custom_plan=search.filtered,
    )
