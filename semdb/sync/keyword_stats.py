"""BM25 corpus statistics of a vector column's text, kept exact in the writer's transaction.

For a column registered in ``semdb.vector_columns`` (``docs.embedding`` made from ``title``
and ``body``, text search configuration ``english`` unless the column says otherwise), one
trigger function and four statement-level triggers keep ``semdb.bm25_stats`` (documents,
total length) and ``semdb.bm25_terms`` (documents per term) equal to what a full count over
the table gives:

- after INSERT, the inserted rows' terms are added (transition table ``semdb_new``);
- after DELETE, the deleted rows' terms are subtracted (``semdb_old``);
- after UPDATE, only rows whose text really changed count (old minus new, matched by key
  and text: a worker writing vectors changes no text and costs two comparisons per row);
- after TRUNCATE, the statistics are reset.

The same statements keep the column's **postings** (``semdb.bm25p_<table>_<column>_<hash>``,
named in ``semdb.bm25_stats.postings``): one row per (term, row) with the term's count in
the row and the row's length, keyed by ``(term, key_1, ...)`` (the table's key columns, their
types) with ``tf`` and ``length`` in the index, so a search reads only its terms' postings
from that index and never computes a row's tsvector (:mod:`semdb.retrieval.keyword`).

A document's terms are ``to_tsvector(config, coalesce(title, '') || ' ' || coalesce(body,
''))``, the GIN index's expression; its length is the number of distinct terms
(``length(tsvector)``). Staleness: none. The statistics change in the transaction that
changes the text, so a search sees exactly the rows its snapshot sees. The price: a
statement that changes a column's text first locks that column's row of ``semdb.bm25_stats``
until its transaction ends, so writers of one column's text run one after the other (always
in that order, so they never deadlock on term rows). Terms whose count falls to 0 stay as
rows with 0 (harmless; :func:`rebuild_statements` removes them).

**Deferred upkeep** (``install_keyword_stats(connection, column, deferred=True)``): counting
terms in the writer's statement costs most of a bulk COPY into a table without indexes
(bench/README-hybrid.md). Deferred, the writer only appends the keys of the rows whose text
it changed to a pending table (an UPDATE that sets no source and no key, such as a worker's
vector write, fires nothing), and a fold applies them set based, later, in one statement;
writers no longer queue on the statistics row. When it folds and how stale a search may
read: :func:`refresh_keyword_stats`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg import sql
from sqlalchemy import Connection

from semdb.errors import SyncError
from semdb.sync.target import SyncTarget

DEFAULT_CONFIG = "english"


def config_of(target: SyncTarget) -> str:
    return target.fulltext or DEFAULT_CONFIG


def function_name(target: SyncTarget) -> str:
    base = f"bm25_{target.table_schema}_{target.table_name}_{target.column_name}"
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"bm25_{target.table_name[:24]}_{target.column_name[:16]}_{digest}"


def postings_name(target: SyncTarget) -> str:
    """The postings table's name (in schema semdb), at most 63 bytes for any names."""
    return function_name(target).replace("bm25_", "bm25p_", 1)


def postings_sql(target: SyncTarget) -> sql.Identifier:
    return sql.Identifier("semdb", postings_name(target))


def _named(target: SyncTarget, prefix: str) -> sql.Identifier:
    """A deferred column's own objects in schema semdb: ``bm25q_`` its pending keys,
    ``bm25d_`` its rows' tsvectors as last folded, ``bm25f_`` its fold function."""
    return sql.Identifier("semdb", function_name(target).replace("bm25_", prefix, 1))


def key_names(target: SyncTarget) -> list[str]:
    """The postings' key columns: ``key_1, ...`` (the table's key columns, in order)."""
    return [f"key_{i}" for i in range(1, len(target.key_columns) + 1)]


def trigger_names(target: SyncTarget) -> list[str]:
    stem = f"semdb_bm25_{target.column_name[:32]}"
    return [f"{stem}_{event}" for event in ("insert", "update", "delete", "truncate")]


def _document(target: SyncTarget, alias: str) -> sql.Composable:
    """``coalesce(a."title", '') || ' ' || coalesce(a."body", '')`` (the GIN index's text)."""
    return sql.SQL(" || ' ' || ").join(
        sql.SQL("coalesce({}, '')").format(sql.Identifier(alias, source))
        for source in target.sources
    )


