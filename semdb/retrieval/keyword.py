"""Keyword search: BM25 ranking in plain PostgreSQL (no extension).

>>> hits = semdb.keyword_search(session, Doc.embedding, "convert images to pdf", k=10,
...                             where=Doc.lang == "en")
>>> [(hit.row.title, hit.score) for hit in hits]

The column's text is analysed by its text search configuration (``fulltext=`` of
:func:`semdb.embedding_column`, ``english`` by default): the query's terms are the lexemes of
``to_tsvector(config, text)``, so stemming and stopwords are PostgreSQL's and the query text
is never parsed as tsquery syntax (operators, quotes and backslashes are just characters). A
row matches when it holds **any** term; its score is Okapi BM25::

    sum over the query's terms t in the row:
        idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average length))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with ``tf`` the term's occurrences in the row, ``length`` the row's number of distinct
terms, ``N`` and ``df`` from ``semdb.bm25_stats`` / ``semdb.bm25_terms``, and ``tf`` and
``length`` from the column's postings (all kept exact by triggers, see
:mod:`semdb.sync.keyword_stats`). Two statements: the query's terms with their document
counts, then the ranking, an aggregate over the query terms' postings read through the
postings' primary key (``term`` first, ``tf`` and ``length`` included)::

    SELECT key_1 AS id, sum(idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avgdl)))
    FROM unnest($terms, $idfs) AS q(term, idf) JOIN semdb.bm25p_docs_... AS p USING (term)
    GROUP BY key_1 ORDER BY score DESC, key_1 LIMIT k

With ``where=`` or a ``statement=`` that joins or filters, a scored row is kept only when
that statement holds it (an EXISTS on the key), best first until k pass.

A text with no term (empty, stopwords only, punctuation) finds nothing: an empty result.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import ARRAY, REGCONFIG
from sqlalchemy.orm import Session

from semdb.db.schema import bm25_stats, bm25_terms, hybrid_fusion, vector_columns
from semdb.errors import SearchError
from semdb.orm.columns import VectorColumn, vector_column
from semdb.retrieval.nearest import connection_of, kept
from semdb.retrieval.plan import SearchPlan
from semdb.retrieval.results import KeywordHit, SearchResult
from semdb.retrieval.settings import Bind, run_statement
from semdb.retrieval.statement import base_statement, check_filter, check_k, selects_one_entity
from semdb.sync.keyword_stats import fold_before_reading

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
#: The most words a query text may hold (a tsquery of thousands of terms takes seconds).
MAX_QUERY_WORDS = 256


@dataclass(frozen=True)
class QueryTerms:
    """A query's terms with their idf, and the corpus' average document length."""

    config: str
    terms: list[str]
    idfs: list[float]
    average_length: float
    #: The column's postings table in schema semdb (semdb.sync.keyword_stats).
    postings: str = ""
    #: The column's stored fusion for hybrid search (semdb.hybrid_fusion), if any.
    fusion: Any = None
    #: Is the column's upkeep deferred (semdb.sync.keyword_stats.deferred_statements)?
    deferred: bool = False

    @property
    def tsquery(self) -> str:
        """``'a' | 'b'``: the terms, quoted as tsquery input quotes them (exact lexemes)."""
        return " | ".join(
            "'" + term.replace("\\", "\\\\").replace("'", "''") + "'" for term in self.terms
        )


def check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise SearchError(
            f"the query text must be a string, got {type(text).__name__}",
            fix="pass the user's query as a str",
        )
    if "\x00" in text:
        raise SearchError(
            "the query text holds a NUL character, which PostgreSQL text cannot hold",
            fix="remove NUL characters from the query text",
        )
    words = len(text.split())
    if words > MAX_QUERY_WORDS:
        raise SearchError(
            f"the query text has {words} words; at most {MAX_QUERY_WORDS} are searched",
            fix=f"shorten the query to its first {MAX_QUERY_WORDS} words",
        )
    return text


def check_bm25(k1: Any, b: Any) -> tuple[float, float]:
    for name, value, high in (("k1", k1, math.inf), ("b", b, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
            raise SearchError(
                f"{name} must be a number ({'>= 0' if name == 'k1' else 'from 0 to 1'}), "
                f"got {value!r}",
                fix=f"use {name}={DEFAULT_K1 if name == 'k1' else DEFAULT_B}",
            )
    return float(k1), float(b)


@functools.cache
def terms_statement() -> sa.Select[Any]:
    """The statement of :func:`query_terms`, built once: the column named and the text bound
    at execution (``semdb_schema``, ``semdb_table``, ``semdb_column``, ``semdb_text``)."""
    column_id = (
        sa.select(vector_columns.c.id)
        .where(
            vector_columns.c.table_schema == sa.bindparam("semdb_schema", type_=sa.Text),
            vector_columns.c.table_name == sa.bindparam("semdb_table", type_=sa.Text),
            vector_columns.c.column_name == sa.bindparam("semdb_column", type_=sa.Text),
        )
        .scalar_subquery()
    )
    lexemes = (
        sa.func.unnest(
            sa.func.tsvector_to_array(
                sa.func.to_tsvector(
                    sa.cast(bm25_stats.c.config, REGCONFIG),
                    sa.bindparam("semdb_text", type_=sa.Text),
                )
            )
        )
        .table_valued("term")
        .render_derived("q")
    )
    return (
        sa.select(
            bm25_stats.c.config,
            bm25_stats.c.documents,
            bm25_stats.c.total_length,
            bm25_stats.c.postings,
            lexemes.c.term,
            bm25_terms.c.documents.label("df"),
            hybrid_fusion.c.method,
            hybrid_fusion.c.semantic_weight,
            hybrid_fusion.c.keyword_weight,
            hybrid_fusion.c.rrf_k,
            sa.func.to_regclass(  # its pending keys' table: semdb.bm25q_... (deferred upkeep)
                sa.literal_column("'semdb.'").concat(
                    sa.func.quote_ident(
                        sa.literal_column("'bm25q'").concat(
                            sa.func.substr(bm25_stats.c.postings, sa.literal_column("6"))
                        )
                    )
                )
            )
            .isnot(None)
            .label("deferred"),
        )
        .select_from(bm25_stats)
        .outerjoin(lexemes, sa.true())
        .outerjoin(
            bm25_terms,
            sa.and_(
                bm25_terms.c.column_id == bm25_stats.c.column_id,
                bm25_terms.c.term == lexemes.c.term,
            ),
        )
        .outerjoin(hybrid_fusion, hybrid_fusion.c.column_id == bm25_stats.c.column_id)
        .where(bm25_stats.c.column_id == column_id)
    )


def query_terms(connection: Connection, target: VectorColumn, text: str) -> QueryTerms:
    """The query's terms that some row holds, with their idf (one round trip)."""
    rows = connection.execute(terms_statement(), terms_values(target, text)).all()
    return terms_from_rows(target, rows)


