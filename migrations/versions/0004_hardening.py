"""Hardening: the SQL functions quote or check every registry value they put into SQL, and
run with a fixed ``search_path``.

``semdb.hybrid_search`` (migration 0002) put ``storage`` and ``index_storage`` of
``semdb.vector_columns`` into its dynamic statement as they were: a crafted registry row ran
any SQL as whoever called the function. Now the storage types and the distance are checked
against fixed lists (and the types quoted with ``%I`` besides), every other value goes
through ``%I``/``%L`` or is an integer or a ``regclass``. Both functions set
``search_path = pg_catalog, <pgvector's schema>, public, pg_temp``: the operators and
functions they name are pg_catalog's and pgvector's, whatever schemas the caller put first
(``pg_temp`` last, so a temporary object never shadows them).

Registered columns bound to no model version whose stored vectors carry one version of their
model are bound to it (``model_version``), as semdb now binds columns at their first
embedding.

Revision ID: 0004_hardening
Revises: 0003_activations
Create Date: 2026-12-02

"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from psycopg import sql

revision: str = "0004_hardening"
down_revision: str | Sequence[str] | None = "0003_activations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _search_path() -> str:
    """``pg_catalog, <the vector extension's schema>, public, pg_temp``, quoted."""
    schema = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector'"
        )
        .scalar()
    )
    schemas = ["pg_catalog", *([schema] if schema and schema != "public" else []), "public"]
    return ", ".join([*(sql.Identifier(s).as_string(None) for s in schemas), "pg_temp"])


def upgrade() -> None:
    path = _search_path()
    op.execute(RRF_SCORE.replace("@SEARCH_PATH@", path))
    op.execute(HYBRID_SEARCH.replace("@SEARCH_PATH@", path))
    _bind_model_versions()


def _bind_model_versions() -> None:
    """One column, one model version: a registered column bound to no version whose stored
    vectors all carry one version of its model is bound to it (semdb binds new columns at
    their first embedding). A column already holding several versions is left unbound, and
    named."""
    bind = op.get_bind()
    rows = bind.exec_driver_sql(
        "SELECT id, table_schema, table_name, column_name, model, model_column "
        "FROM semdb.vector_columns WHERE model_version IS NULL AND shadow_of IS NULL"
    ).all()
    for column_id, schema, table_name, column_name, model, model_column in rows:
        qualified = ".".join(sql.Identifier(n).as_string(None) for n in (schema, table_name))
        found = bind.execute(
            sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": qualified}
        ).scalar()
        if not found:
            continue
        table = sa.table(table_name, sa.column(model_column, sa.Text), schema=schema)
        tag = table.c[model_column]
        tags = bind.execute(sa.select(tag).where(tag.isnot(None)).distinct().limit(3)).scalars()
        versions = {str(t).partition("@")[2] for t in tags if str(t).startswith(f"{model}@")}
        if len(versions) == 1:
            bind.execute(
                sa.text("UPDATE semdb.vector_columns SET model_version = :v WHERE id = :id"),
                {"v": versions.pop(), "id": column_id},
            )
        elif len(versions) > 1:
            logging.getLogger("alembic.runtime.migration").warning(
                "semdb: %s.%s.%s holds vectors of several versions of %s (%s): it stays unbound "
                "until semdb model activate moves it to one",
                schema,
                table_name,
                column_name,
                model,
                ", ".join(sorted(versions)),
            )


def downgrade() -> None:
    # The functions keep their hardened bodies: same signatures and results as 0002's, which
    # 0002's own downgrade drops.
    pass


RRF_SCORE = """
CREATE OR REPLACE FUNCTION semdb.rrf_score(
    semantic_rank bigint, fulltext_rank bigint, rrf_k integer DEFAULT 60
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = @SEARCH_PATH@
AS $$
    SELECT coalesce(1.0 / (rrf_k + semantic_rank), 0.0)
         + coalesce(1.0 / (rrf_k + fulltext_rank), 0.0)
$$
"""

