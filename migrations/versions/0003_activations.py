"""Activations: switching a vector column to another model through a shadow column.

- ``semdb.vector_columns.model_version``: the model version a column's vectors are pinned
  to (set when an activation switches the column; NULL means any version).
- ``semdb.vector_columns.shadow_of``: marks the shadow column of an activation in progress.
- ``semdb.activations``: one row per activation (``filling``, ``switched``, ``cancelled``).

Revision ID: 0003_activations
Revises: 0002_sync_and_search
Create Date: 2026-11-23

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_activations"
down_revision: str | Sequence[str] | None = "0002_sync_and_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("column_id", sa.Integer(), nullable=False),
        sa.Column("shadow_column_id", sa.Integer(), nullable=True),
        sa.Column("from_model", sa.Text(), nullable=False),
        sa.Column("to_model", sa.Text(), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'filling'"), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activations")),
        schema="semdb",
    )
    op.create_index(
        "ix_activations_one_filling_per_column",
        "activations",
        ["column_id"],
        unique=True,
        schema="semdb",
        postgresql_where=sa.text("status = 'filling'"),
    )
    op.add_column(
        "vector_columns", sa.Column("model_version", sa.Text(), nullable=True), schema="semdb"
    )
    op.add_column(
        "vector_columns", sa.Column("shadow_of", sa.Integer(), nullable=True), schema="semdb"
    )


def downgrade() -> None:
    # Shadow columns of unfinished activations lose their registration; cancel activations
    # (semdb model cancel) before downgrading to keep your tables tidy.
    op.execute("DELETE FROM semdb.vector_columns WHERE shadow_of IS NOT NULL")
    op.drop_column("vector_columns", "shadow_of", schema="semdb")
    op.drop_column("vector_columns", "model_version", schema="semdb")
    op.drop_index("ix_activations_one_filling_per_column", table_name="activations", schema="semdb")
    op.drop_table("activations", schema="semdb")
