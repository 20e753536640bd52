"""Monitoring: worker activity, the opt-in query log, relevance feedback, drift snapshots.

- ``semdb.sync_activity``: rows embedded per column, worker and minute (``semdb monitor``'s
  rows/s), pruned after a day by the workers.
- ``semdb.query_log`` (+ sequence ``semdb.query_log_ids``): a bounded ring of sampled
  searches, written only when an application enables it (``semdb.monitor.query_log``).
- ``semdb.query_feedback``: clicked or accepted rows of logged searches (nDCG in production).
- ``semdb.drift_snapshots``: reference samples for drift (``semdb monitor --snapshot``).

Revision ID: 0006_monitor
Revises: 0004_hardening
Create Date: 2026-11-24

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_monitor"
down_revision: str | Sequence[str] | None = "0004_hardening"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_activity",
        sa.Column("column_id", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("embedded", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("batches", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("batch_seconds", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("column_id", "worker", "minute", name=op.f("pk_sync_activity")),
        schema="semdb",
    )
    op.execute("CREATE SEQUENCE semdb.query_log_ids")
    op.create_table(
        "query_log",
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column(
            "logged_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("column_id", sa.Integer(), nullable=True),
        sa.Column("column_name", sa.Text(), nullable=False),
        sa.Column("query", sa.LargeBinary(), nullable=True),
        sa.Column("filter", sa.Text(), nullable=True),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("results", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("slot", name=op.f("pk_query_log")),
        schema="semdb",
    )
    op.create_index("ix_query_log_seq", "query_log", ["seq"], unique=True, schema="semdb")
    op.create_index("ix_query_log_id", "query_log", ["id"], unique=True, schema="semdb")
    op.create_index(
        "ix_query_log_column_id_logged_at",
        "query_log",
        ["column_id", "logged_at"],
        unique=False,
        schema="semdb",
    )
    op.create_table(
        "query_feedback",
        sa.Column("query_id", sa.BigInteger(), nullable=False),
        sa.Column("key", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("relevance", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "given_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("query_id", "key", name=op.f("pk_query_feedback")),
        schema="semdb",
    )
    op.create_table(
        "drift_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("column_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column(
            "taken_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("snapshot_xmax", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("reference", sa.LargeBinary(), nullable=False),
        sa.Column("row_distances", sa.LargeBinary(), nullable=False),
        sa.Column("query_distances", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_snapshots")),
        schema="semdb",
    )
    op.create_index(
        "ix_drift_snapshots_column_id_taken_at",
        "drift_snapshots",
        ["column_id", "taken_at"],
        unique=False,
        schema="semdb",
    )


def downgrade() -> None:
    op.drop_index(
        "ix_drift_snapshots_column_id_taken_at", table_name="drift_snapshots", schema="semdb"
    )
    op.drop_table("drift_snapshots", schema="semdb")
    op.drop_table("query_feedback", schema="semdb")
    op.drop_index("ix_query_log_column_id_logged_at", table_name="query_log", schema="semdb")
    op.drop_index("ix_query_log_id", table_name="query_log", schema="semdb")
    op.drop_index("ix_query_log_seq", table_name="query_log", schema="semdb")
    op.drop_table("query_log", schema="semdb")
    op.execute("DROP SEQUENCE semdb.query_log_ids")
    op.drop_table("sync_activity", schema="semdb")
