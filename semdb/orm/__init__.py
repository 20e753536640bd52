"""Declaring vector columns: the pgvector type, the index, and what the vector is made from.

Knows SQLAlchemy and pgvector's formats; never ONNX Runtime.
"""

from semdb.orm.bulk import copy_rows
from semdb.orm.chunks import Chunks
from semdb.orm.columns import VectorColumn, vector_column
from semdb.orm.declaration import EmbeddingSpec, embedding_column, spec_of
from semdb.orm.distance import Distance
from semdb.orm.indexes import HNSW, IVFFlat
from semdb.orm.types import VectorType

__all__ = [
    "HNSW",
    "Chunks",
    "Distance",
    "EmbeddingSpec",
    "IVFFlat",
    "VectorColumn",
    "VectorType",
    "copy_rows",
    "embedding_column",
    "spec_of",
    "vector_column",
]
