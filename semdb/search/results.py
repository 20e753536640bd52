"""What a search returns: hits in order, and the plan that found them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semdb.search.plan import SearchPlan


@dataclass(frozen=True)
class Hit:
    """One result: ``row`` is the ORM object for ``select(Entity)`` searches, else the
    SQLAlchemy ``Row`` (which also carries ``distance``, or ``score`` for hybrid search)."""

    row: Any
    distance: float


@dataclass(frozen=True)
class HybridHit:
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