def _tsvector(target: SyncTarget, alias: str) -> sql.Composable:
    return sql.SQL("to_tsvector({}::regconfig, {})").format(
        sql.Literal(config_of(target)), _document(target, alias)
    )


def _column_id(target: SyncTarget) -> sql.Composable:
    return sql.SQL(
        "(SELECT id FROM semdb.vector_columns "
        "WHERE table_schema = {} AND table_name = {} AND column_name = {})"
    ).format(
        sql.Literal(target.table_schema),
        sql.Literal(target.table_name),
        sql.Literal(target.column_name),
    )


def _doc_keys(target: SyncTarget, alias: str) -> sql.Composable:
    """``n."id" AS key_1, ...``: a changed row's key, as the postings name it."""
    return sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.Identifier(alias, key), sql.Identifier(name))
        for key, name in zip(target.key_columns, key_names(target), strict=True)
    )


def _postings_apply(target: SyncTarget) -> sql.Composable:
    """After ``_apply``'s CTEs: the postings of ``docs(sign, key_1.., tv)`` brought up to date.
    A (term, row) pair of an old text that the new text does not hold is deleted; every pair
    of a new text is inserted or updated (the two sets are disjoint, so one statement)."""
    keys = sql.SQL(", ").join(sql.Identifier(name) for name in key_names(target))
    d_keys = sql.SQL(", ").join(sql.Identifier("d", name) for name in key_names(target))
    match = sql.SQL(" AND ").join(
        sql.SQL("p.{0} = g.{0}").format(sql.Identifier(name))
        for name in ["term", *key_names(target)]
    )
    updated = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name)) for name in ("tf", "length")
    )
    return sql.SQL(
        """, gone AS (
        DELETE FROM {postings} AS p USING (
            SELECT u.term, {d_keys} FROM docs AS d, unnest(tsvector_to_array(d.tv)) AS u(term)
            WHERE d.sign < 0
            EXCEPT
            SELECT u.term, {d_keys} FROM docs AS d, unnest(tsvector_to_array(d.tv)) AS u(term)
            WHERE d.sign > 0) AS g
        WHERE {match} RETURNING 1
    )
    INSERT INTO {postings} AS p (term, {keys}, tf, length)
    SELECT u.lexeme, {d_keys}, array_length(u.positions, 1), length(d.tv)
    FROM docs AS d, unnest(d.tv) AS u WHERE d.sign > 0
    ON CONFLICT (term, {keys}) DO UPDATE SET {updated}"""
    ).format(postings=postings_sql(target), keys=keys, d_keys=d_keys, match=match, updated=updated)


def _apply(column_id: sql.Composable, target: SyncTarget | None = None) -> sql.Composable:
    """Add ``docs(sign, tv)`` to the statistics of ``column_id`` (and, with ``target``, to
    its postings)."""
    if target is not None:
        return sql.SQL(
            """, totals AS (
        UPDATE semdb.bm25_stats
        SET documents = documents + (SELECT coalesce(sum(sign), 0) FROM docs),
            total_length = total_length + (SELECT coalesce(sum(sign * length(tv)), 0) FROM docs)
        WHERE column_id = {cid} RETURNING 1
    ), terms AS (
        INSERT INTO semdb.bm25_terms AS t (column_id, term, documents)
        SELECT {cid}, term, sum(sign) FROM docs, unnest(tsvector_to_array(docs.tv)) AS term
        GROUP BY term HAVING sum(sign) <> 0 ORDER BY term
        ON CONFLICT (column_id, term) DO UPDATE SET documents = t.documents + excluded.documents
        RETURNING 1
    ){postings}"""
        ).format(cid=column_id, postings=_postings_apply(target))
    return sql.SQL(
        """, totals AS (
        UPDATE semdb.bm25_stats
        SET documents = documents + (SELECT coalesce(sum(sign), 0) FROM docs),
            total_length = total_length + (SELECT coalesce(sum(sign * length(tv)), 0) FROM docs)
        WHERE column_id = {cid} RETURNING 1
    )
    INSERT INTO semdb.bm25_terms AS t (column_id, term, documents)
    SELECT {cid}, term, sum(sign) FROM docs, unnest(tsvector_to_array(docs.tv)) AS term
    GROUP BY term HAVING sum(sign) <> 0 ORDER BY term
    ON CONFLICT (column_id, term) DO UPDATE SET documents = t.documents + excluded.documents"""
    ).format(cid=column_id)


