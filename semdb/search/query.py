"""Turning what the caller gives (text, a vector, a row) into a checked query vector."""

from __future__ import annotations

from typing import Any

from semdb.errors import DimensionMismatchError, SearchError
from semdb.orm.columns import VectorColumn
from semdb.orm.types import FloatArray, as_float32
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
    return as_float32(
        vector, dimension=target.dimension, where=f"the query vector for {target.name}"
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
