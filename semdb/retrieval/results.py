"""What a search returns: hits in order, and the plan that found them."""

from __future__ import annotations

from typing import Any, NamedTuple

from semdb.retrieval.plan import SearchPlan


class Hit(NamedTuple):
    """One result, unpackable as ``for row, distance in hits``.

    ``row`` is the ORM object when the search selects one entity (the default statement of an
    ORM attribute such as ``Doc.embedding``, or ``statement=select(Doc)``) and runs on a
    Session; otherwise it is the SQLAlchemy ``Row`` of the statement's columns, with
    ``distance`` as its last column (``hit.row.title``, ``hit.row._mapping[docs.c.id]``).
    """

    row: Any
    distance: float


class HybridHit(NamedTuple):
    """One hybrid result: the fused ``score`` (larger is better) and each leg's rank (None
    when that leg did not find the row among its candidates)."""

    row: Any
    score: float
    semantic_rank: int | None
    keyword_rank: int | None


class SearchResult(list[Any]):
    """A list of hits, best first, with the :class:`SearchPlan` that produced them (and, for
    a hybrid search, the fusion that ran: ``result.fusion``)."""

    def __init__(self, hits: list[Any], plan: SearchPlan, fusion: Any = None) -> None:
        super().__init__(hits)
        self.plan = plan
        self.fusion = fusion
        #: The query log's name for this search (for relevance feedback), when it was logged.
        self.query_id: int | None = None

    def within(self, max_distance: float | None) -> SearchResult:
        """The hits at most ``max_distance`` away (all of them for None), same plan."""
        if max_distance is None:
            return self
        limit = float(max_distance)
        within = SearchResult(
            [hit for hit in self if hit.distance <= limit], self.plan, self.fusion
        )
        within.query_id = self.query_id
        return within


class KeywordHit(NamedTuple):
    """One keyword (BM25) result: larger ``score`` is better."""

    row: Any
    score: float
