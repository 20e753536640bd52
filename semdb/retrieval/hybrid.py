"""Hybrid search: BM25 (:mod:`.keyword`) and vector search fused in one SQL statement, by the
fusion tuned for the column (``semdb tune-hybrid``) unless the call names one.

Each leg ranks its top ``candidates`` rows (default 100) among those passing ``where``: the
semantic leg by distance (the statement and plan of :func:`semdb.search`), the keyword leg
by BM25. Two fusions, each with a weight per leg:

``rrf`` (weighted reciprocal rank fusion)
    ``ws / (rrf_k + semantic_rank) + wk / (rrf_k + keyword_rank)``
``convex`` (convex combination of min-max normalised scores)
    ``ws * (dmax - d) / (dmax - dmin) + wk * (s - smin) / (smax - smin)``, the minimum and
    maximum over the leg's candidates (1 when they are equal)

A leg that did not find a row adds 0. The k best fused scores come back, ties broken by
the semantic rank, then the key. With no stored choice and no ``fusion=``: ``rrf``, weights
1 and 1, ``rrf_k`` 60. ``result.fusion`` says which fusion ran and where it came from.
A text without any term (stopwords, punctuation) leaves the keyword leg empty: the result
is the semantic leg's order; so does a keyword weight of 0 (the leg is not run).

Over a chunked column the semantic leg ranks parent rows by their best chunk (as
:func:`semdb.search` does; its candidates: the parents among the nearest ``4 x candidates``
chunks) and the keyword leg scores the parent's whole text: each parent comes back once.
``semdb.hybrid_search`` (SQL, installed by ``semdb db upgrade``) runs the same statement
from psql.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from semdb.errors import SearchError
from semdb.protocols import TextEmbedder
from semdb.retrieval.keyword import (
    DEFAULT_B,
    DEFAULT_K1,
    MAX_QUERY_WORDS,
    bm25_ranking,
    bm25_values,
    check_bm25,
    check_text,
    query_terms,
    search_names,
    terms_from_rows,
    terms_head,
)
from semdb.retrieval.nearest import KnnSearch, connection_of, kept
from semdb.retrieval.plan import PlanRequest, choose_plan
from semdb.retrieval.results import HybridHit, SearchResult
from semdb.retrieval.settings import Bind, bracket, execute
from semdb.retrieval.statement import (
    QUERY_VECTOR,
    PlanPath,
    check_k,
    knn_statement,
    query_parameter,
    selects_one_entity,
)
from semdb.retrieval.vectors import query_vector
from semdb.sync.keyword_stats import fold_before_reading
from semdb.sync.registry import check_query_model

__all__ = ["DEFAULT_CANDIDATES", "FUSIONS", "MAX_QUERY_WORDS", "Fusion", "hybrid_search"]

DEFAULT_RRF_K = 60
DEFAULT_CANDIDATES = 100
FUSIONS = ("rrf", "convex")


@dataclass(frozen=True)
class Fusion:
    """How the two legs' rankings are fused (``result.fusion``)."""

    method: str  # "rrf" or "convex"
    semantic_weight: float = 1.0
    keyword_weight: float = 1.0
    rrf_k: int = DEFAULT_RRF_K
    #: "given" (the call's arguments), "stored" (semdb tune-hybrid's choice) or "default".
    source: str = "default"

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise SearchError(
                f"fusion must be one of {', '.join(FUSIONS)}, got {self.method!r}",
                fix="pass fusion='rrf' or fusion='convex'",
            )
        for name in ("semantic_weight", "keyword_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise SearchError(
                    f"the {name.replace('_', ' ')} must be a number >= 0, got {value!r}",
                    fix="pass weights=(semantic, keyword), e.g. (0.7, 0.3)",
                )
        rrf_k = self.rrf_k
        if not isinstance(rrf_k, int) or isinstance(rrf_k, bool) or rrf_k < 0:
            raise SearchError(f"rrf_k must be a non-negative integer, got {rrf_k!r}", fix="use 60")


def resolve_fusion(
    stored: Fusion | None, fusion: str | None, weights: Any, rrf_k: int | None
) -> Fusion:
    """The call's choice over the stored one over the default."""
    base = stored or Fusion("rrf")
    if fusion is None and weights is None and rrf_k is None:
        return base
    if weights is not None:
        try:
            semantic, keyword = weights
        except (TypeError, ValueError):
            raise SearchError(
                f"weights must be a pair (semantic, keyword), got {weights!r}",
                fix="pass e.g. weights=(0.7, 0.3)",
            ) from None
    elif fusion is not None and fusion != base.method:
        semantic, keyword = 1.0, 1.0
    else:
        semantic, keyword = base.semantic_weight, base.keyword_weight
    return Fusion(
        fusion or base.method,
        semantic,
        keyword,
        base.rrf_k if rrf_k is None else rrf_k,
        "given",
    )


