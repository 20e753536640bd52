"""The SQLAlchemy type of a pgvector column, bound in binary, checked for its dimension.

>>> VectorType(384)                     # vector(384)
>>> VectorType(384, storage="halfvec")  # halfvec(384): half the bytes, same distances

Values go to the server in pgvector's binary wire format (a 4-byte header, then big-endian
float32 or float16 values), never as text: a bound value is wrapped in ``CAST(... AS
VECTOR(384))`` so the server knows its type without a per-connection type lookup, and it
arrives exactly as the float32 the embedder produced. Values come back as numpy float32
arrays. A value of the wrong dimension, or with NaN or infinity, is refused before it is sent.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any
from typing import cast as cast_type

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import Dialect, Float, cast
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.types import TypeEngine, UserDefinedType

from semdb.errors import DimensionMismatchError, NonFiniteVectorError, VectorTypeError
from semdb.orm.distance import STORAGES, Distance

FloatArray = np.ndarray[Any, np.dtype[np.float32]]

_HEADER = struct.Struct(">HH")
_WIRE_DTYPE: dict[str, np.dtype[Any]] = {"vector": np.dtype(">f4"), "halfvec": np.dtype(">f2")}
MAX_DIMENSION = {"vector": 16000, "halfvec": 16000}
_HALF_MAX = float(np.finfo(np.float16).max)


class WireVector:
    """A vector already encoded in pgvector's binary format, ready for psycopg to send."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        dimension = _HEADER.unpack_from(self.data)[0]
        return f"WireVector(dimension={dimension})"


class _WireVectorDumper(Dumper):
    """Sends a :class:`WireVector` as a binary parameter of unspecified type.

    The statement gives the type (``CAST($1 AS VECTOR(384))``, a vector column, a distance
    operator), so no oid lookup is needed and any psycopg connection can send it.
    """

    format = Format.BINARY
    oid = 0

    def dump(self, obj: Any) -> bytes:
        return bytes(obj.data)


psycopg.adapters.register_dumper(WireVector, _WireVectorDumper)


def as_float32(value: Any, *, dimension: int | None, where: str = "the vector") -> FloatArray:
    """``value`` (array, list, pgvector value) as a 1-d float32 array, checked.

    Raises :class:`VectorTypeError` for what is not real numbers (strings, booleans, complex
    numbers, objects), :class:`DimensionMismatchError` naming ``where`` when the shape is
    wrong, :class:`NonFiniteVectorError` when a value is NaN or infinite.
    """
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):
        value = value.to_numpy()
    if isinstance(value, (str, bytes)):
        raise VectorTypeError(
            f"{where} must be a sequence of numbers, got {type(value).__name__}",
            fix="pass a 1-d numpy float32 array (what the embedder returns)",
        )
    try:
        raw = np.asarray(value)
        if raw.dtype.kind not in "fiu":
            raise TypeError(f"{raw.dtype} values")
        array = raw.astype(np.float32, copy=False)
    except (TypeError, ValueError) as exc:
        raise VectorTypeError(
            f"{where} must be a sequence of numbers, got {type(value).__name__} ({exc})",
            fix="pass a 1-d numpy float32 array (what the embedder returns)",
        ) from exc
    if array.ndim != 1:
        raise DimensionMismatchError(
            f"{where} must be one vector (1-d), got an array of shape {array.shape}",
            fix="pass one row at a time, e.g. vectors[i]",
        )
    if dimension is not None and array.shape[0] != dimension:
        raise DimensionMismatchError(
            f"{where} holds {dimension}-dimensional vectors; got one with {array.shape[0]}",
            fix=f"embed with the model the column was declared with ({dimension} dimensions)",
        )
    if array.shape[0] == 0:
        raise DimensionMismatchError(f"{where} got an empty vector", fix="embed some text first")
    if not np.isfinite(array).all():
        raise NonFiniteVectorError(
            f"{where} got a vector with NaN or infinite values",
            fix="check the embedder's output (a zero-length text or a broken model)",
        )
    return array


def encode_vector(
    value: Any, *, dimension: int | None, storage: str = "vector", where: str = "the vector"
) -> bytes:
    """pgvector's binary input format for ``value`` (what ``vector_recv`` reads)."""
    array = as_float32(value, dimension=dimension, where=where)
    if storage == "halfvec" and float(np.abs(array).max()) > _HALF_MAX:
        raise DimensionMismatchError(
            f"{where} is a halfvec column and got values beyond ±{_HALF_MAX:.0f}",
            fix="normalise the vectors, or declare storage='vector'",
        )
    return _HEADER.pack(array.shape[0], 0) + array.astype(_WIRE_DTYPE[storage]).tobytes()


