"""More like this: the rows nearest to a row's stored vector (the row itself left out).

>>> semdb.more_like_this(session, Doc.embedding, doc, k=5)          # an ORM object
>>> semdb.more_like_this(connection, docs.c.embedding, 42, k=5)     # a primary key value
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from semdb.errors import SearchError
from semdb.orm.columns import vector_column
from semdb.retrieval.nearest import connection_of, search
from semdb.retrieval.plan import PlanRequest
from semdb.retrieval.results import SearchResult
from semdb.retrieval.settings import Bind


def more_like_this(
    bind: Bind,
    column: Any,
    row: Any,
    *,
    k: int = 10,
    where: Any = None,
    statement: sa.Select[Any] | None = None,
    max_distance: float | None = None,
    ef_search: int | None = None,
    plan: PlanRequest = "auto",
    exact_below: int | None = None,
) -> SearchResult:
    """The k rows nearest to the stored vector of ``row`` (an ORM object, or its key)."""
    target = vector_column(column)
    key_values = _key_values(target.key, row)
    same_row = sa.and_(*[c == v for c, v in zip(target.key, key_values, strict=True)])
    connection = connection_of(bind)
    stored = connection.execute(sa.select(target.column).where(same_row)).first()
    if stored is None:
        raise SearchError(
            f"{target.table.fullname} has no row with key {key_values!r}",
            fix="pass an existing row or its primary key",
        )
    if stored[0] is None:
        raise SearchError(
            f"the row {key_values!r} of {target.table.fullname} has no vector yet",
            fix="embed it first (inline sync, semdb worker, or semdb backfill)",
        )
    options: dict[str, Any] = dict(
        statement=statement,
        ef_search=ef_search,
        plan=plan,
        exact_below=exact_below,
        max_distance=max_distance,
    )
    if where is None:  # unfiltered: ask for one more and drop the row itself
        result = search(bind, target, stored[0], k=k + 1, **options)
        kept = [hit for hit in result if not _is_row(hit.row, target.key, key_values)][:k]
    else:
        result = search(bind, target, stored[0], k=k, where=sa.and_(where, ~same_row), **options)
        kept = list(result)
    return SearchResult(kept, result.plan)


def _key_values(key: tuple[sa.Column[Any], ...], row: Any) -> tuple[Any, ...]:
    state = sa.inspect(row, raiseerr=False)
    identity = getattr(state, "identity", None)
    if identity is not None:
        return tuple(identity)
    if state is not None and hasattr(state, "mapper"):
        raise SearchError(
            "more_like_this needs a row that is stored (it has no primary key yet)",
            fix="flush the session first",
        )
    values = row if isinstance(row, tuple) else (row,)
    if len(values) != len(key):
        raise SearchError(
            f"the key has {len(key)} column(s) ({', '.join(c.name for c in key)}); "
            f"got {len(values)} value(s)",
            fix="pass the primary key value (a tuple for a composite key)",
        )
    return values


def _is_row(item: Any, key: tuple[sa.Column[Any], ...], values: tuple[Any, ...]) -> bool:
    identity = getattr(sa.inspect(item, raiseerr=False), "identity", None)
    if identity is not None:
        return tuple(identity) == values
    mapping = getattr(item, "_mapping", None)
    if mapping is not None:
        try:
            return tuple(mapping[c] for c in key) == values
        except KeyError:
            return False
    return False