def search_names(target: VectorColumn) -> tuple[str, str, str]:
    """(schema, table, column) of a searched column, as semdb.vector_columns names it."""
    return (target.table.schema or "public", target.table.name, target.column.name)


def terms_values(target: VectorColumn, text: str) -> dict[str, Any]:
    return {
        "semdb_schema": target.table.schema or "public",
        "semdb_table": target.table.name,
        "semdb_column": target.column.name,
        "semdb_text": text,
    }


def terms_head(connection: Connection, target: VectorColumn, text: str) -> sql.Composable:
    """:func:`terms_statement` with its values written in (psycopg's ``sql.Literal``), to
    run in one round trip with other commands (:func:`semdb.retrieval.settings.bracket`)."""
    template = _terms_template(connection.dialect)
    values = {name: sql.Literal(value) for name, value in terms_values(target, text).items()}
    return template.format(**values)


@functools.lru_cache(maxsize=8)
def _terms_template(dialect: sa.Dialect) -> sql.SQL:
    """The compiled :func:`terms_statement` as a psycopg template: ``{semdb_text}`` where the
    driver's placeholder ``%(semdb_text)s`` was."""
    compiled = terms_statement().compile(dialect=dialect).string
    if dialect.paramstyle != "pyformat":
        raise SearchError(
            f"hybrid search runs on psycopg (paramstyle pyformat), not {dialect.driver}",
            fix="use a postgresql+psycopg:// URL",
        )
    escaped = compiled.replace("{", "{{").replace("}", "}}")
    template = re.sub(r"%\((\w+)\)s", r"{\1}", escaped).replace("%%", "%")
    return sql.SQL(template)