def encode_matrix(
    vectors: Any,
    *,
    dimension: int | None,
    storage: str = "vector",
    where: str = "the vectors",
    rows: Sequence[int] | None = None,
) -> list[bytes]:
    """Encode each row of a (n, dimension) array at once (for bulk writes and COPY).

    ``rows``: the number of each vector in the caller's input, for errors (default: its
    position in ``vectors``).
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise DimensionMismatchError(
            f"{where} must be a 2-d array (rows x dimension), got shape {array.shape}",
            fix="stack the vectors into one (n, dimension) float32 array",
        )
    if dimension is not None and array.shape[1] != dimension:
        raise DimensionMismatchError(
            f"{where} hold {dimension}-dimensional vectors; got {array.shape[1]} columns",
            fix=f"embed with the model the column was declared with ({dimension} dimensions)",
        )
    if array.size and not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise NonFiniteVectorError(
            f"{where}: row {rows[bad] if rows is not None else bad} has NaN or infinite values",
            fix="check the embedder's output for that row",
        )
    if storage == "halfvec" and array.size and float(np.abs(array).max()) > _HALF_MAX:
        raise DimensionMismatchError(
            f"{where} go to a halfvec column and hold values beyond ±{_HALF_MAX:.0f}",
            fix="normalise the vectors, or declare storage='vector'",
        )
    header = _HEADER.pack(array.shape[1], 0)
    payload = np.ascontiguousarray(array.astype(_WIRE_DTYPE[storage]))
    width = payload.shape[1] * payload.dtype.itemsize
    raw = payload.tobytes()
    return [header + raw[i : i + width] for i in range(0, len(raw), width)]


def decode_vector(value: Any) -> FloatArray | None:
    """A value as the driver returns it (text, pgvector object, binary) -> float32 array."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False)
    if hasattr(value, "to_numpy"):
        return np.asarray(value.to_numpy(), dtype=np.float32)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        dimension = _HEADER.unpack_from(raw)[0]
        itemsize = (len(raw) - _HEADER.size) // max(dimension, 1)
        dtype = _WIRE_DTYPE["vector"] if itemsize == 4 else _WIRE_DTYPE["halfvec"]
        values = np.frombuffer(raw, dtype=dtype, offset=_HEADER.size)
        return values.astype(np.float32)
    if isinstance(value, str):
        body = value.strip()[1:-1]
        return np.array(body.split(","), dtype=np.float32) if body else np.zeros(0, np.float32)
    return np.asarray(value, dtype=np.float32)


class VectorType(UserDefinedType[FloatArray]):
    """A pgvector ``vector(n)`` or ``halfvec(n)`` column, values as numpy float32 arrays.

    The comparator offers pgvector's distance operators (``l2_distance``,
    ``cosine_distance``, ``max_inner_product``, ``l1_distance``) and :meth:`Comparator.distance`
    for a :class:`Distance` chosen at run time.
    """

    cache_ok = True

    def __init__(
        self, dimension: int | None = None, storage: str = "vector", label: str | None = None
    ) -> None:
        super().__init__()
        if storage not in STORAGES:
            raise DimensionMismatchError(
                f"unknown vector storage {storage!r}", fix=f"use one of {', '.join(STORAGES)}"
            )
        if dimension is not None and not (0 < int(dimension) <= MAX_DIMENSION[storage]):
            raise DimensionMismatchError(
                f"a {storage} column holds 1 to {MAX_DIMENSION[storage]} dimensions, "
                f"not {dimension}",
                fix="check the model's dimension",
            )
        self.dimension = None if dimension is None else int(dimension)
        self.storage = storage
        self.label = label or "the vector"  # "table.column" once attached to a column

    @property
    def python_type(self) -> type[Any]:
        return np.ndarray

    def get_col_spec(self, **kw: Any) -> str:
        name = self.storage.upper()
        return name if self.dimension is None else f"{name}({self.dimension})"

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], WireVector | None]:
        dimension, storage, label = self.dimension, self.storage, self.label

        def process(value: Any) -> WireVector | None:
            if value is None:
                return None
            if isinstance(value, WireVector):
                return value
            return WireVector(
                encode_vector(value, dimension=dimension, storage=storage, where=label)
            )

        return process

    def bind_expression(self, bindvalue: BindParameter[Any]) -> ColumnElement[Any]:
        return cast(bindvalue, self)

    def literal_processor(self, dialect: Dialect) -> Callable[[Any], str]:
        dimension, label = self.dimension, self.label

        def process(value: Any) -> str:
            array = as_float32(value, dimension=dimension, where=label)
            return "'[" + ",".join(repr(float(x)) for x in array) + "]'"

        return process

    def result_processor(
        self, dialect: Dialect, coltype: object
    ) -> Callable[[Any], FloatArray | None]:
        return decode_vector

    class Comparator(UserDefinedType.Comparator[FloatArray]):
        def _distance_op(self, operator: str, other: Any) -> ColumnElement[float]:
            return cast_type(ColumnElement[float], self.op(operator, return_type=Float)(other))

        def l2_distance(self, other: Any) -> ColumnElement[float]:
            return self._distance_op("<->", other)

        def cosine_distance(self, other: Any) -> ColumnElement[float]:
            return self._distance_op("<=>", other)

        def max_inner_product(self, other: Any) -> ColumnElement[float]:
            """The negated inner product (``<#>``): smaller is closer."""
            return self._distance_op("<#>", other)

        def l1_distance(self, other: Any) -> ColumnElement[float]:
            return self._distance_op("<+>", other)

        def distance(self, other: Any, distance: Distance | str) -> ColumnElement[float]:
            """The distance operator for ``distance`` (an index on it can serve the ORDER BY)."""
            return self._distance_op(Distance.parse(distance).operator, other)

    comparator_factory = Comparator


def is_vector_type(type_: TypeEngine[Any]) -> bool:
    return isinstance(type_, VectorType)
