"""Vector index kinds, each paired with the query settings it implies.

>>> HNSW(m=16, ef_construction=64, ef_search=40)
>>> IVFFlat(lists=100, probes=10)
>>> HNSW(halfvec=True)   # index a vector column as halfvec: half the index size

Build-time options become the index's ``WITH (...)``; query-time options (``ef_search``,
``probes``) are what :mod:`semdb.retrieval` sets with ``SET LOCAL`` for each query.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from semdb.errors import DeclarationError
from semdb.orm.distance import Distance

_MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class HNSW:
    """A hierarchical navigable small world graph: good recall and speed, slower to build.

    ``m``: links per node (2-100); ``ef_construction``: candidate list while building
    (>= 2 m); ``ef_search``: candidate list per query (1-1000, raised to k when smaller);
    ``halfvec``: build the index on ``column::halfvec(n)`` (vector columns only).
    """

    m: int = 16
    ef_construction: int = 64
    ef_search: int = 40
    halfvec: bool = False

    method: Literal["hnsw"] = "hnsw"

    def __post_init__(self) -> None:
        _check_range("HNSW m", self.m, 2, 100)
        _check_range("HNSW ef_construction", self.ef_construction, 4, 1000)
        _check_range("HNSW ef_search", self.ef_search, 1, 1000)
        if self.ef_construction < 2 * self.m:
            raise DeclarationError(
                f"HNSW ef_construction ({self.ef_construction}) must be at least 2 x m "
                f"({2 * self.m})",
                fix="raise ef_construction or lower m",
            )

    def with_options(self) -> dict[str, int]:
        return {"m": self.m, "ef_construction": self.ef_construction}


@dataclass(frozen=True)
class IVFFlat:
    """Inverted lists: fast to build, needs data before it is built (lists from rows/1000).

    ``lists``: clusters (1-32768); ``probes``: clusters searched per query.
    """

    lists: int = 100
    probes: int = 10
    halfvec: bool = False

    method: Literal["ivfflat"] = "ivfflat"

    def __post_init__(self) -> None:
        _check_range("IVFFlat lists", self.lists, 1, 32768)
        _check_range("IVFFlat probes", self.probes, 1, 32768)

    def with_options(self) -> dict[str, int]:
        return {"lists": self.lists}


VectorIndex = HNSW | IVFFlat
METHODS = ("hnsw", "ivfflat")


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DeclarationError(
            f"{what} must be an integer from {low} to {high}, got {value!r}",
            fix=f"pick a value in [{low}, {high}]",
        )


def index_name(table: str, column: str, method: str) -> str:
    """``ix_<table>_<column>_<method>``, shortened with a hash to PostgreSQL's 63 bytes."""
    name = f"ix_{table}_{column}_{method}"
    if len(name.encode()) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name.encode()[: _MAX_IDENTIFIER - 9].decode(errors="ignore") + "_" + digest


def index_storage(index: VectorIndex, storage: str) -> str:
    """The type the index works on: the column's storage, or halfvec for a halfvec index."""
    if index.halfvec and storage == "halfvec":
        raise DeclarationError(
            "halfvec=True indexes a vector column as halfvec; this column is halfvec already",
            fix="drop halfvec=True from the index",
        )
    return "halfvec" if index.halfvec else storage


def indexed_expression(
    column: ColumnElement[Any], index: VectorIndex, storage: str, dimension: int
) -> ColumnElement[Any]:
    """What the index covers (and what an ORDER BY must repeat to use it)."""
    from semdb.orm.types import VectorType

    if index_storage(index, storage) == storage:
        return column
    return sa.cast(column, VectorType(dimension, "halfvec"))


def build_index(
    column: sa.Column[Any],
    index: VectorIndex,
    *,
    distance: Distance,
    storage: str,
    dimension: int,
    name: str | None = None,
    **dialect_kw: Any,
) -> sa.Index:
    """The SQLAlchemy Index for ``column`` (attached to its table)."""
    if index.method == "ivfflat" and distance is Distance.L1:
        raise DeclarationError(
            "IVFFlat indexes do not support the L1 distance", fix="use HNSW, or another distance"
        )
    table = column.table
    name = name or index_name(table.name, column.name, index.method)
    opclass = distance.operator_class(index_storage(index, storage))
    expression = indexed_expression(column, index, storage, dimension)
    if expression is column:
        target: ColumnElement[Any] = column
        ops_key = column.name
    else:
        ops_key = f"{column.name}_halfvec"
        target = expression.label(ops_key)
    return sa.Index(
        name,
        target,
        postgresql_using=index.method,
        postgresql_with=index.with_options(),
        postgresql_ops={ops_key: opclass},
        info={"semdb.vector_index": True},
        **dialect_kw,
    )
