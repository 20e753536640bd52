"""Retrieval: nearest neighbours with filters and joins (plan chosen, k rows back), hybrid
full-text + vector search, and more-like-this, all on SQLAlchemy's and psycopg's public APIs.

One k-NN statement builder (:mod:`.statement`) serves every search; :mod:`.plan` decides
which path runs; :mod:`.settings` runs a statement under planner settings for it alone.
Knows SQLAlchemy and :mod:`semdb.orm`; never ONNX Runtime (it takes vectors or an embedder).
"""

from semdb.retrieval.hybrid import Fusion, hybrid_search
from semdb.retrieval.keyword import MAX_QUERY_WORDS, keyword_search
from semdb.retrieval.nearest import PreparedSearch, explain_search, search
from semdb.retrieval.plan import EXACT_BELOW_FACTOR, SearchPlan, exact_below_rows
from semdb.retrieval.results import Hit, HybridHit, KeywordHit, SearchResult
from semdb.retrieval.similar import more_like_this
from semdb.retrieval.statement import MAX_K, QUERY_VECTOR, knn_statement

__all__ = [
    "EXACT_BELOW_FACTOR",
    "MAX_K",
    "MAX_QUERY_WORDS",
    "QUERY_VECTOR",
    "Fusion",
    "Hit",
    "HybridHit",
    "KeywordHit",
    "PreparedSearch",
    "SearchPlan",
    "SearchResult",
    "exact_below_rows",
    "explain_search",
    "hybrid_search",
    "keyword_search",
    "knn_statement",
    "more_like_this",
    "search",
]
