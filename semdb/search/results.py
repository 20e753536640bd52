"""What a search returns: hits in order, and the plan that found them."""

from __future__ import annotations

from typing import Any, NamedTuple

from semdb.search.plan import SearchPlan


class Hit(NamedTuple):
    """One result: ``row`` is the ORM object for ``select(Entity)`` searches, else the
    SQLAlchemy ``Row`` (which also carries ``distance``, or ``score`` for hybrid search).
    A named tuple (``for row, distance in hits``): a search makes k of them, and a frozen
    dataclass costs five times as much to build."""

    row: Any
    distance: float


class HybridHit(NamedTuple):
    """One hybrid result: the fused RRF ``score`` (larger is better) and each leg's rank
    (None when that leg did not find the row)."""

    row: Any
    score: float
    semantic_rank: int | None
    fulltext_rank: int | None


class SearchResult(list[Any]):
    """A list of hits, nearest first, with the :class:`SearchPlan` that produced them."""

    def __init__(self, hits: list[Any], plan: SearchPlan) -> None:
        super().__init__(hits)
        self.plan = plan

    def within(self, max_distance: float | None) -> SearchResult:
        """The hits at most ``max_distance`` away (all of them for None), same plan."""
        if max_distance is None:
            return self
        limit = float(max_distance)
        return SearchResult([hit for hit in self if hit.distance <= limit], self.plan)
