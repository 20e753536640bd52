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
terms, ``N`` and ``df`` from ``semdb.bm25_stats`` / ``semdb.bm25_terms`` (kept exact by
triggers, see :mod:`semdb.sync.keyword_stats`). Two statements: the query's terms with their
document counts, then the ranking, whose candidates come from the GIN index on the
column's ``to_tsvector`` expression (declare ``fulltext=`` to get it)::

    WITH candidates AS MATERIALIZED (
        SELECT id, to_tsvector('english', coalesce(body, '')) AS tv FROM docs
        WHERE to_tsvector('english', coalesce(body, '')) @@ $tsquery AND <filter>)
    SELECT id, sum(idf * tf * ...) AS score
    FROM candidates, unnest(ts_delete(tv, <tv's other terms>)) AS u
    JOIN unnest($terms, $idfs) AS q(term, idf) ON u.lexeme = q.term
    GROUP BY id ORDER BY score DESC, id LIMIT k

A text with no term (empty, stopwords only, punctuation) finds nothing: an empty result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import ARRAY, REGCONFIG, TSQUERY
from sqlalchemy.orm import Session

from semdb.db.schema import bm25_stats, bm25_terms, hybrid_fusion, vector_columns
from semdb.errors import SearchError
from semdb.orm.columns import VectorColumn, vector_column
from semdb.orm.document import fulltext_document_sql, regconfig_sql
from semdb.retrieval.nearest import connection_of
from semdb.retrieval.plan import SearchPlan
from semdb.retrieval.results import KeywordHit, SearchResult
from semdb.retrieval.settings import Bind, run_statement
from semdb.retrieval.statement import base_statement, check_filter, check_k, selects_one_entity

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
    #: The column's stored fusion for hybrid search (semdb.hybrid_fusion), if any.
    fusion: Any = None

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


def query_terms(connection: Connection, target: VectorColumn, text: str) -> QueryTerms:
    """The query's terms that some row holds, with their idf (one round trip)."""
    schema = target.table.schema or "public"
    column_id = (
        sa.select(vector_columns.c.id)
        .where(
            vector_columns.c.table_schema == schema,
            vector_columns.c.table_name == target.table.name,
            vector_columns.c.column_name == target.column.name,
        )
        .scalar_subquery()
    )
    lexemes = (
        sa.func.unnest(
            sa.func.tsvector_to_array(
                sa.func.to_tsvector(
                    sa.cast(bm25_stats.c.config, REGCONFIG),
                    sa.bindparam("semdb_text", text, sa.Text),
                )
            )
        )
        .table_valued("term")
        .render_derived("q")
    )
    statement = (
        sa.select(
            bm25_stats.c.config,
            bm25_stats.c.documents,
            bm25_stats.c.total_length,
            lexemes.c.term,
            bm25_terms.c.documents.label("df"),
            hybrid_fusion.c.method,
            hybrid_fusion.c.semantic_weight,
            hybrid_fusion.c.keyword_weight,
            hybrid_fusion.c.rrf_k,
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
    rows = connection.execute(statement).all()
    if not rows:
        raise SearchError(
            f"{target.name} has no BM25 statistics, so it cannot be keyword-searched",
            fix="add keyword=True to its op.create_embedding_sync in a migration, or call "
            "semdb.install_keyword_stats(connection, column) once",
        )
    config, documents, total = rows[0].config, rows[0].documents, rows[0].total_length
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
    return QueryTerms(config, terms, idfs, average, fusion)


def keyword_document(target: VectorColumn, config: str) -> sa.ColumnElement[Any]:
    """``to_tsvector(config, <text>)``: the GIN index's expression when its config matches."""
    if target.spec.fulltext is not None and config == target.spec.fulltext:
        return target.fulltext_document()
    return sa.func.to_tsvector(regconfig_sql(config), fulltext_document_sql(target.sources))


def split_terms(terms: QueryTerms, k1: float) -> tuple[list[int], list[int]]:
    """The query's terms split for pruning (indexes into ``terms.terms``): the essential ones
    (the rarest) and the rest, the most common terms whose contributions together are at
    most what the rarest term alone gives a typical row (its idf). A row holding only the
    rest scores at most ``(k1 + 1) * sum(idf)`` over them."""
    order = sorted(range(len(terms.terms)), key=lambda i: (-terms.idfs[i], terms.terms[i]))
    rest: list[int] = []
    bound = 0.0
    for i in reversed(order[1:]):
        if bound + (k1 + 1) * terms.idfs[i] > terms.idfs[order[0]]:
            break
        bound += (k1 + 1) * terms.idfs[i]
        rest.append(i)
    essential = [i for i in order if i not in rest]
    return essential, rest


def bm25_ranking(
    target: VectorColumn,
    base: sa.Select[Any],
    where: Any,
    terms: QueryTerms,
    *,
    limit: int,
    k1: float,
    b: float,
) -> sa.Select[Any]:
    """``(key..., score, rank)`` of the ``limit`` best rows by BM25 among those passing
    ``where`` in ``base``'s FROM (its joins filter too).

    Exact top ``limit`` with pruning (MaxScore): the rows holding an essential term are
    scored first; the rows holding only common terms are read only when their best possible
    score could still enter the top ``limit`` (a one-time filter: PostgreSQL skips that
    scan when the ``limit``-th score so far is above the bound). Each row's tsvector is
    computed from its text once per scan, which is what a search costs.
    """
    document = keyword_document(target, terms.config)
    term_array = sa.bindparam("semdb_terms", terms.terms, ARRAY(sa.Text))
    query = (
        sa.func.unnest(term_array, sa.bindparam("semdb_idfs", terms.idfs, ARRAY(sa.Float)))
        .table_valued("term", "idf")
        .render_derived("q")
    )

    def number(value: float) -> sa.ColumnElement[float]:
        return sa.literal(value, sa.Float, literal_execute=True)

    def tsquery(indexes: list[int], name: str) -> Any:
        text = QueryTerms(terms.config, [terms.terms[i] for i in indexes], [], 0.0).tsquery
        return sa.cast(sa.bindparam(name, text, sa.Text), TSQUERY)

    def scored(indexes: list[int], name: str, gate: Any = None) -> sa.Select[Any]:
        """The rows holding any of ``terms[indexes]``, each scored on every query term."""
        candidates = base.with_only_columns(
            *target.key, document.label("tv"), maintain_column_froms=True
        ).where(document.op("@@")(tsquery(indexes, f"semdb_tsquery_{name}")))
        if where is not None:
            candidates = candidates.where(where)
        if gate is not None:
            candidates = candidates.where(gate)
        cte = candidates.cte(f"bm25_{name}").prefix_with("MATERIALIZED")
        tv = cte.c.tv
        # The row's tsvector cut to the query's terms: the other terms deleted (all in C).
        only_terms = sa.func.ts_delete(
            tv, sa.func.tsvector_to_array(sa.func.ts_delete(tv, term_array))
        )
        postings = (
            sa.func.unnest(only_terms).table_valued("lexeme", "positions", "weights").alias("u")
        )
        tf = sa.cast(sa.func.array_length(postings.c.positions, 1), sa.Float)
        length = sa.cast(sa.func.length(tv), sa.Float)
        norm = number(k1 * (1 - b)) + number(k1 * b / max(terms.average_length, 1e-9)) * length
        score = sa.func.sum(query.c.idf * tf * number(k1 + 1) / (tf + norm), type_=sa.Float)
        key = [cte.c[c.name] for c in target.key]
        return (
            sa.select(*key, score.label("score"))
            .select_from(cte)
            .join(postings, sa.true())
            .join(query, postings.c.lexeme == query.c.term)
            .group_by(*key)
        )

    essential, rest = split_terms(terms, k1)
    top = sa.literal_column(str(limit), sa.Integer)
    if not rest:
        union = scored(essential, "all").subquery("bm25_scored")
    else:
        first = scored(essential, "essential").order_by(sa.desc("score")).limit(top)
        first_cte = first.cte("bm25_first")
        kth = (
            sa.select(sa.func.min(first_cte.c.score))
            .having(sa.func.count() >= limit)
            .scalar_subquery()
        )
        bound = sum((k1 + 1) * terms.idfs[i] for i in rest)
        # read the rows holding only common terms unless none of them can reach the top
        gate = sa.or_(kth.is_(None), kth <= number(bound))
        second = scored(rest, "rest", gate)
        both = sa.union_all(sa.select(first_cte), second).subquery("bm25_both")
        union = (
            sa.select(
                *[both.c[c.name] for c in target.key], sa.func.max(both.c.score).label("score")
            )
            .group_by(*[both.c[c.name] for c in target.key])
            .subquery("bm25_scored")
        )
    key = [union.c[c.name] for c in target.key]
    return (
        sa.select(
            *key,
            union.c.score,
            sa.func.row_number().over(order_by=[union.c.score.desc(), *key]).label("rank"),
        )
        .order_by(union.c.score.desc(), *key)
        .limit(top)
    )


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
    base = base_statement(target, statement)
    connection = connection_of(bind)
    plan = SearchPlan("exact", "BM25 of every row holding a query term (GIN index candidates)")
    terms = query_terms(connection, target, text)
    if not terms.terms:
        return SearchResult([], SearchPlan("exact", "the text has no term any row holds", 0))
    ranked = bm25_ranking(target, base, where, terms, limit=k, k1=k1, b=b).subquery("bm25")
    final = (
        base.add_columns(ranked.c.score)
        .join(ranked, sa.and_(*[c == ranked.c[c.name] for c in target.key]))
        .order_by(ranked.c.score.desc(), *target.key)
        .limit(k)
    )
    rows = run_statement(bind, connection, final, None, {}, custom_plan=True)
    one_entity = isinstance(bind, Session) and selects_one_entity(base)
    hits = [KeywordHit(row[0] if one_entity else row, float(row[-1])) for row in rows]
    return SearchResult(hits, plan)
