"""Chunked embedding columns: a column's chunking, readable by workers on any host.

``semdb.vector_columns.chunking`` (jsonb, NULL for an unchunked column): the
``semdb.Chunks`` a column was declared with (``max_tokens``, ``overlap``, ``max_chunks``),
written by ``op.create_embedding_sync``. The chunk tables themselves are the application's
(declared next to their parent table, created by its own migrations).

Revision ID: 0007_chunks
Revises: 0006_monitor
Create Date: 2026-11-25

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_chunks"
down_revision: str | Sequence[str] | None = "0005_bm25"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "vector_columns",
        sa.Column("chunking", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        schema="semdb",
    )


def downgrade() -> None:
    op.drop_column("vector_columns", "chunking", schema="semdb")