def install_statements(
    target: SyncTarget, *, postings: bool = True, deferred: bool = False
) -> list[sql.Composable]:
    """The postings table, the trigger function and triggers, then the statistics and
    postings computed from the table as it is (the triggers' lock on the table keeps writers
    out until the transaction ends). ``postings=False``: revision 0005's statistics alone
    (what downgrading 0008 reinstalls). ``deferred``: see :func:`deferred_statements`."""
    if deferred:
        return deferred_statements(target)
    cid = sql.Identifier("cid")
    with_keys = postings
    owned = target if postings else None
    same = sql.SQL(" AND ").join(
        [
            *(sql.SQL("o.{0} = n.{0}").format(sql.Identifier(key)) for key in target.key_columns),
            sql.SQL("({}) = ({})").format(_document(target, "o"), _document(target, "n")),
        ]
    )

    def keys(alias: str) -> sql.Composable:
        return sql.SQL("{}, ").format(_doc_keys(target, alias)) if with_keys else sql.SQL("")

    new_changed = sql.SQL(
        "SELECT 1 AS sign, {keys}{tv} AS tv FROM semdb_new AS n "
        "WHERE NOT EXISTS (SELECT 1 FROM semdb_old AS o WHERE {same})"
    ).format(keys=keys("n"), tv=_tsvector(target, "n"), same=same)
    old_changed = sql.SQL(
        "SELECT -1 AS sign, {keys}{tv} AS tv FROM semdb_old AS o "
        "WHERE NOT EXISTS (SELECT 1 FROM semdb_new AS n WHERE {same})"
    ).format(keys=keys("o"), tv=_tsvector(target, "o"), same=same)
    body = sql.SQL(
        """
DECLARE
    cid integer;
BEGIN
    SELECT s.column_id INTO cid FROM semdb.bm25_stats AS s WHERE s.column_id = {lookup};
    IF cid IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN  -- (nested: an INSERT's trigger has no semdb_old to plan)
        IF NOT EXISTS ({new_changed}) AND NOT EXISTS ({old_changed}) THEN
            RETURN NULL;
        END IF;
    END IF;
    PERFORM 1 FROM semdb.bm25_stats WHERE column_id = cid FOR UPDATE;
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE semdb.bm25_stats SET documents = 0, total_length = 0 WHERE column_id = cid;
        DELETE FROM semdb.bm25_terms WHERE column_id = cid;{truncate}
    ELSIF TG_OP = 'INSERT' THEN
        WITH docs AS MATERIALIZED (SELECT 1 AS sign, {keys_new}{tv_new} AS tv FROM semdb_new AS n)
        {apply};
    ELSIF TG_OP = 'DELETE' THEN
        WITH docs AS MATERIALIZED (SELECT -1 AS sign, {keys_old}{tv_old} AS tv FROM semdb_old AS o)
        {apply};
    ELSE
        WITH docs AS MATERIALIZED ({new_changed} UNION ALL {old_changed})
        {apply};
    END IF;
    RETURN NULL;
END
"""
    ).format(
        lookup=_column_id(target),
        new_changed=new_changed,
        old_changed=old_changed,
        tv_new=_tsvector(target, "n"),
        tv_old=_tsvector(target, "o"),
        keys_new=keys("n"),
        keys_old=keys("o"),
        truncate=sql.SQL("\n        TRUNCATE {};").format(postings_sql(target))
        if postings
        else sql.SQL(""),
        apply=_apply(cid, owned),
    )
    function = sql.Identifier("semdb", function_name(target))
    insert, update, delete, truncate = (sql.Identifier(n) for n in trigger_names(target))
    table = target.table_sql
    return [
        *_drop_deferred_statements(target),
        *(create_postings_statements(target) if postings else []),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}"
        ).format(name=function, body=sql.Literal(body.as_string(None))),
        *uninstall_statements(target, everything=False),
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT ON {} REFERENCING NEW TABLE AS semdb_new "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(insert, table, function),
        sql.SQL(
            "CREATE TRIGGER {} AFTER UPDATE ON {} "
            "REFERENCING OLD TABLE AS semdb_old NEW TABLE AS semdb_new "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(update, table, function),
        sql.SQL(
            "CREATE TRIGGER {} AFTER DELETE ON {} REFERENCING OLD TABLE AS semdb_old "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(delete, table, function),
        sql.SQL(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(truncate, table, function),
        *rebuild_statements(target, postings=postings),
    ]


def create_postings_statements(target: SyncTarget) -> list[sql.Composable]:
    """The postings table made afresh: ``term``, the key columns as ``key_1, ...`` (their
    types taken from the table), ``tf`` and ``length``; its primary key ``(term, key_1, ...)``
    carries ``tf`` and ``length`` so that a search reads its terms' postings from the index
    alone."""
    postings = postings_sql(target)
    keys = [sql.Identifier(name) for name in key_names(target)]
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(postings),
        sql.SQL(
            "CREATE TABLE {postings} AS SELECT ''::text AS term, {keys}, "
            "0 AS tf, 0 AS length FROM {table} AS t WITH NO DATA"
        ).format(postings=postings, keys=_doc_keys(target, "t"), table=target.table_sql),
        sql.SQL("ALTER TABLE {} ALTER tf SET NOT NULL, ALTER length SET NOT NULL").format(postings),
        sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (term, {}) INCLUDE (tf, length)").format(
            postings, sql.SQL(", ").join(keys)
        ),
    ]