def terms_from_rows(target: VectorColumn, rows: Sequence[Any]) -> QueryTerms:
    """:class:`QueryTerms` from the rows of :func:`terms_statement`."""
    if not rows:
        raise SearchError(
            f"{target.name} has no BM25 statistics, so it cannot be keyword-searched",
            fix="add keyword=True to its op.create_embedding_sync in a migration, or call "
            "semdb.install_keyword_stats(connection, column) once",
        )
    config, documents, total = rows[0].config, rows[0].documents, rows[0].total_length
    if rows[0].postings is None:
        raise SearchError(
            f"{target.name} has BM25 statistics but no postings (made before semdb 0008)",
            fix="run `semdb db upgrade` (it builds them), or call "
            "semdb.install_keyword_stats(connection, column) once",
        )
    terms, idfs = [], []
    for row in rows:
        if row.term is None or not row.df or row.df <= 0:
            continue  # a term no row holds matches nothing
        terms.append(row.term)
        idfs.append(math.log(1 + (documents - row.df + 0.5) / (row.df + 0.5)))
    average = total / documents if documents > 0 else 0.0
    fusion = None
    if rows[0].method is not None:
        from semdb.retrieval.hybrid import Fusion

        first = rows[0]
        fusion = Fusion(
            first.method, first.semantic_weight, first.keyword_weight, first.rrf_k, "stored"
        )
    return QueryTerms(
        config, terms, idfs, average, rows[0].postings, fusion, bool(rows[0].deferred)
    )


def postings_table(target: VectorColumn, name: str) -> sa.TableClause:
    """The column's postings (``semdb.<name>``: term, key_1.., tf, length) as a table."""
    keys = [sa.column(f"key_{i}", c.type) for i, c in enumerate(target.key, start=1)]
    return sa.table(
        name,
        sa.column("term", sa.Text),
        *keys,
        sa.column("tf", sa.Integer),
        sa.column("length", sa.Integer),
        schema="semdb",
    )


def unfiltered(target: VectorColumn, base: sa.Select[Any], where: Any) -> bool:
    """Whether ``base`` and ``where`` keep every row of the column's table (no filter, no
    join): then the postings alone say which rows there are."""
    if where is not None or base.whereclause is not None:
        return False
    froms = base.get_final_froms()
    return len(froms) == 1 and froms[0] is target.table


#: The names of the values :func:`bm25_ranking`'s statement is run with (:func:`bm25_values`).
BM25_PARAMETERS = (
    "semdb_terms",
    "semdb_idfs",
    "semdb_bm25_k1",
    "semdb_bm25_norm",
    "semdb_bm25_slope",
)


def bm25_values(terms: QueryTerms, k1: float, b: float) -> dict[str, Any]:
    """The values of :func:`bm25_ranking`'s parameters for ``terms``, ``k1`` and ``b``."""
    return dict(
        zip(
            BM25_PARAMETERS,
            (
                terms.terms,
                terms.idfs,
                k1 + 1,
                k1 * (1 - b),
                k1 * b / max(terms.average_length, 1e-9),
            ),
            strict=True,
        )
    )