def hybrid_search(
    bind: Bind,
    column: Any,
    text: str,
    *,
    k: int = 10,
    where: Any = None,
    statement: sa.Select[Any] | None = None,
    embedder: TextEmbedder | None = None,
    vector: Any = None,
    fusion: str | None = None,
    weights: tuple[float, float] | None = None,
    rrf_k: int | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
    plan: PlanRequest = "auto",
    ef_search: int | None = None,
    exact_below: int | None = None,
) -> SearchResult:
    """The k best rows for ``text`` by BM25 and vector rankings fused (see the module).

    The query vector is ``vector`` when given, else ``embedder.embed_query(text)``.
    ``where`` filters both legs; ``statement`` as in :func:`semdb.search`. ``fusion``
    (``"rrf"`` or ``"convex"``), ``weights`` ``(semantic, keyword)`` and ``rrf_k`` override
    the column's stored choice. Hits are :class:`HybridHit` (score, and each leg's rank);
    k rows whenever k rows pass the filter. ``text`` holds at most :data:`MAX_QUERY_WORDS`
    words.
    """
    text = check_text(text)
    if not text.strip():
        raise SearchError("hybrid search needs a non-empty query text", fix="pass the user's query")
    check_k(k)
    k1, b = check_bm25(k1, b)
    pool = max(check_k(candidates, "candidates"), k)
    if fusion is not None:
        Fusion(fusion)  # checked before any round trip
    knn = KnnSearch.build(
        column,
        k=pool,
        where=where,
        statement=statement,
        ef_search=ef_search,
        plan=plan,
        exact_below=exact_below,
    )
    if knn.chunked:  # the chunks the SQL function semdb.hybrid_search fetches
        from semdb.retrieval.chunked import HYBRID_MIN_CANDIDATES, HYBRID_PER_ROW

        knn.chunk_candidates = (HYBRID_PER_ROW, HYBRID_MIN_CANDIDATES)
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
    chosen = choose_plan(connection, knn, {})
    # The query's terms come back in the round trip that sets the plan's settings.
    head = terms_head(connection, target, text)
    names = search_names(target)
    fold_before_reading(connection, *names)  # a deferred column's upkeep
    with bracket(connection, chosen.settings, custom_plan=True, head=head) as head_rows:
        terms = terms_from_rows(target, head_rows)
        if fold_before_reading(connection, *names, deferred=terms.deferred):
            terms = query_terms(connection, target, text)
        chosen_fusion = resolve_fusion(terms.fusion, fusion, weights, rrf_k)
        # The keyword leg is empty when the text has no term, or when the fusion gives it
        # no weight (then it could only add rows scored 0 after the others): not run.
        keyword_leg = bool(terms.terms) and chosen_fusion.keyword_weight > 0
        final = fused_statement(
            knn, chosen.path, pool, k, chosen_fusion.method, terms.postings if keyword_leg else None
        )
        values: dict[str, Any] = {
            QUERY_VECTOR: query_vec,
            "semdb_semantic_weight": float(chosen_fusion.semantic_weight),
            "semdb_keyword_weight": float(chosen_fusion.keyword_weight),
            "semdb_rrf_k": float(chosen_fusion.rrf_k),
        }
        if keyword_leg:
            values.update(bm25_values(terms, k1, b))
        rows: list[Any] = execute(bind, final, values)
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
    return SearchResult(hits, chosen, fusion=chosen_fusion)


def fused_statement(
    knn: KnnSearch, path: PlanPath, pool: int, k: int, method: str, postings: str | None
) -> sa.Select[Any]:
    """The fused statement of a search shaped as ``knn`` on ``path`` (``pool`` candidates per
    leg, ``k`` rows, ``method``; no keyword leg when ``postings`` is None), built once per
    shape and filter object (:func:`semdb.retrieval.nearest.kept`, a bounded cache): every
    value is a parameter (the query vector, the terms and their idfs, the BM25 constants,
    the weights and ``rrf_k``), so SQLAlchemy compiles it once too. (Building it, measured
    alone: about 2 ms of Python on a quiet 2-core machine; bench/README-hybrid.md.)
    """
    target = knn.target
    key = ("hybrid", path, pool, k, method, postings) + (
        target.column,
        target.entity,
        knn.given,
        knn.chunked,
    )
    return kept((*key, knn.where), lambda: _build_fused(knn, path, pool, k, method, postings))


