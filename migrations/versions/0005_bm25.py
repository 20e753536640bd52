"""BM25 keyword search and tuned hybrid fusion.

- ``semdb.bm25_stats`` / ``semdb.bm25_terms``: per vector column, the corpus statistics of its
  text (documents, total length, documents per term), kept exact by triggers that
  ``op.create_embedding_sync(..., keyword=True)`` installs (semdb.sync.keyword_stats).
- ``semdb.hybrid_fusion``: the fusion hybrid search uses for a column (``semdb tune-hybrid``).
- SQL functions for psql: ``semdb.keyword_search(NULL::docs, 'embedding', 'text', k)`` and
  ``semdb.hybrid_search(...)`` with the BM25 leg and the column's fusion (replaces 0004's).

Revision ID: 0005_bm25
Revises: 0006_monitor (the lead re-chains it at merge)
Create Date: 2026-12-02

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_bm25"
down_revision: str | Sequence[str] | None = "0006_monitor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bm25_stats",
        sa.Column("column_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("documents", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("total_length", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("column_id", name=op.f("pk_bm25_stats")),
        schema="semdb",
    )
    op.create_table(
        "bm25_terms",
        sa.Column("column_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("term", sa.Text(), nullable=False),
        sa.Column("documents", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("column_id", "term", name=op.f("pk_bm25_terms")),
        schema="semdb",
    )
    op.create_table(
        "hybrid_fusion",
        sa.Column("column_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("semantic_weight", sa.Float(), nullable=False),
        sa.Column("keyword_weight", sa.Float(), nullable=False),
        sa.Column("rrf_k", sa.Integer(), nullable=False),
        sa.Column(
            "metrics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "tuned_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("column_id", name=op.f("pk_hybrid_fusion")),
        schema="semdb",
    )
    op.execute(
        "DROP FUNCTION IF EXISTS semdb.hybrid_search("
        "anyelement, text, vector, text, integer, integer, integer)"
    )
    op.execute(BM25_QUERY)
    op.execute(KEYWORD_SEARCH)
    op.execute(HYBRID_SEARCH)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS semdb.hybrid_search(anyelement, text, vector, text, integer, "
        "integer, text, double precision, double precision, integer, double precision, "
        "double precision)"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS semdb.keyword_search(anyelement, text, text, integer, "
        "double precision, double precision)"
    )
    op.execute("DROP FUNCTION IF EXISTS semdb.bm25_query(integer, text)")
    op.execute(_previous_hybrid_search())  # 0004's hybrid_search (ts_rank_cd and RRF, hardened)
    op.drop_table("hybrid_fusion", schema="semdb")
    op.drop_table("bm25_terms", schema="semdb")
    op.drop_table("bm25_stats", schema="semdb")


def _previous_hybrid_search() -> str:
    """The hybrid_search revision 0004 defines (loaded from its file): the one this
    revision replaced."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("0004_hardening.py")
    spec = importlib.util.spec_from_file_location("semdb_migration_0004", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.HYBRID_SEARCH).replace("@SEARCH_PATH@", module._search_path())


# The query's terms that some row holds, their idf, the tsquery that finds the rows holding
# any of them, and the corpus' average length: what keyword and hybrid search share. The
# text goes through to_tsvector only (never tsquery syntax); the tsquery is built from the
# lexemes, each quoted as tsquery input quotes it.
BM25_QUERY = r"""
CREATE OR REPLACE FUNCTION semdb.bm25_query(
    column_id integer, query_text text,
    OUT config text, OUT terms text[], OUT idfs double precision[], OUT query tsquery,
    OUT average_length double precision
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    stats semdb.bm25_stats;
BEGIN
    SELECT s.* INTO stats FROM semdb.bm25_stats AS s WHERE s.column_id = bm25_query.column_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'semdb: this vector column has no BM25 statistics'
            USING HINT = 'add keyword=True to its op.create_embedding_sync in a migration';
    END IF;
    config := stats.config;
    average_length := CASE WHEN stats.documents > 0
                           THEN stats.total_length::float8 / stats.documents END;
    SELECT array_agg(t.term ORDER BY t.term),
           array_agg(ln(1.0::float8 + (stats.documents - t.documents + 0.5::float8)
                                      / (t.documents + 0.5::float8)) ORDER BY t.term),
           string_agg('''' || replace(replace(t.term, '\', '\\'), '''', '''''') || '''',
                      ' | ' ORDER BY t.term)::tsquery
    INTO terms, idfs, query
    FROM unnest(tsvector_to_array(to_tsvector(stats.config::regconfig, query_text))) AS q(term)
    JOIN semdb.bm25_terms AS t
      ON t.column_id = bm25_query.column_id AND t.term = q.term AND t.documents > 0;
END
$fn$
"""