def rebuild_statements(target: SyncTarget, *, postings: bool = True) -> list[sql.Composable]:
    """The statistics (and postings) counted again from the whole table (the stats row
    locked meanwhile)."""
    cid = _column_id(target)
    if postings:
        register = sql.SQL(
            "INSERT INTO semdb.bm25_stats (column_id, config, postings) "
            "SELECT {cid}, {config}, {name} ON CONFLICT (column_id) "
            "DO UPDATE SET config = excluded.config, postings = excluded.postings"
        ).format(
            cid=cid, config=sql.Literal(config_of(target)), name=sql.Literal(postings_name(target))
        )
    else:
        register = sql.SQL(
            "INSERT INTO semdb.bm25_stats (column_id, config) SELECT {cid}, {config} "
            "ON CONFLICT (column_id) DO UPDATE SET config = excluded.config"
        ).format(cid=cid, config=sql.Literal(config_of(target)))
    refill = []
    if postings:
        keys = sql.SQL(", ").join(sql.Identifier(name) for name in key_names(target))
        refill = [
            sql.SQL("TRUNCATE {}").format(postings_sql(target)),
            sql.SQL(
                "INSERT INTO {postings} (term, {keys}, tf, length) "
                "SELECT u.lexeme, {t_keys}, array_length(u.positions, 1), length(t.tv) "
                "FROM (SELECT {doc_keys}, {tv} AS tv FROM {table} AS t) AS t, unnest(t.tv) AS u "
                "ORDER BY 1, {keys}"
            ).format(
                postings=postings_sql(target),
                keys=keys,
                t_keys=sql.SQL(", ").join(sql.Identifier("t", name) for name in key_names(target)),
                doc_keys=_doc_keys(target, "t"),
                tv=_tsvector(target, "t"),
                table=target.table_sql,
            ),
        ]
    return [
        register,
        sql.SQL("SELECT 1 FROM semdb.bm25_stats WHERE column_id = {} FOR UPDATE").format(cid),
        sql.SQL("DELETE FROM semdb.bm25_terms WHERE column_id = {}").format(cid),
        sql.SQL(
            """WITH docs AS MATERIALIZED (SELECT {tv} AS tv FROM {table} AS t), totals AS (
    UPDATE semdb.bm25_stats SET documents = (SELECT count(*) FROM docs),
        total_length = (SELECT coalesce(sum(length(tv)), 0) FROM docs)
    WHERE column_id = {cid} RETURNING 1
)
INSERT INTO semdb.bm25_terms (column_id, term, documents)
SELECT {cid}, term, count(*) FROM docs, unnest(tsvector_to_array(docs.tv)) AS term
GROUP BY term"""
        ).format(tv=_tsvector(target, "t"), table=target.table_sql, cid=cid),
        *refill,
    ]


def uninstall_statements(target: SyncTarget, *, everything: bool = True) -> list[sql.Composable]:
    """DROP the triggers (and with ``everything``, the function and the statistics)."""
    statements: list[sql.Composable] = [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), target.table_sql)
        for name in trigger_names(target)
    ]
    if everything:
        cid = _column_id(target)
        statements += [
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
                sql.Identifier("semdb", function_name(target))
            ),
            sql.SQL("DROP TABLE IF EXISTS {}").format(postings_sql(target)),
            *_drop_deferred_statements(target),
            sql.SQL("DELETE FROM semdb.bm25_terms WHERE column_id = {}").format(cid),
            sql.SQL("DELETE FROM semdb.bm25_stats WHERE column_id = {}").format(cid),
            sql.SQL("DELETE FROM semdb.hybrid_fusion WHERE column_id = {}").format(cid),
        ]
    return statements


