"""Nearest-neighbour search with any SQLAlchemy filter, joins included: k rows back.

>>> hits = semdb.search(session, Doc.embedding, "cheap flights", embedder=embedder, k=10,
...                     where=Doc.lang == "en")
>>> [(hit.row.title, hit.distance) for hit in hits], hits.plan.path
>>> semdb.search(connection, docs.c.embedding, vector, k=5)            # Core: rows are Rows
>>> semdb.search(session, Doc.embedding, vector, k=5,
...              statement=select(Doc, Author.name).join(Doc.author),
...              where=Author.country == "FR")                         # joins
>>> nearest = semdb.PreparedSearch(Doc.embedding, k=10, where=Doc.lang == bindparam("lang"))
>>> nearest(session, vector, lang="en")                                # built once, run often

A search is a :class:`KnnSearch`: what it is but for its values (built on every
:func:`search` call, once by :class:`PreparedSearch`), run with a query and the filter's
values: plan chosen (:mod:`.plan`), statement of the path run (:mod:`.settings`), hits made.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors

from semdb.errors import BindTypeError, SearchError
from semdb.orm.columns import VectorColumn, vector_column
from semdb.protocols import TextEmbedder
from semdb.retrieval.explain import Explain, plan_root
from semdb.retrieval.observers import OBSERVERS, searched
from semdb.retrieval.plan import NO_SETTINGS, PlanRequest, SearchPlan, choose_plan
from semdb.retrieval.results import Hit, SearchResult
from semdb.retrieval.settings import Bind, run_statement
from semdb.retrieval.statement import (
    QUERY_VECTOR,
    PlanPath,
    base_statement,
    check_filter,
    check_k,
    knn_statement,
    selects_one_entity,
)
from semdb.retrieval.vectors import query_vector
from semdb.sync.registry import (
    QUERY_MODEL,
    check_query_model,
    has_registry,
    model_agrees,
    query_model_values,
)

T = TypeVar("T")


def connection_of(bind: Bind) -> Connection:
    """The connection a Session (its current transaction's) or a Connection runs on.

    A Session is flushed first (when it autoflushes), as any query would flush it: pending
    rows are searched too, and nothing is flushed later inside the search's savepoint.
    """
    if isinstance(bind, Session):
        if bind.autoflush:
            bind.flush()
        return bind.connection()
    if isinstance(bind, Connection):
        return bind
    if type(bind).__name__ in ("AsyncSession", "AsyncConnection"):
        raise BindTypeError(
            f"semdb's synchronous searches take a Session or a Connection, got a "
            f"{type(bind).__name__}",
            fix="await the twin in semdb.aio: await semdb.aio.search(session, ...)",
        )
    raise BindTypeError(
        f"search runs on a Session or a Connection, got {type(bind).__name__}",
        fix="pass session, or engine.connect() as connection",
    )


@dataclass
class KnnSearch:
    """A search but for its query and its filter's values."""

    target: VectorColumn
    k: int
    where: Any
    base: sa.Select[Any]
    filtered: bool
    request: PlanRequest = "auto"
    ef_search: int | None = None
    exact_below: int | None = None
    given: sa.Select[Any] | None = None  # the statement given, if any
    #: A chunked search's candidates: (chunks per parent wanted, at least); None: the
    #: defaults of semdb.retrieval.chunked (hybrid_search asks for its SQL function's).
    chunk_candidates: tuple[int, int] | None = None
    _statements: dict[tuple[PlanPath, int | None], sa.Select[Any]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        column: Any,
        *,
        k: int,
        where: Any = None,
        statement: sa.Select[Any] | None = None,
        ef_search: int | None = None,
        plan: PlanRequest = "auto",
        exact_below: int | None = None,
    ) -> KnnSearch:
        target = vector_column(column)
        where = check_filter(where)
        base = kept(
            ("base", target.column, target.entity, statement),
            lambda: base_statement(target, statement),
        )
        # A join (columns of more than one table) or a WHERE in the statement given filters
        # rows too. (A join that selects no column of the other table is not seen: if it
        # drops rows, the index returns fewer than k and the search runs again exactly.)
        filtered = where is not None or (
            statement is not None
            and (base.whereclause is not None or len(base.columns_clause_froms) > 1)
        )
        return cls(
            target, check_k(k), where, base, filtered, plan, ef_search, exact_below, statement
        )

    @property
    def chunked(self) -> bool:
        """Is the column chunked (parents ranked by their best chunk: .chunked)?"""
        return self.target.spec.chunking is not None

    def statement(self, path: PlanPath, level: int | None = 0) -> sa.Select[Any]:
        """The statement of ``path`` (built once), the query vector bound at execution;
        ``level``: a chunked search's wider candidate lists (None: every passing chunk)."""
        known = self._statements.get((path, level))
        if known is None:
            target, k, where = self.target, self.k, self.where
            key = (path, level, k, target.column, target.entity, self.given)
            if self.chunked:
                from semdb.retrieval.chunked import ChunkedStatements

                chunked = ChunkedStatements(target, self.base, where, k, *self.candidates())
                if path == "exact":
                    # the filter comes last: its statement is the template's, filtered
                    exact = kept(key, lambda: chunked.exact_template())
                    known = (
                        exact if where is None else kept((*key, where), lambda: exact.where(where))
                    )
                else:
                    known = kept(
                        (*key, self.chunk_candidates, where), lambda: chunked.build(path, level)
                    )
            else:
                template = kept(key, lambda: knn_statement(target, self.base, path=path, k=k))
                # the same filter object again: its statement again
                known = (
                    template
                    if where is None
                    else kept((*key, where), lambda: template.where(where))
                )
            self._statements[(path, level)] = known
        return known

    def candidates(self) -> tuple[int, int]:
        """A chunked search's (chunks per parent wanted, at least)."""
        if self.chunk_candidates is not None:
            return self.chunk_candidates
        from semdb.retrieval.chunked import CANDIDATES_PER_ROW, MIN_CANDIDATES

        return CANDIDATES_PER_ROW, MIN_CANDIDATES

    def estimate_key(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """What identifies the filter statement with its values among the row estimates: its
        SQL and parameters, compiled once per filter object (the filter's alone when the
        statement reads the vector's table alone: a third of the time), and ``values``."""
        base, where, table = self.base, self.where, self.target.table

        def build() -> Any:
            alone = base.whereclause is None and list(base.columns_clause_froms) == [table]
            clause = where if alone and where is not None else self.filter_statement({})
            compiled = clause.compile(dialect=connection.dialect)
            return table, compiled.string, tuple(sorted(compiled.params.items()))

        compiled = kept(("estimate key", base, where), build)
        key = (compiled, tuple(sorted((k, type(v), v) for k, v in values.items())))
        try:
            hash(key)
        except TypeError:  # a value that cannot be a key (a list): not kept
            return None
        return key

    def filter_statement(self, values: Mapping[str, Any]) -> sa.Select[Any]:
        """``SELECT 1 FROM <the statement's tables> WHERE <filters>``: what the row estimate
        is about."""
        counted: sa.Select[Any] = self.base.with_only_columns(
            sa.literal_column("1"), maintain_column_froms=True
        )
        if self.where is not None:
            counted = counted.where(self.where)
        return counted.params(dict(values)) if values else counted

    def run(
        self,
        bind: Bind,
        query: Any,
        embedder: TextEmbedder | None,
        values: Mapping[str, Any],
    ) -> SearchResult:
        """The hits for ``query`` with the filter's parameters set to ``values``."""
        started = time.perf_counter()
        connection = connection_of(bind)
        parameters = {**values, QUERY_VECTOR: query_vector(self.target, query, embedder)}
        # A text: the first statement also checks the model the column holds now (an
        # activation may have switched it), see model_agrees.
        model = embedder if isinstance(query, str) and has_registry(connection) else None
        if model is not None:
            parameters.update(query_model_values(model))
        plan = choose_plan(connection, self, values)
        rows = self._rows(bind, connection, plan.path, plan.first_settings, parameters, model)
        if plan.plain_first and len(rows) < self.k:
            shortfall = len(rows)
            rows = self._rows(bind, connection, "index", plan.settings, parameters)
            plan = replace(
                plan,
                reason=f"{plan.reason}; the plain scan returned {shortfall} < k rows, ran "
                "the iterative scan",
                plain_first=False,
            )
        if plan.path == "index" and len(rows) < self.k:
            exact = self._rows(bind, connection, "exact", NO_SETTINGS, parameters)
            if len(exact) > len(rows):
                plan = SearchPlan(
                    "exact",
                    f"{plan.reason}; the index returned {len(rows)} < k rows, ran exact",
                    plan.estimated_rows,
                    fell_back_to_exact=True,
                )
                rows = exact
        if plan.path == "index":
            rows.sort(key=lambda row: row[-1])  # relaxed_order scans are nearly sorted
        one_entity = isinstance(bind, Session) and selects_one_entity(self.base)
        if self.chunked:
            from semdb.retrieval.chunked import chunk_hit

            hits: list[Any] = [chunk_hit(row, one_entity) for row in rows]
        else:
            hits = [Hit(row[0] if one_entity else row, float(row[-1])) for row in rows]
        result = SearchResult(hits, plan)
        if OBSERVERS:  # the opt-in query log (semdb.monitor.query_log)
            searched(
                self, connection, parameters[QUERY_VECTOR], result, time.perf_counter() - started
            )
        return result

    def _rows(
        self,
        bind: Bind,
        connection: Connection,
        path: PlanPath,
        settings: Mapping[str, str],
        parameters: dict[str, Any],
        model: TextEmbedder | None = None,
    ) -> list[sa.Row[Any]]:
        statement = self.statement(path)
        if model is not None:
            schema = connection.dialect.default_schema_name or "public"
            statement = kept(
                ("model", statement, schema),
                lambda: statement.where(model_agrees(self.target, schema)),
            )
        rows = run_statement(
            bind, connection, statement, parameters, settings, custom_plan=self.filtered
        )
        if model is not None and len(rows) < self.k:  # the model check's error, if it failed
            check_query_model(connection, self.target, model)
        if self.chunked and len(rows) < self.k and path == "index":
            from semdb.retrieval.chunked import wider_rows

            rows = wider_rows(self, bind, connection, path, settings, parameters)
        return rows


#: Statements by (path, k, column, entity, statement given[, filter object]), and the row
#: estimate keys of filter objects. Building a statement costs about 130 us of Python, a
#: third of a selective search's own time (bench/search.py, 0.5% of 108k rows: semdb.search
#: 0.67x of the hand-written plan without this); a filter used again (built once, as a
#: careful caller does) finds its whole statement, whose SQLAlchemy cache key is then known.
#: A select() is immutable, so searches share them. At most TEMPLATES_KEPT, oldest first out.
_templates: OrderedDict[Any, Any] = OrderedDict()
_templates_lock = threading.Lock()
TEMPLATES_KEPT = 512


def kept(key: Any, build: Callable[[], T]) -> T:
    known: T | None = _templates.get(key)
    if known is None:
        known = build()
        with _templates_lock:
            _templates[key] = known
            while len(_templates) > TEMPLATES_KEPT:
                _templates.popitem(last=False)
    return known


def search(
    bind: Bind,
    column: Any,
    query: Any,
    *,
    k: int = 10,
    where: Any = None,
    statement: sa.Select[Any] | None = None,
    embedder: TextEmbedder | None = None,
    max_distance: float | None = None,
    ef_search: int | None = None,
    plan: PlanRequest = "auto",
    exact_below: int | None = None,
) -> SearchResult:
    """The k rows nearest to ``query`` among those passing ``where``, nearest first.

    ``bind``: a Session or a Connection. ``column``: ``Doc.embedding`` or
    ``docs.c.embedding`` (declared with :func:`semdb.embedding_column`). ``query``: text (with
    ``embedder``) or a vector (a 1-d array or list of floats). ``where``: any SQLAlchemy
    boolean expression; ``statement``: a ``select()`` to extend (entities, joins, extra
    columns). ``max_distance``: drop hits farther than this. ``plan``: ``"auto"`` (see
    :mod:`semdb.retrieval.plan`), ``"index"`` or ``"exact"``. Whenever k rows pass the
    filter, k rows come back.

    Each hit is ``(row, distance)``. ``hit.row`` is the ORM object when the search selects
    one entity (``Doc.embedding`` with no ``statement``, or ``statement=select(Doc)``) on a
    Session; otherwise (a Connection, a table's column, or a statement of several columns)
    it is the SQLAlchemy ``Row``, whose last column is ``distance``. The result's ``plan``
    says which path ran and why.
    """
    knn = KnnSearch.build(
        column,
        k=k,
        where=where,
        statement=statement,
        ef_search=ef_search,
        plan=plan,
        exact_below=exact_below,
    )
    return knn.run(bind, query, embedder, {}).within(_max_distance(max_distance))


def explain_search(
    bind: Bind, column: Any, query: Any, **options: Any
) -> tuple[SearchPlan, dict[str, Any]]:
    """The plan :func:`search` would choose, and PostgreSQL's JSON plan for it (not run).

    Takes :func:`search`'s arguments; ``analyze=True`` runs it under ``EXPLAIN ANALYZE``.
    """
    analyze = bool(options.pop("analyze", False))
    embedder = options.pop("embedder", None)
    options.pop("max_distance", None)
    knn = KnnSearch.build(column, k=options.pop("k", 10), **options)
    connection = connection_of(bind)
    parameters = {QUERY_VECTOR: query_vector(knn.target, query, embedder)}
    plan = choose_plan(connection, knn, {})
    explained = Explain(knn.statement(plan.path), analyze=analyze)
    rows = run_statement(
        connection, connection, explained, parameters, plan.first_settings, custom_plan=True
    )
    return plan, plan_root(rows[0][0])


class PreparedSearch:
    """A search built once and run many times, with another query and other filter values
    each time. The plan is still chosen for each run's values, and the statements are those
    :func:`search` runs.

    Name the filter's values with ``sqlalchemy.bindparam`` and give them to each run:

    >>> nearest = semdb.PreparedSearch(Doc.embedding, k=10, where=Doc.lang == bindparam("lang"))
    >>> hits = nearest(session, "cheap flights", embedder=embedder, lang="en")
    >>> hits = nearest(session, other_vector, lang="fr")

    Values written in the filter (``Doc.year > 2020``) stay as they are; a named parameter
    given a value (``bindparam("lang", "en")``) is that run's default. A PreparedSearch holds
    no connection: one object may serve every thread and session.
    """

    def __init__(
        self,
        column: Any,
        *,
        k: int = 10,
        where: Any = None,
        statement: sa.Select[Any] | None = None,
        max_distance: float | None = None,
        ef_search: int | None = None,
        plan: PlanRequest = "auto",
        exact_below: int | None = None,
    ) -> None:
        self._search = KnnSearch.build(
            column,
            k=k,
            where=where,
            statement=statement,
            ef_search=ef_search,
            plan=plan,
            exact_below=exact_below,
        )
        self.column = column
        self.max_distance = _max_distance(max_distance)
        named: list[sa.BindParameter[Any]] = []
        if self._search.where is not None:
            visitors.traverse(self._search.where, {}, {"bindparam": named.append})
        named = [bind for bind in named if not bind.unique]  # bindparam("lang"), not values
        #: The filter's parameters a run may name (``bindparam("lang")``), and those it must.
        self.parameters = frozenset(bind.key for bind in named)
        if reserved := sorted(self.parameters & {QUERY_VECTOR, *QUERY_MODEL}):
            raise SearchError(
                f"the filter names a parameter {reserved[0]!r}, which semdb uses itself",
                fix="give the filter's parameter another name",
            )
        self.required = frozenset(
            bind.key for bind in named if bind.required and bind.callable is None
        )
        # Both paths built now: a run only binds values.
        self._search.statement("index")
        self._search.statement("exact")

    def __call__(
        self, bind: Bind, query: Any, *, embedder: TextEmbedder | None = None, **values: Any
    ) -> SearchResult:
        """The hits for ``query`` (text with ``embedder``, or a vector) with the filter's
        named parameters set to ``values``."""
        if not (self.parameters.issuperset(values) and self.required.issubset(values)):
            unknown = ", ".join(sorted(values.keys() - self.parameters))
            missing = ", ".join(sorted(self.required - values.keys()))
            problems = [f"has no parameter {unknown}"] if unknown else []
            problems += [f"needs a value for {missing}"] if missing else []
            named = ", ".join(sorted(self.parameters)) or "none"
            raise SearchError(
                f"this search's filter {'; '.join(problems)} (its parameters: {named})",
                fix="name the filter's values with sqlalchemy.bindparam('name') and pass "
                "name=value to each run",
            )
        return self._search.run(bind, query, embedder, values).within(self.max_distance)


def _max_distance(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SearchError(
            f"max_distance must be a number, got {value!r}", fix="pass e.g. max_distance=0.5"
        )
    return float(value)
