"""Chunked search: ``semdb.serial_plan()``, a condition that keeps parallel workers out.

The exact path of a chunked search computes the distance of every chunk that passes the
filter (a few thousand when the filter is selective) and keeps a top-N of them. PostgreSQL
plans that with parallel workers once the parent table is big enough, and their start (and
the tuple queue) costs more than the search: 26 ms against 5 ms on 1,000 parents of 4
chunks (bench/chunks_latency.py). ``SET LOCAL max_parallel_workers_per_gather = 0`` would
cost two more round trips per search; instead the statement carries ``semdb.serial_plan()``:
a function declared ``PARALLEL UNSAFE``, which makes the planner plan the whole statement
without workers, and ``IMMUTABLE`` (``SELECT true``), which the planner folds away before the
statement runs.

Revision ID: 0008_chunks_search
Revises: 0007_chunks
Create Date: 2026-12-02

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008_chunks_search"
down_revision: str | Sequence[str] | None = "0007_chunks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION semdb.serial_plan() RETURNS boolean "
        "LANGUAGE sql IMMUTABLE PARALLEL UNSAFE AS 'SELECT true'"
    )
    op.execute(
        "COMMENT ON FUNCTION semdb.serial_plan() IS 'true; a statement that calls it is "
        "planned without parallel workers (semdb chunked search, exact path)'"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS semdb.serial_plan()")
