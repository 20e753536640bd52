"""BM25 postings: keyword search reads term counts from an index, not from each row's text.

- ``semdb.bm25_stats.postings``: the name of the column's postings table in schema semdb
  (``term``, the table's key as ``key_1, ...``, ``tf``, ``length``; primary key
  ``(term, key_1, ...)`` including ``tf`` and ``length``), kept by the statistics' own
  statement-level triggers (semdb.sync.keyword_stats).
- Every keyword column (a row in ``semdb.bm25_stats``) gets its postings built on upgrade
  (one pass over its table, the table locked against writers meanwhile) and its triggers
  replaced by ones that keep the postings too.
- ``semdb.keyword_search`` and ``semdb.hybrid_search`` (SQL) score from the postings.

Downgrade: the postings are dropped and 0005's triggers and keyword function come back, with
0008's (chunk-aware) hybrid function.

Revision ID: 0009_bm25_postings
Revises: 0008_chunks_search
Create Date: 2026-12-02

"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0009_bm25_postings"
down_revision: str | Sequence[str] | None = "0008_chunks_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _revision(name: str) -> ModuleType:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"semdb_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keyword_targets() -> list[object]:
    """The registered columns that have BM25 statistics (none when writing --sql)."""
    if op.get_context().as_sql:
        return []
    from semdb.sync.target import SyncTarget

    rows = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT v.* FROM semdb.vector_columns AS v "
                "JOIN semdb.bm25_stats AS s ON s.column_id = v.id ORDER BY v.id"
            )
        )
        .mappings()
        .all()
    )
    return [SyncTarget.from_row(row) for row in rows]


def _run(statements: list[object]) -> None:
    for statement in statements:
        text = statement.as_string(None)  # type: ignore[attr-defined]
        op.execute(sa.text(text.replace(":", "\\:")))


def upgrade() -> None:
    from semdb.sync.keyword_stats import install_statements

    op.add_column("bm25_stats", sa.Column("postings", sa.Text(), nullable=True), schema="semdb")
    for target in _keyword_targets():
        _run(install_statements(target))  # type: ignore[arg-type]
    op.execute(KEYWORD_SEARCH)
    op.execute(HYBRID_SEARCH)


def downgrade() -> None:
    from semdb.sync.keyword_stats import install_statements, postings_sql

    op.execute(_revision("0005_bm25").KEYWORD_SEARCH)
    op.execute(_revision("0008_chunks_search").chunk_aware_hybrid_search())
    for target in _keyword_targets():
        _run(install_statements(target, postings=False))  # type: ignore[arg-type]
        _run([sa_drop(postings_sql(target))])  # type: ignore[arg-type]
    op.drop_column("bm25_stats", "postings", schema="semdb")


def sa_drop(table: object) -> object:
    from psycopg import sql

    return sql.SQL("DROP TABLE IF EXISTS {}").format(table)


# 0005's functions with the BM25 ranking read from the postings: the k best keys by the
# sum over the query's terms' postings (an index-only scan per term), then their rows.
_BM25_0005 = r"""
    bm25 := format(
        $q$
        SELECT s.tid, row_number() OVER (ORDER BY s.score DESC, %5$s) AS rank, s.score
        FROM (SELECT c.tid, %3$s,
                     sum(q.idf * u.tf * %6$L::float8
                         / (u.tf + (%7$L::float8 + %8$L::float8 * length(c.tv)::float8)))
                     AS score
              FROM (SELECT ctid AS tid, %3$s, %1$s AS tv FROM %2$s
                    WHERE %1$s @@ $1 OFFSET 0) AS c
              CROSS JOIN LATERAL (
                  SELECT lexeme, array_length(positions, 1)::float8 AS tf
                  FROM unnest(ts_delete(c.tv, tsvector_to_array(ts_delete(c.tv, $2))))) AS u
              JOIN unnest($2, $3) AS q(term, idf) ON u.lexeme = q.term
              GROUP BY c.tid, %4$s
              ORDER BY score DESC, %4$s
              LIMIT $4) AS s
        $q$,
        document, relation, keys, c_keys, s_keys, k1 + 1, k1 * (1 - b),
        k1 * b / coalesce(terms.average_length, 1));
"""

_BM25_POSTINGS = r"""
    SELECT st.postings INTO postings FROM semdb.bm25_stats AS st WHERE st.column_id = spec.id;
    IF postings IS NULL THEN
        RAISE EXCEPTION 'semdb: %.% has BM25 statistics but no postings', relation, vector_column
            USING HINT = 'run semdb db upgrade, or semdb.install_keyword_stats once';
    END IF;
    SELECT string_agg(format('p.%I AS %I', 'key_' || ordinality, key), ', ' ORDER BY ordinality),
           string_agg(format('p.%I', 'key_' || ordinality), ', ' ORDER BY ordinality),
           string_agg(format('b.%I', key), ', ' ORDER BY ordinality),
           string_agg(format('c.%I = b.%I', key, key), ' AND ' ORDER BY ordinality)
    INTO postings_keys, p_group, b_keys, b_match
    FROM unnest(spec.key_columns) WITH ORDINALITY AS key;
    -- The BM25 ranking ($2 terms, $3 idfs, $4 how many), as
    -- semdb.retrieval.keyword.bm25_ranking writes it: postings summed per row, the best
    -- $4 keys, then their rows.
    bm25 := format(
        $q$
        SELECT c.ctid AS tid, row_number() OVER (ORDER BY b.score DESC, %1$s) AS rank, b.score
        FROM (SELECT %2$s,
                     sum(q.idf * p.tf::float8 * %6$L::float8
                         / (p.tf::float8 + (%7$L::float8 + %8$L::float8 * p.length::float8)))
                     AS score
              FROM unnest($2, $3) AS q(term, idf) JOIN semdb.%4$I AS p ON p.term = q.term
              GROUP BY %3$s
              ORDER BY score DESC, %3$s
              LIMIT $4) AS b
        JOIN %5$s AS c ON %9$s
        $q$,
        b_keys, postings_keys, p_group, postings, relation, k1 + 1, k1 * (1 - b),
        k1 * b / coalesce(terms.average_length, 1), b_match);
"""

_DECLARE_0005 = "    fused text;\n"
_DECLARE_0009 = (
    "    fused text;\n    postings text;\n    postings_keys text;\n    p_group text;\n"
    "    b_keys text;\n    b_match text;\n"
)


def _with_postings(function: str) -> str:
    for old, new in ((_BM25_0005, _BM25_POSTINGS), (_DECLARE_0005, _DECLARE_0009)):
        assert function.count(old) == 1, "0005's (or 0008's) function text changed"
        function = function.replace(old, new)
    return function


KEYWORD_SEARCH = _with_postings(_revision("0005_bm25").KEYWORD_SEARCH)
# The hybrid function 0008 made chunk-aware, its keyword leg read from the postings.
HYBRID_SEARCH = _with_postings(_revision("0008_chunks_search").chunk_aware_hybrid_search())