def _build_fused(
    knn: KnnSearch, path: PlanPath, pool: int, k: int, method: str, postings: str | None
) -> sa.Select[Any]:
    target = knn.target
    keys = [c.name for c in target.key]

    # The semantic leg: the statement search() would run, keys and distances only (over a
    # chunked column: the parents ranked by their best chunk, each once).
    keys_only = knn.base.with_only_columns(*target.key, maintain_column_froms=True)
    if knn.chunked:
        from semdb.retrieval.chunked import ChunkedStatements

        top = (
            ChunkedStatements(target, keys_only, knn.where, pool, *knn.candidates())
            .build(path, 0)
            .subquery("semantic_top")
        )
    else:
        top = knn_statement(
            target,
            keys_only,
            path=path,
            k=pool,
            where=knn.where,
            query=query_parameter(target, path),
        ).subquery("semantic_top")
    distance = top.c.distance
    semantic = sa.select(
        *[top.c[n] for n in keys],
        sa.func.row_number().over(order_by=[distance, *[top.c[n] for n in keys]]).label("rank"),
        _normalised(-distance).label("norm"),
    ).cte("semantic")

    # The keyword leg: BM25 of the same rows.
    if postings is not None:
        ranked = bm25_ranking(target, knn.base, knn.where, postings, limit=pool)
        ranked_q = ranked.subquery("keyword_top")
        keyword = sa.select(
            *[ranked_q.c[n] for n in keys],
            ranked_q.c.rank,
            _normalised(ranked_q.c.score).label("norm"),
        ).cte("keyword")
    else:
        keyword = (
            sa.select(
                *[sa.cast(sa.null(), c.type).label(c.name) for c in target.key],
                sa.cast(sa.null(), sa.BigInteger).label("rank"),
                sa.cast(sa.null(), sa.Float).label("norm"),
            )
            .where(sa.false())
            .cte("keyword")
        )

    s, f = semantic.c, keyword.c
    ws = sa.bindparam("semdb_semantic_weight", type_=sa.Float)
    wk = sa.bindparam("semdb_keyword_weight", type_=sa.Float)
    if method == "rrf":
        constant = sa.bindparam("semdb_rrf_k", type_=sa.Float)
        score = ws * sa.func.coalesce(1.0 / (constant + s.rank), 0.0) + wk * sa.func.coalesce(
            1.0 / (constant + f.rank), 0.0
        )
    else:
        score = ws * sa.func.coalesce(s.norm, 0.0) + wk * sa.func.coalesce(f.norm, 0.0)
    limit = sa.literal_column(str(k), sa.Integer)
    fused_key = [sa.func.coalesce(s[n], f[n]).label(n) for n in keys]
    # The k best keys first (at most 2 x pool rows fused), then their rows: the table is
    # read for k rows, not for every candidate.
    fused_score = score.label("score")
    semantic_rank = s.rank.label("semantic_rank")
    fused = (
        sa.select(*fused_key, fused_score, semantic_rank, f.rank.label("keyword_rank"))
        .select_from(semantic.join(keyword, sa.and_(*[s[n] == f[n] for n in keys]), full=True))
        .order_by(fused_score.desc(), semantic_rank.asc().nulls_last(), *fused_key)
        .limit(limit)
        .subquery("fused")
    )
    return (
        knn.base.add_columns(fused.c.score, fused.c.semantic_rank, fused.c.keyword_rank)
        .join(fused, sa.and_(*[c == fused.c[c.name] for c in target.key]))
        .order_by(fused.c.score.desc(), fused.c.semantic_rank.asc().nulls_last(), *target.key)
        .limit(limit)
    )


def _normalised(value: Any) -> sa.ColumnElement[float]:
    """``(v - min) / (max - min)`` over the leg's rows (1 when they are all equal)."""
    low = sa.func.min(value, type_=sa.Float).over()
    high = sa.func.max(value, type_=sa.Float).over()
    spread = sa.func.nullif(high - low, 0.0, type_=sa.Float)
    return sa.func.coalesce((value - low) / spread, 1.0, type_=sa.Float)