# As in 0002, with every registry value checked or quoted: storage types and the distance
# against fixed lists, names through %I, the text search configuration through %L.
HYBRID_SEARCH = r"""
CREATE OR REPLACE FUNCTION semdb.hybrid_search(
    row_type anyelement,
    vector_column text,
    query_vector vector,
    query_text text,
    k integer DEFAULT 10,
    candidates integer DEFAULT 40,
    rrf_k integer DEFAULT 60
) RETURNS TABLE (item anyelement, score double precision, semantic_rank bigint,
                 fulltext_rank bigint)
LANGUAGE plpgsql
SET hnsw.ef_search = 40
SET search_path = @SEARCH_PATH@
AS $fn$
DECLARE
    relation regclass;
    spec semdb.vector_columns;
    distance_operator text;
    indexed text;
    document text;
    config text;
BEGIN
    SELECT t.typrelid::regclass INTO relation FROM pg_type t WHERE t.oid = pg_typeof(row_type);
    IF relation IS NULL OR relation::oid = 0 THEN
        RAISE EXCEPTION 'semdb.hybrid_search: the first argument must be a row of a table'
            USING HINT = 'pass NULL::your_table';
    END IF;
    SELECT v.* INTO spec
    FROM semdb.vector_columns v
    JOIN pg_class c ON c.relname = v.table_name
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = v.table_schema
    WHERE c.oid = relation AND v.column_name = vector_column;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'semdb.hybrid_search: %.% is not a registered vector column',
            relation, vector_column
            USING HINT = 'register it in a migration with op.create_embedding_sync';
    END IF;
    IF k < 1 OR candidates < 1 OR rrf_k < 0 THEN
        RAISE EXCEPTION 'semdb.hybrid_search: k and candidates must be positive, rrf_k >= 0';
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
        indexed := format('(%I::%I(%s))', spec.column_name, spec.index_storage, spec.dimension);
    END IF;
    config := coalesce(spec.fulltext, 'english');
    SELECT format('to_tsvector(%L::regconfig, %s)', config,
                  string_agg(format('coalesce(%I, %L)', source, ''), ' || '' '' || '))
    INTO document
    FROM unnest(spec.sources) AS source;
    PERFORM set_config('hnsw.ef_search', least(greatest(candidates, 40), 1000)::text, true);
    RETURN QUERY EXECUTE format(
        $q$
        WITH semantic AS (
            SELECT s.tid, row_number() OVER (ORDER BY s.d) AS rank
            FROM (SELECT ctid AS tid, %1$s %2$s $1::%3$I(%4$s) AS d FROM %5$s
                  WHERE %1$s IS NOT NULL
                  ORDER BY %1$s %2$s $1::%3$I(%4$s) LIMIT $3) AS s
        ), fulltext AS (
            SELECT f.tid, row_number() OVER (ORDER BY f.r DESC) AS rank
            FROM (SELECT ctid AS tid, ts_rank_cd(%6$s, q) AS r
                  FROM %5$s, websearch_to_tsquery(%7$L::regconfig, $2) AS q
                  WHERE %6$s @@ q
                  ORDER BY r DESC LIMIT $3) AS f
        ), fused AS (
            SELECT coalesce(s.tid, f.tid) AS tid,
                   semdb.rrf_score(s.rank, f.rank, $5) AS score,
                   s.rank AS semantic_rank, f.rank AS fulltext_rank
            FROM semantic s FULL JOIN fulltext f ON s.tid = f.tid
        )
        SELECT t, fused.score, fused.semantic_rank, fused.fulltext_rank
        FROM fused JOIN %5$s AS t ON t.ctid = fused.tid
        ORDER BY fused.score DESC, fused.semantic_rank NULLS LAST
        LIMIT $4
        $q$,
        indexed, distance_operator, spec.index_storage, spec.dimension, relation, document,
        config)
    USING query_vector, query_text, candidates, k, rrf_k;
END
$fn$
"""
