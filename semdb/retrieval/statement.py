"""The one k-nearest-neighbour statement that every search runs (search, hybrid search,
more-like-this, the training package's evaluation and mining), in two forms whose SQL
differs, so that the planner cannot swap one for the other:

- ``index``: ``ORDER BY <indexed expression> <op> :q LIMIT k``, which the HNSW or IVFFlat
  index serves (a halfvec expression index gets a halfvec query);
- ``exact``: ``ORDER BY cosine_distance(col, :q) LIMIT k``, which no index serves: the
  distance of every passing row, the true top k.

The query vector is the bound parameter :data:`QUERY_VECTOR`, so that a statement built once
runs with any vector; ``k`` is written into the SQL, so that a generic plan knows it too.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import defer
from sqlalchemy.orm.exc import UnmappedColumnError

from semdb.errors import SearchError
from semdb.orm.columns import VectorColumn
from semdb.orm.types import VectorType

PlanPath = Literal["index", "exact"]
#: The name of the query vector's bound parameter in search statements.
QUERY_VECTOR = "semdb_query_vector"
MAX_K = 10000


def check_k(k: Any, argument: str = "k") -> int:
    """``k`` as the number of rows a search returns: an integer from 1 to :data:`MAX_K`."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise SearchError(
            f"{argument} must be an integer from 1 to {MAX_K}, got {k!r}",
            fix=f"pass {argument}=10",
        )
    return k


def query_parameter(target: VectorColumn, path: PlanPath, value: Any = None) -> Any:
    """The query vector as a bound parameter of the type ``path`` compares it with: the
    index's storage (halfvec for a halfvec expression index) or the column's."""
    storage = target.index_storage() if path == "index" else target.spec.storage
    type_ = VectorType(target.dimension, storage, label=f"the query vector for {target.name}")
    return sa.bindparam(QUERY_VECTOR, value, type_=type_)


def knn_statement(
    target: VectorColumn,
    base: sa.Select[Any],
    *,
    path: PlanPath,
    k: int,
    where: Any = None,
    query: Any = None,
) -> sa.Select[Any]:
    """``base`` with a ``distance`` column added, filtered by ``where``, ordered by the
    distance to the query vector and limited to ``k`` rows. ``query`` defaults to the
    :func:`query_parameter` of ``path``, given its value at execution."""
    if query is None:
        query = query_parameter(target, path)
    distance = target.index_distance(query) if path == "index" else target.exact_distance(query)
    statement = base.add_columns(distance.label("distance"))
    if where is not None:
        statement = statement.where(where)
    limit = sa.literal_column(str(check_k(k)), sa.Integer)
    return statement.order_by(distance).limit(limit)


def default_statement(target: VectorColumn) -> sa.Select[Any]:
    """The whole row but for the stored vector and its content hash: deferred on an ORM
    entity (loaded if read), left out of a table's row. A hit seldom needs them, and a
    384-d vector costs about 7.5 kB to send and parse, more than the search itself."""
    heavy = [target.column, target.hash_column]
    if target.entity is None:
        return sa.select(*[column for column in target.table.c if column not in heavy])
    mapper = sa.inspect(target.entity)
    deferred = []
    for column in heavy:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            continue
        deferred.append(defer(getattr(target.entity, prop.key)))
    return sa.select(target.entity).options(*deferred)


def base_statement(target: VectorColumn, statement: Any) -> sa.Select[Any]:
    """The statement a search extends: the one given (its ORDER BY and LIMIT dropped: a
    search orders by distance and keeps k), or :func:`default_statement`."""
    if statement is None:
        return default_statement(target)
    if not isinstance(statement, sa.Select):
        raise SearchError(
            f"statement must be a select(), got {type(statement).__name__}",
            fix="pass e.g. statement=select(Doc).join(Doc.author)",
        )
    return statement.order_by(None).limit(None)


def check_filter(where: Any) -> Any:
    """``where`` as one SQLAlchemy boolean expression (None: no filter)."""
    if where is None:
        return None
    if isinstance(where, str):
        raise SearchError(
            "where must be a SQLAlchemy expression, not a string of SQL",
            fix="write the filter with SQLAlchemy, e.g. where=Doc.lang == 'en'",
        )
    if isinstance(where, sa.ColumnElement):
        return where
    try:
        return sa.and_(where)
    except sa.exc.ArgumentError as exc:
        raise SearchError(
            f"where must be a SQLAlchemy boolean expression, got {type(where).__name__}",
            fix="write the filter with SQLAlchemy, e.g. where=Doc.lang == 'en'",
        ) from exc


def selects_one_entity(statement: sa.Select[Any]) -> bool:
    """Does ``statement`` select one ORM entity (hits then carry the object itself)?"""
    descriptions = statement.column_descriptions
    if len(descriptions) != 1:
        return False
    entity = descriptions[0].get("entity")
    return entity is not None and descriptions[0].get("expr") is entity
