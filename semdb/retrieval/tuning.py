"""Choosing a column's hybrid fusion on validation queries: ``semdb tune-hybrid``.

Each validation query runs both legs once through semdb's own statements (BM25 and vector
search, ``candidates`` rows each, the rows ``hybrid_search`` would fuse); every fusion of
:data:`GRID` is then scored on those rankings in Python, with the formula and tie-breaking
of the SQL (:mod:`.hybrid`), by nDCG@10 against the query's judged rows (semdb's one
evaluator, :func:`semdb.evaluation.metrics.evaluate_rankings`, as ``semdb eval`` scores).
The best one is stored in ``semdb.hybrid_fusion``, with its score and the score of each
leg alone, and ``hybrid_search`` uses it from then on. The grid holds both legs alone (a
weight of 0), so that a set where one leg is far better gets that leg rather than a fusion
that hurts it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from semdb.db.schema import hybrid_fusion
from semdb.errors import SearchError
from semdb.evaluation.metrics import evaluate_rankings
from semdb.orm.columns import vector_column
from semdb.protocols import TextEmbedder
from semdb.retrieval.hybrid import DEFAULT_CANDIDATES, Fusion
from semdb.retrieval.keyword import keyword_search
from semdb.retrieval.nearest import connection_of, search
from semdb.retrieval.settings import Bind
from semdb.sync.registry import find

_WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
#: Every fusion tried: RRF with k 5, 20 and 60 and the keyword leg's weight from 0 to 1 in
#: steps of 0.1 (the semantic leg's: 1 minus it), and the convex combination likewise.
GRID: list[Fusion] = [
    Fusion("rrf", round(1 - w, 1), w, rrf_k) for rrf_k in (60, 20, 5) for w in _WEIGHTS
] + [Fusion("convex", round(1 - w, 1), w) for w in _WEIGHTS]

Ranking = list[tuple[Any, float]]  # (key, distance or score), best first


@dataclass
class Tuning:
    """What ``tune_hybrid`` chose, and the nDCG@10 of every fusion tried."""

    fusion: Fusion
    ndcg: float
    semantic_ndcg: float
    keyword_ndcg: float
    queries: int
    scores: dict[str, float] = field(default_factory=dict)


def fuse(semantic: Ranking, keyword: Ranking, fusion: Fusion, k: int = 10) -> list[Any]:
    """The keys :func:`semdb.hybrid_search` returns for these two legs (same formula, same
    order of ties: score, then semantic rank, then key)."""

    def normalised(values: list[float]) -> list[float]:
        if not values:
            return []
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high != low else 1.0 for v in values]

    s_rank = {key: i + 1 for i, (key, _) in enumerate(semantic)}
    k_rank = {key: i + 1 for i, (key, _) in enumerate(keyword)}
    s_norm = dict(zip(s_rank, normalised([-d for _, d in semantic]), strict=True))
    k_norm = dict(zip(k_rank, normalised([s for _, s in keyword]), strict=True))
    ws, wk = fusion.semantic_weight, fusion.keyword_weight
    scores = {}
    for key in s_rank.keys() | k_rank.keys():
        if fusion.method == "rrf":
            a = 1.0 / (fusion.rrf_k + s_rank[key]) if key in s_rank else 0.0
            b = 1.0 / (fusion.rrf_k + k_rank[key]) if key in k_rank else 0.0
        else:
            a, b = s_norm.get(key, 0.0), k_norm.get(key, 0.0)
        scores[key] = ws * a + wk * b
    return sorted(scores, key=lambda key: (-scores[key], s_rank.get(key, math.inf), key))[:k]


def leg_rankings(
    bind: Bind,
    column: Any,
    text: str,
    vector: Any,
    *,
    candidates: int = DEFAULT_CANDIDATES,
) -> tuple[Ranking, Ranking]:
    """Both legs' top ``candidates`` ``(key, distance / score)`` for one query."""
    target = vector_column(column)
    if len(target.key) != 1:
        raise SearchError(
            f"tuning needs a one-column key; {target.name} has {len(target.key)}",
            fix="tune on a table keyed by one column (the BEIR corpus id)",
        )
    key = target.key[0]
    light = sa.select(key)
    semantic = search(bind, column, vector, k=candidates, statement=light)
    keyword = keyword_search(bind, column, text, k=candidates, statement=light)
    return (
        [(hit.row[0], hit.distance) for hit in semantic],
        [(hit.row[0], hit.score) for hit in keyword],
    )


