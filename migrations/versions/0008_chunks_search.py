"""Chunked search: ``semdb.serial_plan()``, a condition that keeps parallel workers out;
``semdb.hybrid_search`` over a chunked column.

The exact path of a chunked search computes the distance of every chunk that passes the
filter (a few thousand when the filter is selective) and keeps a top-N of them. PostgreSQL
plans that with parallel workers once the parent table is big enough, and their start (and
the tuple queue) costs more than the search: 26 ms against 5 ms on 1,000 parents of 4
chunks (bench/chunks_latency.py). ``SET LOCAL max_parallel_workers_per_gather = 0`` would
cost two more round trips per search; instead the statement carries ``semdb.serial_plan()``:
a function declared ``PARALLEL UNSAFE``, which makes the planner plan the whole statement
without workers, and ``IMMUTABLE`` (``SELECT true``), which the planner folds away before the
statement runs.

``semdb.hybrid_search`` (SQL) over a chunked column ranks parent rows as the Python
``semdb.hybrid_search`` does: the semantic leg takes the nearest ``4 x candidates`` chunks
(at least 40) from the chunk table's index, each parent at its best chunk, the nearest
``candidates`` parents; the keyword leg scores the parent's text. Each parent comes back
once. Unchunked columns are ranked as before (revision 0005's statement).

Revision ID: 0008_chunks_search
Revises: 0007_chunks
Create Date: 2026-12-02

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic import op

revision: str = "0008_chunks_search"
down_revision: str | Sequence[str] | None = "0007_chunks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(chunk_aware_hybrid_search())
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
    op.execute(_revision_0005().HYBRID_SEARCH)


def _revision_0005() -> Any:
    """Revision 0005 (loaded from its file): its hybrid_search is the one this revision
    extends, and restores on downgrade."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("0005_bm25.py")
    spec = importlib.util.spec_from_file_location("semdb_migration_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: 0005's semantic leg over the column's own vectors, replaced by ``%11$s``: the statement
#: below chooses it (unchunked) or the chunk table's (chunked).
_SEMANTIC_0005 = (
    "            FROM (SELECT ctid AS tid, %8$s, %1$s %2$s $5::%3$s(%4$s) AS d FROM %5$s AS c\n"
    "                  WHERE %1$s IS NOT NULL\n"
    "                  ORDER BY %1$s %2$s $5::%3$s(%4$s) LIMIT $4) AS s"
)

_CHOOSE_SEMANTIC = r"""
    IF spec.chunking IS NULL THEN
        semantic_source := format(
            'SELECT ctid AS tid, %2$s, %1$s %3$s $5::%4$s(%5$s) AS d FROM %6$s AS c'
            ' WHERE %1$s IS NOT NULL ORDER BY %1$s %3$s $5::%4$s(%5$s) LIMIT $4',
            indexed, keys, distance_operator,
            CASE spec.index_storage WHEN 'halfvec' THEN 'halfvec' ELSE 'vector' END,
            spec.dimension::integer, relation);
    ELSE
        -- The chunk table: <table>_<column>_chunks (semdb.orm.chunks.chunk_table_name).
        chunk_name := spec.table_name || '_' || spec.column_name || '_chunks';
        IF octet_length(chunk_name) > 63 THEN
            chunk_name := left(chunk_name, 54);
            WHILE octet_length(chunk_name) > 54 LOOP
                chunk_name := left(chunk_name, length(chunk_name) - 1);
            END LOOP;
            chunk_name := chunk_name || '_' || left(encode(sha256(convert_to(
                spec.table_name || '_' || spec.column_name || '_chunks', 'UTF8')), 'hex'), 8);
        END IF;
        chunk_relation := to_regclass(format('%I.%I', spec.table_schema, chunk_name));
        IF chunk_relation IS NULL THEN
            RAISE EXCEPTION 'semdb.hybrid_search: %.% is chunked; its chunk table %.% is missing',
                relation, vector_column, spec.table_schema, chunk_name
                USING HINT = 'create it in a migration (autogenerate renders it)';
        END IF;
        IF spec.index_storage = spec.storage THEN
            chunk_indexed := 'embedding';
        ELSE
            chunk_indexed := format('(embedding::%s(%s))',
                CASE spec.index_storage WHEN 'halfvec' THEN 'halfvec' ELSE 'vector' END,
                spec.dimension::integer);
        END IF;
        SELECT string_agg(format('%I', 'parent_' || key), ', ' ORDER BY ordinality),
               string_agg(format('p.%I = b.%I', key, 'parent_' || key), ' AND '
                              ORDER BY ordinality),
               string_agg(format('p.%I', key), ', ' ORDER BY ordinality)
        INTO parent_keys, parent_match, p_keys
        FROM unnest(spec.key_columns) WITH ORDINALITY AS key;
        -- The nearest chunks, each parent at its best one, the nearest parents.
        semantic_source := format(
            'SELECT p.ctid AS tid, %1$s, b.d FROM ('
            ' SELECT %2$s, min(x.d) AS d FROM ('
            '  SELECT %2$s, %3$s %4$s $5::%5$s(%6$s) AS d FROM %7$s AS ch'
            '  ORDER BY %3$s %4$s $5::%5$s(%6$s) LIMIT greatest(4 * $4, 40)) AS x'
            ' GROUP BY %2$s ORDER BY d LIMIT $4) AS b'
            ' JOIN %8$s AS p ON %9$s',
            p_keys, parent_keys, chunk_indexed, distance_operator,
            CASE spec.index_storage WHEN 'halfvec' THEN 'halfvec' ELSE 'vector' END,
            spec.dimension::integer, chunk_relation, relation, parent_match);
        pool_chunks := greatest(4 * pool, 40);
    END IF;
"""


def chunk_aware_hybrid_search() -> str:
    """0005's hybrid_search with its semantic leg chosen by the column's chunking."""
    previous = _revision_0005()
    text = str(previous.HYBRID_SEARCH)
    declare = "    fused text;\nBEGIN"
    assert _SEMANTIC_0005 in text and declare in text, "revision 0005's hybrid_search changed"
    text = text.replace(
        declare,
        "    fused text;\n    semantic_source text;\n    chunk_name text;\n"
        "    chunk_relation regclass;\n    chunk_indexed text;\n    parent_keys text;\n"
        "    parent_match text;\n"
        "    p_keys text;\n    pool_chunks integer;\nBEGIN",
    )
    text = text.replace(_SEMANTIC_0005, "            FROM (%11$s) AS s")
    ef = "    PERFORM set_config('hnsw.ef_search', least(greatest(pool, 40), 1000)::text, true);"
    assert ef in text, "revision 0005's hybrid_search changed"
    text = text.replace(
        ef,
        "    pool_chunks := pool;\n"
        + _CHOOSE_SEMANTIC
        + "    PERFORM set_config('hnsw.ef_search', least(greatest(pool_chunks, 40), 1000)::text,"
        " true);",
    )
    arguments = "        s_keys, keys, fused, t_keys)"
    assert arguments in text, "revision 0005's hybrid_search changed"
    return text.replace(arguments, "        s_keys, keys, fused, t_keys, semantic_source)")
