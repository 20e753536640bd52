"""Turning what the caller gives (text, a vector, a row) into a checked query vector."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from semdb.errors import DimensionMismatchError, SearchError
from semdb.orm.columns import VectorColumn
from semdb.orm.types import FloatArray, WireVector, as_float32, encode_vector
from semdb.protocols import TextEmbedder


def query_vector(target: VectorColumn, query: Any, embedder: TextEmbedder | None) -> FloatArray:
    """``query`` as a float32 vector for ``target``: text through ``embedder``, else as is."""
    if isinstance(query, str):
        if embedder is None:
            raise SearchError(
                f"searching {target.name} with text needs an embedder",
                fix="pass embedder=semdb.Embedder.load(...) or a query vector",
            )
        check_embedder(target, embedder)
        vector = embedder.embed_query(query)
    else:
        vector = query
    if (
        type(vector) is np.ndarray
        and vector.dtype == np.float32
        and vector.shape == (target.dimension,)
        and finite(vector)
    ):
        return vector  # what embedders return, checked in one pass
    return as_float32(
        vector, dimension=target.dimension, where=f"the query vector for {target.name}"
    )


def finite(vector: FloatArray) -> bool:
    """Are all values of a float32 vector finite?

    The dot product with itself (``np.vdot``: one BLAS call, the cheapest whole-vector
    operation numpy has, and one that leaves the floating-point flags unread, so an overflow
    warns nobody) is finite when they are, unless huge values overflow float32; then a
    float64 sum, which cannot overflow, decides.
    """
    return math.isfinite(np.vdot(vector, vector)) or math.isfinite(vector.sum(dtype=np.float64))


_VECTOR_HEADER = struct.Struct(">HH")
_BIG_ENDIAN_FLOAT32 = np.dtype(">f4")


def wire_vector(vector: FloatArray, storage: str, target: VectorColumn) -> WireVector:
    """A checked query vector (see :func:`query_vector`) in pgvector's binary format for a
    ``storage`` (vector or halfvec) parameter: encoded once, not checked again on binding."""
    if storage == "vector":
        return WireVector(
            _VECTOR_HEADER.pack(vector.shape[0], 0) + vector.astype(_BIG_ENDIAN_FLOAT32).tobytes()
        )
    where = f"the query vector for {target.name}"
    return WireVector(
        encode_vector(vector, dimension=vector.shape[0], storage=storage, where=where)
    )


def check_embedder(target: VectorColumn, embedder: TextEmbedder) -> None:
    """The embedder must make vectors of the column's dimension, with the declared model."""
    if embedder.dimension != target.dimension:
        raise DimensionMismatchError(
            f"{target.name} holds {target.dimension}-dimensional vectors of model "
            f"{target.spec.model!r}; the embedder makes {embedder.dimension}-dimensional ones "
            f"({embedder.model_name!r})",
            fix=f"load the model {target.spec.model!r}",
        )
    if embedder.model_name != target.spec.model:
        raise SearchError(
            f"{target.name} holds vectors of model {target.spec.model!r}; the embedder is "
            f"{embedder.model_name!r}: its vectors are not comparable",
            fix=f"load the model {target.spec.model!r}",
        )
