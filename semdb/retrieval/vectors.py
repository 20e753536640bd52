"""The query of a search as a checked float32 vector: a text through the embedder, or a vector.

Anything else is refused before a statement is built: ``None``, a dict, a boolean, complex
numbers, strings of digits and object arrays get a :class:`~semdb.errors.VectorTypeError`
naming the argument; a wrong dimension, NaN or infinity, and (on a cosine column) the zero
vector, whose distance to everything is undefined, get a :class:`~semdb.errors.InvalidVectorError`.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np

from semdb.errors import (
    DimensionMismatchError,
    NonFiniteVectorError,
    SearchError,
    VectorTypeError,
    ZeroVectorError,
)
from semdb.orm.columns import VectorColumn
from semdb.orm.distance import Distance
from semdb.orm.types import FloatArray
from semdb.protocols import TextEmbedder

_REAL_KINDS = "iuf"  # numpy dtype kinds of real numbers: no bool, complex, object, strings
_FIX = "pass the query text (with embedder=...) or a 1-d array of floats (embedder.embed_query)"


def query_vector(
    target: VectorColumn, query: Any, embedder: TextEmbedder | None, *, argument: str = "query"
) -> FloatArray:
    """``query`` as a checked float32 vector for ``target``: text through ``embedder``."""
    if isinstance(query, str):
        if embedder is None:
            raise SearchError(
                f"searching {target.name} with text needs an embedder",
                fix="pass embedder=semdb.Embedder.load(...), or a query vector",
            )
        check_embedder(target, embedder)
        return checked_vector(target, embedder.embed_query(query), argument="the embedded query")
    return checked_vector(target, query, argument=argument)


def checked_vector(target: VectorColumn, value: Any, *, argument: str) -> FloatArray:
    """``value`` (an array or sequence of real numbers) as float32, checked for ``target``."""
    array = _real_array(value, argument)
    if array.ndim != 1:
        raise DimensionMismatchError(
            f"{argument} must be one vector (1-d); got an array of shape {array.shape}",
            fix="pass one vector at a time, e.g. vectors[i]",
        )
    if array.shape[0] != target.dimension:
        raise DimensionMismatchError(
            f"{argument} has {array.shape[0]} dimensions; {target.name} holds "
            f"{target.dimension}-dimensional vectors of model {target.spec.model!r}",
            fix=f"embed the query with {target.spec.model!r}",
        )
    with np.errstate(over="ignore"):  # beyond float32's range: infinite, refused below
        vector: FloatArray = array.astype(np.float32, copy=False)
    if not np.isfinite(vector).all():
        raise NonFiniteVectorError(
            f"{argument} holds NaN or infinite values (or values beyond float32's range)",
            fix="check the embedder's output; a search needs finite numbers",
        )
    if target.distance is Distance.COSINE and not vector.any():
        raise ZeroVectorError(
            f"{argument} is the zero vector: its cosine distance to every row of "
            f"{target.name} is undefined",
            fix="search with a non-zero vector (an embedder never returns the zero vector)",
        )
    return vector


def _real_array(value: Any, argument: str) -> np.ndarray[Any, Any]:
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):
        value = value.to_numpy()  # a pgvector Vector or HalfVector
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _REAL_KINDS:
            raise VectorTypeError(
                f"{argument} must be text or a vector of real numbers; got a numpy array of "
                f"{value.dtype}",
                fix=_FIX,
            )
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, (Real, np.number)):
                raise VectorTypeError(
                    f"{argument} must be text or a vector of real numbers; got a "
                    f"{type(value).__name__} holding {type(item).__name__} ({item!r:.40})",
                    fix=_FIX,
                )
        return np.asarray(value, dtype=np.float64)
    raise VectorTypeError(
        f"{argument} must be text or a vector (a 1-d array or list of real numbers); got "
        f"{type(value).__name__}",
        fix=_FIX,
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