def _drop_deferred_statements(target: SyncTarget) -> list[sql.Composable]:
    return [
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_named(target, "bm25f_")),
        sql.SQL("DROP TABLE IF EXISTS {}").format(_named(target, "bm25q_")),
        sql.SQL("DROP TABLE IF EXISTS {}").format(_named(target, "bm25d_")),
    ]


def deferred_statements(target: SyncTarget) -> list[sql.Composable]:
    """Deferred upkeep: the writer's statement only appends the keys of the rows whose text
    it changed to ``semdb.bm25q_...`` (its triggers cost a few percent of a COPY, where
    counting terms in the writer costs most of it); ``semdb.bm25f_...()`` folds them, set
    based, into the statistics, the postings and ``semdb.bm25d_...`` (each row's tsvector
    as last folded, what a fold subtracts). See :func:`refresh_keyword_stats` for when it
    runs and how stale a search may read."""
    pending, docs, fold = (_named(target, p) for p in ("bm25q_", "bm25d_", "bm25f_"))
    names = key_names(target)
    keys = sql.SQL(", ").join(sql.Identifier(name) for name in names)

    def key_list(alias: str) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(alias, name) for name in names)

    def matched(a: str, b: str) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(a, name), sql.Identifier(b, name))
            for name in names
        )

    table_keys = sql.SQL(" AND ").join(
        sql.SQL("t.{} = k.{}").format(sql.Identifier(key), sql.Identifier(name))
        for key, name in zip(target.key_columns, names, strict=True)
    )
    trigger_body = sql.SQL(
        """
BEGIN
    IF TG_LEVEL = 'ROW' THEN  -- an UPDATE that changed a source or a key (its WHEN)
        INSERT INTO {pending} ({keys}) VALUES ({old_row});
        IF ({old_row}) IS DISTINCT FROM ({new_row}) THEN
            INSERT INTO {pending} ({keys}) VALUES ({new_row});
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO {pending} ({keys}) SELECT {new_keys} FROM semdb_new AS n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {pending} ({keys}) SELECT {old_keys} FROM semdb_old AS o;
    ELSE  -- TRUNCATE
        PERFORM 1 FROM semdb.bm25_stats WHERE column_id = {lookup} FOR UPDATE;
        UPDATE semdb.bm25_stats SET documents = 0, total_length = 0 WHERE column_id = {lookup};
        DELETE FROM semdb.bm25_terms WHERE column_id = {lookup};
        TRUNCATE {postings}, {docs}, {pending};
    END IF;
    RETURN NULL;
END
"""
    ).format(
        pending=pending,
        docs=docs,
        postings=postings_sql(target),
        keys=keys,
        new_keys=_doc_keys(target, "n"),
        old_keys=_doc_keys(target, "o"),
        old_row=sql.SQL(", ").join(sql.Identifier("old", key) for key in target.key_columns),
        new_row=sql.SQL(", ").join(sql.Identifier("new", key) for key in target.key_columns),
        lookup=_column_id(target),
    )
    watched = [*target.key_columns, *(s for s in target.sources if s not in target.key_columns)]
    changed = sql.SQL(" OR ").join(
        sql.SQL("OLD.{0} IS DISTINCT FROM NEW.{0}").format(sql.Identifier(name)) for name in watched
    )
    cid = sql.Identifier("cid")
    fold_body = sql.SQL(
        """
DECLARE
    cid integer;
BEGIN
    IF current_setting('transaction_read_only') = 'on'
            OR NOT EXISTS (SELECT 1 FROM {pending}) THEN
        RETURN false;
    END IF;
    -- one fold at a time; a fold running elsewhere is not waited for
    SELECT s.column_id INTO cid FROM semdb.bm25_stats AS s
    WHERE s.column_id = {lookup} FOR UPDATE SKIP LOCKED;
    IF cid IS NULL THEN
        RETURN false;
    END IF;
    WITH moved AS (DELETE FROM {pending} RETURNING {keys}),
    k AS MATERIALIZED (SELECT DISTINCT {keys} FROM moved),
    old AS MATERIALIZED (SELECT {k_keys}, d.tv FROM k JOIN {docs} AS d ON {k_d}),
    new AS MATERIALIZED (
        SELECT {k_keys}, {tv} AS tv FROM k JOIN {table} AS t ON {table_keys}
    ),
    docs AS MATERIALIZED (
        SELECT -1 AS sign, {o_keys}, o.tv FROM old AS o
        WHERE NOT EXISTS (SELECT 1 FROM new AS n WHERE {o_n} AND n.tv = o.tv)
        UNION ALL
        SELECT 1 AS sign, {n_keys}, n.tv FROM new AS n
        WHERE NOT EXISTS (SELECT 1 FROM old AS o WHERE {o_n} AND n.tv = o.tv)
    ),
    docs_gone AS (
        DELETE FROM {docs} AS d USING k
        WHERE {k_d} AND NOT EXISTS (SELECT 1 FROM new AS n WHERE {k_n})
        RETURNING 1
    ),
    docs_set AS (
        INSERT INTO {docs} ({keys}, tv) SELECT {n_keys}, n.tv FROM new AS n
        ON CONFLICT ({keys}) DO UPDATE SET tv = excluded.tv
        RETURNING 1
    ){apply};
    RETURN true;
END
"""
    ).format(
        pending=pending,
        docs=docs,
        lookup=_column_id(target),
        keys=keys,
        k_keys=key_list("k"),
        o_keys=key_list("o"),
        n_keys=key_list("n"),
        k_d=matched("k", "d"),
        k_n=matched("k", "n"),
        o_n=matched("o", "n"),
        tv=_tsvector(target, "t"),
        table=target.table_sql,
        table_keys=table_keys,
        apply=_apply(cid, target),
    )
    function = sql.Identifier("semdb", function_name(target))
    insert, update, delete, truncate = (sql.Identifier(n) for n in trigger_names(target))
    table = target.table_sql
    return [
        *_drop_deferred_statements(target),
        *create_postings_statements(target),
        sql.SQL(
            "CREATE TABLE {docs} AS SELECT {keys}, NULL::tsvector AS tv "
            "FROM {table} AS t WITH NO DATA"
        ).format(docs=docs, keys=_doc_keys(target, "t"), table=table),
        sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(docs, keys),
        sql.SQL("CREATE TABLE {pending} AS SELECT {keys} FROM {table} AS t WITH NO DATA").format(
            pending=pending, keys=_doc_keys(target, "t"), table=table
        ),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}"
        ).format(name=function, body=sql.Literal(trigger_body.as_string(None))),
        sql.SQL(
            "CREATE FUNCTION {name}() RETURNS boolean LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}"
        ).format(name=fold, body=sql.Literal(fold_body.as_string(None))),
        *uninstall_statements(target, everything=False),
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT ON {} REFERENCING NEW TABLE AS semdb_new "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(insert, table, function),
        # A row trigger on the sources and keys alone: an UPDATE that sets neither (a
        # worker's vector) does not fire it; one that sets them to the same values only
        # evaluates the WHEN, in the executor.
        sql.SQL(
            "CREATE TRIGGER {} AFTER UPDATE OF {} ON {} FOR EACH ROW WHEN ({}) "
            "EXECUTE FUNCTION {}()"
        ).format(
            update,
            sql.SQL(", ").join(sql.Identifier(name) for name in watched),
            table,
            changed,
            function,
        ),
        sql.SQL(
            "CREATE TRIGGER {} AFTER DELETE ON {} REFERENCING OLD TABLE AS semdb_old "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(delete, table, function),
        sql.SQL(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(truncate, table, function),
        *rebuild_statements(target),
        sql.SQL("INSERT INTO {docs} ({keys}, tv) SELECT {t_keys}, {tv} FROM {table} AS t").format(
            docs=docs,
            keys=keys,
            t_keys=sql.SQL(", ").join(sql.Identifier("t", key) for key in target.key_columns),
            tv=_tsvector(target, "t"),
            table=table,
        ),
    ]


def _target(connection: Connection, column: Any) -> SyncTarget:
    from semdb.sync.registry import find

    declared = column if isinstance(column, SyncTarget) else SyncTarget.from_column(column)
    found = find(connection, declared.table_schema, declared.table_name, declared.column_name)
    if found is None:
        raise SyncError(
            f"{declared.name} is not registered in semdb.vector_columns",
            fix="register it first: op.create_embedding_sync(...) in a migration",
        )
    return found


def install_keyword_stats(connection: Connection, column: Any, *, deferred: bool = False) -> None:
    """Make a registered column keyword-searchable: its triggers installed and its
    statistics counted (``column``: ``Doc.embedding``, ``docs.c.embedding`` or a SyncTarget).
    Migrations do the same with ``op.create_embedding_sync(..., keyword=True)``.

    ``deferred=True``: writers only record the keys of the rows whose text they changed, and
    the statistics and postings catch up when folded (:func:`refresh_keyword_stats`)."""
    target = _target(connection, column)
    for statement in install_statements(target, deferred=deferred):
        connection.exec_driver_sql(statement.as_string(None))
    key = (target.table_schema, target.table_name, target.column_name)
    if deferred:
        _deferred.add(key)
    else:
        _deferred.discard(key)


#: Columns (schema, table, column) seen deferred by this process: searches fold them first.
_deferred: set[tuple[str, str, str]] = set()


def refresh_keyword_stats(connection: Connection, column: Any) -> bool:
    """Fold a deferred column's pending rows into its statistics and postings, in the
    connection's transaction; False when there was nothing to fold, the column is not
    deferred, the transaction is read-only, or another transaction is folding it (that
    fold is not waited for).

    How stale a deferred column reads: ``keyword_search`` and ``hybrid_search`` fold before
    they read, so they see every row their transaction sees, unless the fold was skipped
    (read-only transaction, or a fold running elsewhere: then rows written since the last
    committed fold are missing or scored by their old text, and rows deleted since may
    leave fewer than k hits). ``semdb worker`` folds its columns after each batch and when
    idle; ``semdb keyword refresh`` folds from a shell. The SQL functions
    ``semdb.keyword_search`` and ``semdb.hybrid_search`` read as of the last fold.
    """
    target = _target(connection, column)
    name = _fold_identifier(target.table_schema, target.table_name, target.column_name)
    exists = connection.exec_driver_sql(
        sql.SQL("SELECT to_regproc({})").format(sql.Literal(name.as_string(None))).as_string(None)
    ).scalar()
    key = (target.table_schema, target.table_name, target.column_name)
    if exists is None:
        _deferred.discard(key)
        return False
    _deferred.add(key)
    return bool(
        connection.exec_driver_sql(sql.SQL("SELECT {}()").format(name).as_string(None)).scalar()
    )


def _fold_identifier(schema: str, table: str, column: str) -> sql.Identifier:
    base = f"bm25_{schema}_{table}_{column}"
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return sql.Identifier("semdb", f"bm25f_{table[:24]}_{column[:16]}_{digest}")


def fold_statement(schema: str, table: str, column: str) -> sql.Composed:
    """``DO``: fold the column if it is deferred (its fold function exists), else nothing;
    never an error, so that a search may send it on a guess."""
    name = _fold_identifier(schema, table, column)
    body = sql.SQL("BEGIN IF to_regproc({}) IS NOT NULL THEN PERFORM {}(); END IF; END").format(
        sql.Literal(name.as_string(None)), name
    )
    return sql.SQL("DO {}").format(sql.Literal(body.as_string(None)))


def fold_before_reading(
    connection: Connection, schema: str, table: str, column: str, *, deferred: bool | None = None
) -> bool:
    """Before a search reads a column's statistics: fold it when this process has seen it
    deferred (one round trip; none for a column kept in the writer's statement). With
    ``deferred`` (what the search's terms query said), the process learns the column's
    mode: True when it was deferred but not folded before (fold and read again)."""
    key = (schema, table, column)
    if deferred is None:
        if key in _deferred:
            connection.exec_driver_sql(fold_statement(*key).as_string(None))
        return False
    if deferred and key not in _deferred:
        _deferred.add(key)
        connection.exec_driver_sql(fold_statement(*key).as_string(None))
        return True
    if not deferred:
        _deferred.discard(key)
    return False


def uninstall_keyword_stats(connection: Connection, column: Any) -> None:
    """Remove a column's BM25 triggers, statistics and stored fusion."""
    for statement in uninstall_statements(_target(connection, column)):
        connection.exec_driver_sql(statement.as_string(None))
