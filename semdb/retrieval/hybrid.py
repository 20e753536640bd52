"""Hybrid search: PostgreSQL full-text search and vector search, fused by reciprocal rank
fusion (RRF) in one SQL statement.

Each leg ranks its top ``candidates`` rows: the semantic leg by distance (with the same plan
choice as :func:`semdb.search`), the full-text leg by ``ts_rank_cd`` over
``websearch_to_tsquery``. A row's score is ``1/(rrf_k + semantic_rank) + 1/(rrf_k +
fulltext_rank)`` (a missing rank adds 0); the k best scores come back::

    WITH semantic AS (SELECT id, row_number() OVER (ORDER BY d) AS rank
                      FROM (SELECT id, embedding <=> $1 AS d FROM docs WHERE <filter>
                            ORDER BY embedding <=> $1 LIMIT 40) AS s),
         fulltext AS (SELECT id, row_number() OVER (ORDER BY r DESC) AS rank
                      FROM (SELECT id, ts_rank_cd(<tsvector>, q) AS r
                            FROM docs, websearch_to_tsquery('english', $2) AS q
                            WHERE <tsvector> @@ q AND <filter> ORDER BY r DESC LIMIT 40) AS f)
    SELECT docs.*, coalesce(1.0 / (60 + s.rank), 0) + coalesce(1.0 / (60 + f.rank), 0) AS score
    FROM semantic s FULL JOIN fulltext f USING (id) JOIN docs USING (id)
    ORDER BY score DESC LIMIT 10;

``semdb.hybrid_search`` (the SQL function installed by ``semdb db upgrade``) runs the same
statement from psql.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from semdb.errors import SearchError
from semdb.orm.declaration import check_regconfig
from semdb.orm.document import fulltext_document_sql, regconfig_sql
from semdb.protocols import TextEmbedder
from semdb.retrieval.nearest import KnnSearch, connection_of
from semdb.retrieval.plan import PlanRequest
from semdb.retrieval.results import HybridHit, SearchResult
from semdb.retrieval.settings import Bind, run_statement
from semdb.retrieval.statement import (
    check_k,
    knn_statement,
    query_parameter,
    selects_one_entity,
)
from semdb.retrieval.vectors import query_vector
from semdb.sync.registry import check_query_model

DEFAULT_RRF_K = 60
#: The most words a hybrid query text may hold: ``websearch_to_tsquery`` of 10,000 words
#: takes seconds, and of 30,000 exceeds PostgreSQL's stack depth. The embedder reads at most
#: 256 tokens of a text anyway.
MAX_QUERY_WORDS = 256


def hybrid_search(
    bind: Bind,
    column: Any,
    text: str,
    *,
    k: int = 10,
    where: Any = None,
    embedder: TextEmbedder | None = None,
    vector: Any = None,
    rrf_k: int = DEFAULT_RRF_K,
    candidates: int | None = None,
    fulltext: str | None = None,
    plan: PlanRequest = "auto",
    ef_search: int | None = None,
    exact_below: int | None = None,
) -> SearchResult:
    """The k best rows by RRF of full-text and vector rankings for ``text``.

    The query vector is ``vector`` when given, else ``embedder.embed_query(text)``.
    ``fulltext``: the text search configuration (default: the column's, else english).
    ``where`` filters both legs. Hits are :class:`HybridHit` (score, and each leg's rank).
    ``text`` holds at most :data:`MAX_QUERY_WORDS` words.
    """
    if not isinstance(text, str) or not text.strip():
        raise SearchError("hybrid search needs a non-empty query text", fix="pass the user's query")
    if "\x00" in text:
        raise SearchError(
            "the hybrid query text holds a NUL character, which PostgreSQL text cannot hold",
            fix="remove NUL characters from the query text",
        )
    words = len(text.split())
    if words > MAX_QUERY_WORDS:
        raise SearchError(
            f"the hybrid query text has {words} words; at most {MAX_QUERY_WORDS} are searched",
            fix=f"shorten the query to its first {MAX_QUERY_WORDS} words, or use semdb.search",
        )
    check_k(k)
    if not isinstance(rrf_k, int) or isinstance(rrf_k, bool) or rrf_k < 0:
        raise SearchError(f"rrf_k must be a non-negative integer, got {rrf_k!r}", fix="use 60")
    pool = check_k(candidates if candidates is not None else max(4 * k, 40), "candidates")
    knn = KnnSearch.build(
        column, k=pool, where=where, ef_search=ef_search, plan=plan, exact_below=exact_below
    )
    target = knn.target
    connection = connection_of(bind)
    if vector is None and embedder is not None:
        check_query_model(connection, target, embedder)
    query_vec = query_vector(
        target,
        vector if vector is not None else text,
        embedder,
        argument="vector" if vector is not None else "query",
    )
    chosen = knn.plan(connection, {})
    config = check_regconfig(fulltext or target.spec.fulltext or "english")
    key_names = [c.name for c in target.key]

    # The semantic leg: the statement search() would run, keys only.
    semantic_top_q = knn_statement(
        target,
        sa.select(*target.key).select_from(target.table),
        path=chosen.path,
        k=pool,
        where=knn.where,
        query=query_parameter(target, chosen.path, query_vec),
    ).subquery("semantic_top")
    semantic_ranked = sa.select(
        *[semantic_top_q.c[n] for n in key_names],
        sa.func.row_number().over(order_by=semantic_top_q.c.distance).label("rank"),
    ).cte("semantic")

    # The full-text leg.
    if target.spec.fulltext is not None and config == target.spec.fulltext:
        document = target.fulltext_document()  # the GIN index's expression
    else:
        document = sa.func.to_tsvector(regconfig_sql(config), fulltext_document_sql(target.sources))
    tsquery = sa.func.websearch_to_tsquery(
        regconfig_sql(config), sa.bindparam("text", text, sa.Text)
    )
    rank = sa.func.ts_rank_cd(document, tsquery, type_=sa.Float)
    fulltext_top = sa.select(*target.key, rank.label("r")).where(document.op("@@")(tsquery))
    if knn.where is not None:
        fulltext_top = fulltext_top.where(knn.where)
    fulltext_top_q = fulltext_top.order_by(rank.desc()).limit(pool).subquery("fulltext_top")
    fulltext_ranked = sa.select(
        *[fulltext_top_q.c[n] for n in key_names],
        sa.func.row_number().over(order_by=fulltext_top_q.c.r.desc()).label("rank"),
    ).cte("fulltext")

    # Fusion.
    s, f = semantic_ranked.c, fulltext_ranked.c
    constant = sa.literal(float(rrf_k), sa.Float)
    score = sa.func.coalesce(1.0 / (constant + s.rank), 0.0) + sa.func.coalesce(
        1.0 / (constant + f.rank), 0.0
    )
    fused = (
        sa.select(
            *[sa.func.coalesce(s[n], f[n]).label(n) for n in key_names],
            score.label("score"),
            s.rank.label("semantic_rank"),
            f.rank.label("fulltext_rank"),
        )
        .select_from(
            semantic_ranked.join(
                fulltext_ranked, sa.and_(*[s[n] == f[n] for n in key_names]), full=True
            )
        )
        .subquery("fused")
    )
    statement = (
        knn.base.add_columns(fused.c.score, fused.c.semantic_rank, fused.c.fulltext_rank)
        .join(fused, sa.and_(*[column == fused.c[column.name] for column in target.key]))
        .order_by(fused.c.score.desc(), *target.key)
        .limit(k)
    )
    rows: list[Any] = run_statement(
        bind, connection, statement, None, chosen.settings, custom_plan=knn.filtered
    )
    one_entity = isinstance(bind, Session) and selects_one_entity(knn.base)
    hits = [
        HybridHit(
            row[0] if one_entity else row,
            float(row[-3]),
            None if row[-2] is None else int(row[-2]),
            None if row[-1] is None else int(row[-1]),
        )
        for row in rows
    ]
    return SearchResult(hits, chosen)
