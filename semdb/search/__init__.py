"""Search: nearest neighbours with filters and joins (plan chosen, k rows back), hybrid
full-text + vector search fused with reciprocal rank fusion in one statement, and
more-like-this.

Knows SQLAlchemy and :mod:`semdb.orm`; never ONNX Runtime (it takes vectors or an embedder).
"""

from semdb.search.hybrid import hybrid_search
from semdb.search.plan import EXACT_BELOW_FACTOR, SearchPlan, exact_below_rows
from semdb.search.results import Hit, HybridHit, SearchResult
from semdb.search.semantic import PreparedSearch, explain_search, search
from semdb.search.similar import more_like_this

__all__ = [
    "EXACT_BELOW_FACTOR",
    "Hit",
    "HybridHit",
    "PreparedSearch",
    "SearchPlan",
    "SearchResult",
    "exact_below_rows",
    "explain_search",
    "hybrid_search",
    "more_like_this",
    "search",
]
