"""Holding a column's registration while vectors are written to it.

Every batch a worker or backfill writes starts by reading the column's row in
``semdb.vector_columns`` ``FOR KEY SHARE``. An activation's switch locks that row
``FOR UPDATE`` before it swaps the columns, so the two never overlap: a batch that began
before the switch finishes (into the old column, with the old model) before the switch goes
on, and a batch that begins after it sees the new registration and stops, instead of
writing one model's vectors into the other model's column.
"""

from __future__ import annotations

from typing import Any

import psycopg

from semdb.errors import SyncError
from semdb.sync.target import SyncTarget


class TargetChanged(SyncError):
    """The column's registration changed (switched, cancelled or dropped) under a writer."""


def hold_registration(connection: psycopg.Connection[Any], target: SyncTarget) -> None:
    """Lock ``target``'s registration for this transaction; raise if it is not as loaded.

    A target that was never registered (``id`` None: declared in Python only) has nothing
    to hold.
    """
    if target.id is None:
        return
    row = connection.execute(
        "SELECT model, model_version, dimension, column_name, model_column, hash_column, "
        "shadow_of FROM semdb.vector_columns WHERE id = %s FOR KEY SHARE",
        (target.id,),
    ).fetchone()
    if row is None:
        raise TargetChanged(
            f"{target.name} is no longer registered (an activation switched or cancelled it, "
            "or a migration dropped it)",
            fix="nothing to do: the workers read the registry again",
        )
    loaded = (
        target.model,
        target.model_version,
        target.dimension,
        target.column_name,
        target.model_column,
        target.hash_column,
        target.shadow_of,
    )
    if tuple(row) != loaded:
        raise TargetChanged(
            f"{target.name} now holds vectors of {row[0]}@{row[1] or '*'} ({row[2]} "
            f"dimensions); it was loaded as {target.model_tag} ({target.dimension})",
            fix="nothing to do: the workers read the registry again",
        )
