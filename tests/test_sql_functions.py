"""The SQL functions semdb's migrations install, called from SQL as a psql user would.

A registry row is data anyone with write access to ``semdb.vector_columns`` can change; what
the functions read from it must never run as SQL of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from semdb.sync import SyncTarget
from semdb.sync.registry import register, unregister_statement

TARGET = SyncTarget("public", "sqlfn_docs", "embedding", ("id",), ("body",), "tiny", 3)

HYBRID = (
    "SELECT (h.item).id, h.score FROM semdb.hybrid_search("
    "NULL::sqlfn_docs, 'embedding', CAST('[1,0,0]' AS vector), 'red', 5) AS h"
)


@pytest.fixture()
def docs(engine: sa.Engine) -> Iterator[sa.Engine]:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE sqlfn_docs (id int PRIMARY KEY, body text, embedding vector(3), "
                "embedding_model text, embedding_hash bytea)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO sqlfn_docs (id, body, embedding) VALUES "
                "(1, 'red apple', '[1,0,0]'), (2, 'green pear', '[0,1,0]'), "
                "(3, 'red cherry', '[0.9,0.1,0]')"
            )
        )
        # The canary: a sequence, whose nextval survives the rollback of a failed statement.
        connection.execute(sa.text("CREATE SEQUENCE sqlfn_canary"))
        connection.execute(
            sa.text(
                "CREATE FUNCTION sqlfn_canary(integer) RETURNS integer LANGUAGE sql VOLATILE "
                "AS $$ SELECT nextval('sqlfn_canary')::integer $$"
            )
        )
        register(connection, TARGET)
    yield engine
    with engine.begin() as connection:
        connection.execute(unregister_statement(TARGET))
        connection.execute(sa.text("DROP TABLE sqlfn_docs"))
        connection.execute(sa.text("DROP FUNCTION sqlfn_canary(integer)"))
        connection.execute(sa.text("DROP SEQUENCE sqlfn_canary"))


def canary_called(engine: sa.Engine) -> bool:
    with engine.connect() as connection:
        return bool(connection.execute(sa.text("SELECT is_called FROM sqlfn_canary")).scalar())


def set_registry(engine: sa.Engine, **values: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE semdb.vector_columns SET "
                + ", ".join(f"{name} = :{name}" for name in values)
                + " WHERE table_name = 'sqlfn_docs'"
            ),
            values,
        )


def test_hybrid_search_from_sql_finds_rows(docs: sa.Engine) -> None:
    with docs.connect() as connection:
        rows = connection.execute(sa.text(HYBRID)).all()
    assert [row.id for row in rows][:2] == [1, 3]
    set_registry(docs, index_storage="halfvec")  # the expression-index form
    with docs.connect() as connection:
        assert [row.id for row in connection.execute(sa.text(HYBRID)).all()][:2] == [1, 3]


@pytest.mark.parametrize(
    "crafted",
    [
        # each puts a call of the canary into the function's dynamic statement
        {"storage": "vector(3), sqlfn_canary", "index_storage": "vector(3), sqlfn_canary"},
        {"index_storage": "halfvec(3)), sqlfn_canary(3) AS x, (NULL::halfvec"},
        {"distance": "cosine') OR sqlfn_canary(1) > 0 --"},
        {"fulltext": "english'::regconfig, body) || sqlfn_canary(1)::text || to_tsvector('x"},
        {"sources": "{body) || sqlfn_canary(1)::text || (body}"},
    ],
    ids=["storage", "index_storage", "distance", "fulltext", "sources"],
)
def test_a_crafted_registry_row_runs_no_sql(docs: sa.Engine, crafted: dict[str, str]) -> None:
    set_registry(docs, **crafted)
    with docs.connect() as connection:
        try:
            connection.execute(sa.text(HYBRID)).all()
        except sa.exc.DBAPIError as exc:
            hint = getattr(getattr(exc.orig, "diag", None), "message_hint", None) or ""
            if {"storage", "index_storage", "distance"} & set(crafted):
                assert "semdb.vector_columns was changed by hand" in hint
    assert not canary_called(docs), f"the registry value {crafted} ran as SQL"


def test_the_functions_run_with_a_fixed_search_path(docs: sa.Engine) -> None:
    """A caller's search_path (a schema of its own first, holding operators named like those
    the functions use) changes nothing: the functions' own setting wins."""
    with docs.begin() as connection:
        settings = dict(
            connection.execute(
                sa.text(
                    "SELECT p.proname, array_to_string(p.proconfig, ';') FROM pg_proc p "
                    "WHERE p.pronamespace = 'semdb'::regnamespace "
                    "AND p.proname IN ('hybrid_search', 'rrf_score')"
                )
            ).all()
        )
        for name in ("hybrid_search", "rrf_score"):
            assert "search_path=pg_catalog" in (settings[name] or ""), name
            assert (settings[name] or "").endswith("pg_temp"), name
        connection.execute(sa.text("CREATE SCHEMA sqlfn_evil"))
        try:
            # Operators the functions use, better matches than pg_catalog's or pgvector's
            # for a caller that puts sqlfn_evil first.
            connection.execute(
                sa.text(
                    "CREATE FUNCTION sqlfn_evil.distance(vector, vector) RETURNS float8 "
                    "LANGUAGE sql AS $$ SELECT sqlfn_canary(1)::float8 $$; "
                    "CREATE OPERATOR sqlfn_evil.<=> (LEFTARG = vector, RIGHTARG = vector, "
                    "FUNCTION = sqlfn_evil.distance); "
                    "CREATE FUNCTION sqlfn_evil.divide(numeric, bigint) RETURNS numeric "
                    "LANGUAGE sql AS $$ SELECT sqlfn_canary(1)::numeric $$; "
                    "CREATE OPERATOR sqlfn_evil./ (LEFTARG = numeric, RIGHTARG = bigint, "
                    "FUNCTION = sqlfn_evil.divide)"
                )
            )
            connection.execute(sa.text("SET LOCAL search_path = sqlfn_evil, public"))
            rows = connection.execute(sa.text(HYBRID)).all()
            assert [row.id for row in rows][:2] == [1, 3]
            assert connection.execute(sa.text("SELECT semdb.rrf_score(1, 2, 60)")).scalar()
        finally:
            connection.execute(sa.text("RESET search_path"))
            connection.execute(sa.text("DROP SCHEMA sqlfn_evil CASCADE"))
    assert not canary_called(docs)