# Finds the column named by (row type, vector column name) in semdb.vector_columns, and
# writes the pieces of SQL the searches need: every identifier through format('%I'),
# every literal through %L, the query's values as bound parameters.
_DECLARE = r"""
DECLARE
    relation regclass;
    spec semdb.vector_columns;
    terms record;
    document text;
    keys text;
    c_keys text;
    s_keys text;
    t_keys text;
    bm25 text;
    stored semdb.hybrid_fusion;  -- (the rest: hybrid_search's)
    distance_operator text;
    indexed text;
    pool integer;
    fused text;
BEGIN
    SELECT t.typrelid::regclass INTO relation FROM pg_type t WHERE t.oid = pg_typeof(row_type);
    IF relation IS NULL OR relation::oid = 0 THEN
        RAISE EXCEPTION 'semdb: the first argument must be a row of a table'
            USING HINT = 'pass NULL::your_table';
    END IF;
    SELECT v.* INTO spec
    FROM semdb.vector_columns v
    JOIN pg_class c ON c.relname = v.table_name
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = v.table_schema
    WHERE c.oid = relation AND v.column_name = vector_column;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'semdb: %.% is not a registered vector column', relation, vector_column
            USING HINT = 'register it in a migration with op.create_embedding_sync';
    END IF;
    IF k IS NULL OR k < 1 OR k1 IS NULL OR k1 < 0 OR b IS NULL OR b < 0 OR b > 1 THEN
        RAISE EXCEPTION 'semdb: k must be positive, k1 >= 0 and b from 0 to 1';
    END IF;
    terms := semdb.bm25_query(spec.id, query_text);
    SELECT format('to_tsvector(%L::regconfig, %s)', terms.config,
                  string_agg(format('coalesce(%I, %L)', source, ''), ' || '' '' || '
                             ORDER BY ordinality))
    INTO document
    FROM unnest(spec.sources) WITH ORDINALITY AS source;
    SELECT string_agg(format('%I', key), ', ' ORDER BY ordinality),
           string_agg(format('c.%I', key), ', ' ORDER BY ordinality),
           string_agg(format('s.%I', key), ', ' ORDER BY ordinality),
           string_agg(format('t.%I', key), ', ' ORDER BY ordinality)
    INTO keys, c_keys, s_keys, t_keys
    FROM unnest(spec.key_columns) WITH ORDINALITY AS key;
    -- The BM25 ranking of the rows holding any term ($1 tsquery, $2 terms, $3 idfs,
    -- $4 how many), as semdb.retrieval.keyword.bm25_ranking writes it.
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

KEYWORD_SEARCH = "".join(
    (
        r"""
CREATE OR REPLACE FUNCTION semdb.keyword_search(
    row_type anyelement,
    vector_column text,
    query_text text,
    k integer DEFAULT 10,
    k1 double precision DEFAULT 0.9,
    b double precision DEFAULT 0.4
) RETURNS TABLE (item anyelement, score double precision)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
""",
        _DECLARE,
        r"""
    IF terms.terms IS NULL THEN
        RETURN;  -- no term that any row holds (empty text, stopwords, punctuation)
    END IF;
    RETURN QUERY EXECUTE format(
        $q$
        SELECT t, ranked.score FROM (%1$s) AS ranked JOIN %2$s AS t ON t.ctid = ranked.tid
        ORDER BY ranked.score DESC, %3$s
        $q$, bm25, relation, t_keys)
    USING terms.query, terms.terms, terms.idfs, k;
END
$fn$
""",
    )
)

HYBRID_SEARCH = "".join(
    (
        r"""