def tune_hybrid(
    bind: Bind,
    column: Any,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[Any, float]],
    *,
    embedder: TextEmbedder | None = None,
    vectors: Mapping[str, Any] | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    grid: Iterable[Fusion] = GRID,
    store: bool = True,
) -> Tuning:
    """Pick the fusion of :data:`GRID` with the best mean nDCG@10 on ``qrels`` (query id ->
    {row key: gain}) and, with ``store``, record it for ``column``.

    Query vectors: ``vectors[query_id]`` when given, else ``embedder``'s (one batch).
    """
    judged = [q for q in qrels if q in queries and any(g > 0 for g in qrels[q].values())]
    if not judged:
        raise SearchError(
            "no validation query has both a text and a judged row",
            fix="pass queries {id: text} and qrels {id: {row key: gain}} with shared ids",
        )
    if vectors is None:
        if embedder is None:
            raise SearchError("tuning needs query vectors", fix="pass embedder= or vectors=")
        matrix = np.asarray(embedder.embed([queries[q] for q in judged], kind="query"))
        vectors = dict(zip(judged, matrix, strict=True))
    legs = {
        q: leg_rankings(bind, column, queries[q], vectors[q], candidates=candidates) for q in judged
    }

    judged_qrels = {q: qrels[q] for q in judged}

    def mean(ranking_of: Callable[[str], list[Any]]) -> float:
        """Mean nDCG@10 over the judged queries (semdb.evaluation, as ``semdb eval``)."""
        rankings = {q: ranking_of(q) for q in judged}
        return evaluate_rankings(rankings, judged_qrels, ("ndcg@10",))["ndcg@10"]

    scores: dict[str, float] = {}
    best: tuple[float, Fusion] | None = None
    for fusion in grid:
        value = mean(functools.partial(_fused, legs, fusion))
        scores[describe(fusion)] = value
        if best is None or value > best[0] + 1e-12:
            best = (value, fusion)
    assert best is not None
    chosen = Fusion(
        best[1].method, best[1].semantic_weight, best[1].keyword_weight, best[1].rrf_k, "stored"
    )
    result = Tuning(
        chosen,
        best[0],
        mean(lambda q: [key for key, _ in legs[q][0]]),
        mean(lambda q: [key for key, _ in legs[q][1]]),
        len(judged),
        scores,
    )
    if store:
        store_fusion(bind, column, result)
    return result


def _fused(legs: Mapping[str, tuple[Ranking, Ranking]], fusion: Fusion, query: str) -> list[Any]:
    return fuse(*legs[query], fusion)


def describe(fusion: Fusion) -> str:
    weights = f"{fusion.semantic_weight:g}/{fusion.keyword_weight:g}"
    if fusion.method == "rrf":
        return f"rrf k={fusion.rrf_k} weights={weights}"
    return f"convex weights={weights}"


def store_fusion(bind: Bind, column: Any, tuning: Tuning) -> None:
    """Record ``tuning.fusion`` as ``column``'s default (in the caller's transaction)."""
    connection = connection_of(bind)
    target = vector_column(column)
    registered = find(
        connection, target.table.schema or "public", target.table.name, target.column.name
    )
    if registered is None or registered.id is None:
        raise SearchError(f"{target.name} is not registered", fix="op.create_embedding_sync")
    fusion = tuning.fusion
    values = {
        "method": fusion.method,
        "semantic_weight": fusion.semantic_weight,
        "keyword_weight": fusion.keyword_weight,
        "rrf_k": fusion.rrf_k,
        "metrics": {
            "ndcg@10": tuning.ndcg,
            "semantic ndcg@10": tuning.semantic_ndcg,
            "keyword ndcg@10": tuning.keyword_ndcg,
            "queries": tuning.queries,
        },
        "tuned_at": sa.func.now(),
    }
    statement = insert(hybrid_fusion).values(column_id=registered.id, **values)
    connection.execute(statement.on_conflict_do_update(index_elements=["column_id"], set_=values))
