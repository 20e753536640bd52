"""The distances pgvector offers, each with its operator, function and operator classes.

One enum carries everything that must agree for an index to serve a query: the operator the
``ORDER BY`` uses (``<=>``), the operator class the index was built with
(``vector_cosine_ops``) and the plain function that computes the same value without any index
(``cosine_distance``), which exact search uses on purpose so that no index can be chosen.
"""

from __future__ import annotations

from enum import Enum

from semdb.errors import DeclarationError

#: pgvector's storage types semdb declares columns with.
STORAGES = ("vector", "halfvec")


class Distance(str, Enum):
    """How two vectors are compared. Smaller is closer for all four."""

    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "inner_product"
    L1 = "l1"

    @property
    def operator(self) -> str:
        """The pgvector operator; an ``ORDER BY col <op> q`` can use a matching index."""
        return _OPERATORS[self]

    @property
    def function(self) -> str:
        """The SQL function computing the same value as :attr:`operator`, never indexed.

        ``inner_product()`` returns the inner product while ``<#>`` returns its negation;
        :meth:`exact_sql_sign` says which sign to apply.
        """
        return _FUNCTIONS[self]

    @property
    def exact_sql_sign(self) -> int:
        """-1 where the function is the negation of the operator (inner product)."""
        return -1 if self is Distance.INNER_PRODUCT else 1

    def operator_class(self, storage: str = "vector") -> str:
        """The operator class an index on a ``storage`` column needs for this distance."""
        if storage not in STORAGES:
            raise DeclarationError(
                f"unknown vector storage {storage!r}", fix=f"use one of {', '.join(STORAGES)}"
            )
        return f"{storage}_{_OPCLASS_SUFFIX[self]}"

    @classmethod
    def parse(cls, value: str | Distance) -> Distance:
        """A distance from its name (``"cosine"``), operator (``"<=>"``) or itself."""
        if isinstance(value, Distance):
            return value
        text = str(value).strip().lower()
        for member in cls:
            if text in (member.value, member.operator, _OPCLASS_SUFFIX[member]):
                return member
        if text in ("ip", "dot", "max_inner_product"):
            return cls.INNER_PRODUCT
        if text in ("euclidean",):
            return cls.L2
        names = ", ".join(m.value for m in cls)
        raise DeclarationError(f"unknown distance {value!r}", fix=f"use one of {names}")

    @classmethod
    def from_operator_class(cls, opclass: str) -> tuple[Distance, str] | None:
        """``("vector_cosine_ops")`` -> ``(COSINE, "vector")``; None for other classes."""
        for storage in STORAGES:
            for member in cls:
                if opclass == member.operator_class(storage):
                    return member, storage
        return None


_OPERATORS = {
    Distance.COSINE: "<=>",
    Distance.L2: "<->",
    Distance.INNER_PRODUCT: "<#>",
    Distance.L1: "<+>",
}
_FUNCTIONS = {
    Distance.COSINE: "cosine_distance",
    Distance.L2: "l2_distance",
    Distance.INNER_PRODUCT: "inner_product",
    Distance.L1: "l1_distance",
}
_OPCLASS_SUFFIX = {
    Distance.COSINE: "cosine_ops",
    Distance.L2: "l2_ops",
    Distance.INNER_PRODUCT: "ip_ops",
    Distance.L1: "l1_ops",
}
