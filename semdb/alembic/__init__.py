"""Alembic support for your own tables' vector columns, vector indexes and embedding sync.

In your env.py::

    import semdb.alembic

    context.configure(..., render_item=semdb.alembic.render_item)

Then ``alembic revision --autogenerate`` renders vector columns, HNSW/IVFFlat indexes with
their operator classes, and the sync registration/triggers; ``alembic check`` reports drift
in any of them. Operations: ``op.create_vector_index``, ``op.drop_vector_index``,
``op.create_embedding_sync``, ``op.drop_embedding_sync`` (see
:mod:`semdb.alembic.operations`).

Knows Alembic and :mod:`semdb.orm`; never ONNX Runtime.
"""

from semdb.alembic.autogenerate import reflect_vector_index, render_item
from semdb.alembic.operations import (
    CreateEmbeddingSyncOp,
    CreateVectorIndexOp,
    DropEmbeddingSyncOp,
    DropVectorIndexOp,
)

__all__ = [
    "CreateEmbeddingSyncOp",
    "CreateVectorIndexOp",
    "DropEmbeddingSyncOp",
    "DropVectorIndexOp",
    "reflect_vector_index",
    "render_item",
]