def bm25_ranking(
    target: VectorColumn,
    base: sa.Select[Any],
    where: Any,
    postings_name: str,
    *,
    limit: int,
) -> sa.Select[Any]:
    """``(key..., score, rank)`` of the ``limit`` best rows by BM25 among those passing
    ``where`` in ``base``'s FROM (its joins filter too). The query's terms, their idfs and
    the BM25 constants are parameters (:func:`bm25_values`), so that one statement serves
    every query of a column.

    Exact: every posting of the query's terms is read from the postings' primary key
    (``term`` first, ``tf`` and ``length`` included: an index-only scan per term) and summed
    per row; nothing is computed from a row's text. With a filter or a join, a scored row is
    kept when ``base`` holds it (best first, until ``limit`` pass).
    """
    postings = postings_table(target, postings_name)
    names = iter(BM25_PARAMETERS)
    terms: sa.BindParameter[Any] = sa.bindparam(next(names), type_=ARRAY(sa.Text))
    idfs: sa.BindParameter[Any] = sa.bindparam(next(names), type_=ARRAY(sa.Float))
    k1_plus_1, norm_base, slope = (sa.bindparam(name, type_=sa.Float) for name in names)
    query = sa.func.unnest(terms, idfs).table_valued("term", "idf").render_derived("q")
    tf = sa.cast(postings.c.tf, sa.Float)
    length = sa.cast(postings.c.length, sa.Float)
    norm = norm_base + slope * length
    score = sa.func.sum(query.c.idf * tf * k1_plus_1 / (tf + norm), type_=sa.Float)
    posting_keys = [postings.c[f"key_{i}"] for i in range(1, len(target.key) + 1)]
    scored = (
        sa.select(
            *[p.label(c.name) for p, c in zip(posting_keys, target.key, strict=True)],
            score.label("score"),
        )
        .select_from(query)
        .join(postings, postings.c.term == query.c.term)
        .group_by(*posting_keys)
        .subquery("bm25_scored")
    )
    key = [scored.c[c.name] for c in target.key]
    best = sa.select(*key, scored.c.score)
    if not unfiltered(target, base, where):
        held = base.with_only_columns(sa.literal(1), maintain_column_froms=True).where(
            *[c == scored.c[c.name] for c in target.key]
        )
        if where is not None:
            held = held.where(where)
        best = best.where(held.exists())
    top = sa.literal_column(str(limit), sa.Integer)
    # the best ``limit`` first (a top-N sort), then their ranks
    best_q = best.order_by(scored.c.score.desc(), *key).limit(top).subquery("bm25_best")
    best_key = [best_q.c[c.name] for c in target.key]
    return sa.select(
        *best_key,
        best_q.c.score,
        sa.func.row_number().over(order_by=[best_q.c.score.desc(), *best_key]).label("rank"),
    ).order_by(best_q.c.score.desc(), *best_key)


def keyword_search(
    bind: Bind,
    column: Any,
    text: str,
    *,
    k: int = 10,
    where: Any = None,
    statement: sa.Select[Any] | None = None,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
) -> SearchResult:
    """The k rows best ranked by BM25 for ``text`` among those passing ``where``.

    ``column``: the vector column whose text is searched (``Doc.embedding``: its sources and
    text search configuration). ``where`` and ``statement`` as in :func:`semdb.search`.
    Hits are :class:`KeywordHit` ``(row, score)``, best first; k rows whenever k rows pass
    the filter and hold at least one of the query's terms. A text without terms (empty,
    stopwords only, punctuation or tsquery operators only) gives an empty result.
    """
    target = vector_column(column)
    text = check_text(text)
    check_k(k)
    k1, b = check_bm25(k1, b)
    where = check_filter(where)
    base = kept(
        ("base", target.column, target.entity, statement), lambda: base_statement(target, statement)
    )
    connection = connection_of(bind)
    plan = SearchPlan("exact", "BM25 of every row holding a query term (postings index)")
    names = search_names(target)
    fold_before_reading(connection, *names)
    terms = query_terms(connection, target, text)
    if fold_before_reading(connection, *names, deferred=terms.deferred):
        terms = query_terms(connection, target, text)
    if not terms.terms:
        return SearchResult([], SearchPlan("exact", "the text has no term any row holds", 0))

    def build() -> sa.Select[Any]:
        ranked = bm25_ranking(target, base, where, terms.postings, limit=k).subquery("bm25")
        return (
            base.add_columns(ranked.c.score)
            .join(ranked, sa.and_(*[c == ranked.c[c.name] for c in target.key]))
            .order_by(ranked.c.score.desc(), *target.key)
            .limit(sa.literal_column(str(k), sa.Integer))
        )

    # built once per column, statement, filter object, k and postings table (see nearest.kept)
    final = kept(
        ("keyword", k, terms.postings, target.column, target.entity, statement, where), build
    )
    rows = run_statement(bind, connection, final, bm25_values(terms, k1, b), {}, custom_plan=True)
    one_entity = isinstance(bind, Session) and selects_one_entity(base)
    hits = [KeywordHit(row[0] if one_entity else row, float(row[-1])) for row in rows]
    return SearchResult(hits, plan)