CREATE OR REPLACE FUNCTION semdb.hybrid_search(
    row_type anyelement,
    vector_column text,
    query_vector vector,
    query_text text,
    k integer DEFAULT 10,
    candidates integer DEFAULT 100,
    fusion text DEFAULT NULL,
    semantic_weight double precision DEFAULT NULL,
    keyword_weight double precision DEFAULT NULL,
    rrf_k integer DEFAULT NULL,
    k1 double precision DEFAULT 0.9,
    b double precision DEFAULT 0.4
) RETURNS TABLE (item anyelement, score double precision, semantic_rank bigint,
                 keyword_rank bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
SET hnsw.ef_search = 40
AS $fn$
""",
        _DECLARE,
        r"""
    IF candidates IS NULL OR candidates < 1 OR rrf_k < 0 OR semantic_weight < 0
       OR keyword_weight < 0 THEN
        RAISE EXCEPTION 'semdb.hybrid_search: candidates must be positive, rrf_k and weights >= 0';
    END IF;
    pool := greatest(candidates, k);
    -- The fusion: the call's, else the column's stored one, else RRF 1:1, k 60.
    SELECT f.* INTO stored FROM semdb.hybrid_fusion f WHERE f.column_id = spec.id;
    IF fusion IS NULL THEN
        fusion := coalesce(stored.method, 'rrf');
    ELSIF fusion IS DISTINCT FROM stored.method THEN
        stored := NULL;  -- another method: its own default weights
    END IF;
    IF fusion NOT IN ('rrf', 'convex') THEN
        RAISE EXCEPTION 'semdb.hybrid_search: fusion must be rrf or convex, got %', fusion;
    END IF;
    semantic_weight := coalesce(semantic_weight, stored.semantic_weight, 1);
    keyword_weight := coalesce(keyword_weight, stored.keyword_weight, 1);
    rrf_k := coalesce(rrf_k, stored.rrf_k, 60);
    IF fusion = 'rrf' THEN
        fused := format(
            '%L::float8 * coalesce(1.0::float8 / (%L::float8 + s.rank), 0.0::float8)'
            ' + %L::float8 * coalesce(1.0::float8 / (%L::float8 + f.rank), 0.0::float8)',
            semantic_weight, rrf_k, keyword_weight, rrf_k);
    ELSE
        fused := format('%L::float8 * coalesce(s.norm, 0.0::float8)'
                        ' + %L::float8 * coalesce(f.norm, 0.0::float8)',
                        semantic_weight, keyword_weight);
    END IF;
    IF spec.storage IS NULL OR spec.storage NOT IN ('vector', 'halfvec')
       OR spec.index_storage IS NULL OR spec.index_storage NOT IN ('vector', 'halfvec') THEN
        RAISE EXCEPTION 'semdb.hybrid_search: %.% has storage %, index storage %: unknown',
            relation, vector_column, quote_literal(spec.storage), quote_literal(spec.index_storage)
            USING HINT = 'semdb.vector_columns was changed by hand: register the column again';
    END IF;
    IF spec.dimension IS NULL OR spec.dimension < 1 THEN
        RAISE EXCEPTION 'semdb.hybrid_search: %.% has no valid dimension', relation, vector_column;
    END IF;
    distance_operator := CASE spec.distance
        WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->'
        WHEN 'inner_product' THEN '<#>' WHEN 'l1' THEN '<+>' END;
    IF distance_operator IS NULL THEN
        RAISE EXCEPTION 'semdb.hybrid_search: %.% has an unknown distance %',
            relation, vector_column, quote_literal(spec.distance)
            USING HINT = 'semdb.vector_columns was changed by hand: register the column again';
    END IF;
    IF spec.index_storage = spec.storage THEN
        indexed := format('%I', spec.column_name);
    ELSE
        indexed := format('(%I::%s(%s))', spec.column_name,
                          CASE spec.index_storage WHEN 'halfvec' THEN 'halfvec' ELSE 'vector' END,
                          spec.dimension::integer);
    END IF;
    IF terms.terms IS NULL OR keyword_weight = 0 THEN  -- no term, or no weight: no leg
        bm25 := 'SELECT NULL::tid AS tid, NULL::bigint AS rank, NULL::float8 AS score WHERE false';
    END IF;
    PERFORM set_config('hnsw.ef_search', least(greatest(pool, 40), 1000)::text, true);
    RETURN QUERY EXECUTE format(
        $q$
        WITH semantic AS (
            SELECT s.tid, row_number() OVER (ORDER BY s.d, %7$s) AS rank,
                   coalesce(((-s.d) - min(-s.d) OVER ())
                            / nullif(max(-s.d) OVER () - min(-s.d) OVER (), 0.0::float8),
                            1.0::float8) AS norm
            FROM (SELECT ctid AS tid, %8$s, %1$s %2$s $5::%3$s(%4$s) AS d FROM %5$s AS c
                  WHERE %1$s IS NOT NULL
                  ORDER BY %1$s %2$s $5::%3$s(%4$s) LIMIT $4) AS s
        ), keyword AS (
            SELECT r.tid, r.rank,
                   coalesce((r.score - min(r.score) OVER ())
                            / nullif(max(r.score) OVER () - min(r.score) OVER (), 0.0::float8),
                            1.0::float8) AS norm
            FROM (%6$s) AS r
        ), fused AS (
            SELECT coalesce(s.tid, f.tid) AS tid, %9$s AS score,
                   s.rank AS semantic_rank, f.rank AS keyword_rank
            FROM semantic s FULL JOIN keyword f ON s.tid = f.tid
        )
        SELECT t, fused.score, fused.semantic_rank, fused.keyword_rank
        FROM fused JOIN %5$s AS t ON t.ctid = fused.tid
        ORDER BY fused.score DESC, fused.semantic_rank NULLS LAST, %10$s
        LIMIT $6
        $q$,
        indexed, distance_operator,
        CASE spec.index_storage WHEN 'halfvec' THEN 'halfvec' ELSE 'vector' END,
        spec.dimension::integer, relation, bm25,
        s_keys, keys, fused, t_keys)
    USING terms.query, terms.terms, terms.idfs, pool, query_vector, k;
END
$fn$
""",
    )
)
