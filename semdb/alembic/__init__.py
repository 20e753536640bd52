"""Alembic support for your own tables' vector columns, vector indexes and embedding sync.

In your env.py::

    import semdb.alembic

    engine = create_engine(semdb.alembic.database_url())
    ...
    context.configure(connection=connection, ..., render_item=semdb.alembic.render_item)

Then ``alembic revision --autogenerate`` renders vector columns, HNSW/IVFFlat indexes with
their operator classes, and the sync registration/triggers; ``alembic check`` reports drift
in any of them. Operations: ``op.create_vector_index``, ``op.drop_vector_index``,
``op.create_embedding_sync``, ``op.drop_embedding_sync`` (see
:mod:`semdb.alembic.operations`).

Knows Alembic and :mod:`semdb.orm`; never ONNX Runtime.
"""

from __future__ import annotations

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
    "database_url",
    "reflect_vector_index",
    "render_item",
]


def database_url() -> str:
    """The URL of semdb's database, for ``create_engine`` in env.py: SEMDB_DATABASE_URL, else
    the embedded server under SEMDB_HOME (started if it is not running, and kept running
    while the process lives), as ``semdb db url --sqlalchemy`` prints it.

    Pass it to ``create_engine``, not to alembic.ini or ``config.set_main_option``: the
    embedded server's URL holds ``%2F`` (its socket folder), which the ini file's ``%``
    interpolation rejects.
    """
    from semdb.db.engine import resolve_url

    return resolve_url().render_as_string(hide_password=False)
