"""Nearest-neighbour search with any SQLAlchemy filter, joins included: k rows back.

>>> hits = semdb.search(session, Doc.embedding, "cheap flights", embedder=embedder, k=10,
...                     where=Doc.lang == "en")
>>> [(hit.row.title, hit.distance) for hit in hits], hits.plan.path
>>> semdb.search(connection, docs.c.embedding, vector, k=5)            # Core: rows are Rows
>>> semdb.search(session, Doc.embedding, vector, k=5,
...              statement=select(Doc, Author.name).join(Doc.author),
...              where=Author.country == "FR")                         # joins
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from semdb.errors import SearchError
from semdb.orm.columns import VectorColumn, vector_column
from semdb.orm.types import FloatArray
from semdb.protocols import TextEmbedder
from semdb.search.explain import Explain, plan_root
from semdb.search.plan import PlanPath, PlanRequest, SearchPlan, choose_plan, planner_settings
from semdb.search.query import query_vector
from semdb.search.results import Hit, SearchResult
from semdb.sync.registry import check_query_model

MAX_K = 10000
Bind = Session | Connection


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
    raise SearchError(
        f"search runs on a Session or a Connection, got {type(bind).__name__}",
        fix="pass session, or engine.connect() as connection",
    )


def execute_search(
    bind: Bind, connection: Connection, statement: sa.Executable, settings: dict[str, str]
) -> list[sa.Row[Any]]:
    """Run a search statement under its planner settings.

    The settings live in a savepoint that is rolled back afterwards, so nothing may be written
    inside it: a Session's autoflush is held off (it was flushed when the search began).
    """
    with planner_settings(connection, settings):
        if isinstance(bind, Session):
            with bind.no_autoflush:
                return list(bind.execute(statement).all())
        return list(bind.execute(statement).all())


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise SearchError(f"k must be an integer from 1 to {MAX_K}, got {k!r}", fix="pass k=10")
    return k


class SemanticQuery:
    """One search, prepared: the plan is chosen once, the statement built per path."""

    def __init__(
        self,
        bind: Bind,
        column: Any,
        query: Any,
        *,
        k: int,
        where: Any = None,
        statement: sa.Select[Any] | None = None,
        embedder: TextEmbedder | None = None,
        ef_search: int | None = None,
        plan: PlanRequest = "auto",
        exact_below: int | None = None,
    ) -> None:
        self.bind = bind
        self.target: VectorColumn = vector_column(column)
        self.k = check_k(k)
        self.where = _check_filter(where)
        self.base = _base_statement(self.target, statement)
        self.extended = statement is not None
        self.connection = connection_of(bind)
        if isinstance(query, str) and embedder is not None:
            # The model the column holds now (an activation may have switched it).
            check_query_model(self.connection, self.target, embedder)
        self.vector: FloatArray = query_vector(self.target, query, embedder)
        self.single_entity = _single_entity(self.base)
        self.plan: SearchPlan = choose_plan(
            self.connection,
            self.target,
            k=self.k,
            filtered=self.filtered(),
            filter_statement=self.filter_statement,
            filter_key=self.filter_key(),
            request=plan,
            ef_search=ef_search,
            exact_below=exact_below,
        )

    def filtered(self) -> bool:
        """Does anything but the vector column decide which rows qualify?"""
        if self.where is not None:
            return True
        if not self.extended:
            return False
        # More than one table selected (a join) or a WHERE in the statement given. (A join
        # that selects no column of the other table is not seen: if it drops rows, the
        # index path returns fewer than k and the search runs again exactly.)
        return self.base.whereclause is not None or len(self.base.columns_clause_froms) > 1

    def filter_key(self) -> tuple[Any, ...] | None:
        """What identifies the filter statement, cheaply: the table and the WHERE clause with
        its values written in (None when a statement was given, or a value cannot be written:
        the statement is then compiled to know)."""
        if self.where is None:
            return None
        if self.extended and (
            self.base.whereclause is not None
            or list(self.base.columns_clause_froms) != [self.target.table]
        ):
            return None
        try:
            literal = self.where.compile(
                dialect=self.connection.dialect, compile_kwargs={"literal_binds": True}
            )
        except Exception:
            return None
        return ("filter", self.target.table.fullname, str(literal))

    def filter_statement(self) -> sa.Select[Any]:
        """``SELECT 1 FROM <base froms> WHERE <filters>``: what the row estimate is about."""
        counted: sa.Select[Any] = self.base.with_only_columns(
            sa.literal_column("1"), maintain_column_froms=True
        )
        return counted.where(self.where) if self.where is not None else counted

    def statement(self, path: PlanPath) -> sa.Select[Any]:
        query = self.target.query_value(self.vector, for_index=path == "index")
        if path == "index":
            distance = self.target.index_distance(query)
        else:
            distance = self.target.exact_distance(query)
        statement = self.base.add_columns(distance.label("distance"))
        if self.where is not None:
            statement = statement.where(self.where)
        return statement.order_by(distance).limit(self.k)

    def settings(self, path: PlanPath) -> dict[str, str]:
        return self.plan.settings if path == "index" else {}

    def run(self) -> SearchResult:
        plan = self.plan
        rows = self._execute(plan.path)
        if plan.path == "index" and len(rows) < self.k:
            exact_rows = self._execute("exact")
            if len(exact_rows) > len(rows):
                rows = exact_rows
                plan = SearchPlan(
                    "exact",
                    plan.reason + f"; the index returned {len(rows)} < k rows, ran exact",
                    plan.estimated_rows,
                    {},
                    fell_back_to_exact=True,
                )
        hits = [self._hit(row) for row in rows]
        hits.sort(key=lambda hit: hit.distance)  # relaxed_order scans are nearly sorted
        return SearchResult(hits, plan)

    def explain(self, *, analyze: bool = False) -> dict[str, Any]:
        """The root of the JSON plan of the chosen path, under the same settings."""
        with planner_settings(self.connection, self.settings(self.plan.path)):
            explained = self.connection.execute(
                Explain(self.statement(self.plan.path), analyze=analyze)
            ).scalar()
        return plan_root(explained)

    def _execute(self, path: PlanPath) -> list[sa.Row[Any]]:
        return execute_search(self.bind, self.connection, self.statement(path), self.settings(path))

    def _hit(self, row: sa.Row[Any]) -> Hit:
        distance = float(row[-1])
        return Hit(row[0] if self.single_entity else row, distance)


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

    ``column``: ``Doc.embedding`` or ``docs.c.embedding`` (declared with
    :func:`semdb.embedding_column`). ``query``: text (with ``embedder``) or a vector.
    ``where``: any SQLAlchemy boolean expression; ``statement``: a ``select()`` to extend
    (entities, joins, extra columns). ``max_distance``: drop hits farther than this.
    ``plan``: ``"auto"`` (decided, see :mod:`semdb.search.plan`), ``"index"`` or ``"exact"``.
    Whenever k rows pass the filter, k rows come back.
    """
    prepared = SemanticQuery(
        bind,
        column,
        query,
        k=k,
        where=where,
        statement=statement,
        embedder=embedder,
        ef_search=ef_search,
        plan=plan,
        exact_below=exact_below,
    )
    result = prepared.run()
    if max_distance is not None:
        kept = [hit for hit in result if hit.distance <= float(max_distance)]
        return SearchResult(kept, result.plan)
    return result


def explain_search(
    bind: Bind, column: Any, query: Any, **options: Any
) -> tuple[SearchPlan, dict[str, Any]]:
    """The plan :func:`search` would choose, and PostgreSQL's JSON plan for it (not run).

    Pass ``analyze=True`` to run it under ``EXPLAIN ANALYZE``.
    """
    analyze = bool(options.pop("analyze", False))
    options.pop("max_distance", None)
    prepared = SemanticQuery(bind, column, query, k=options.pop("k", 10), **options)
    return prepared.plan, prepared.explain(analyze=analyze)


def _check_filter(where: Any) -> Any:
    if where is None:
        return None
    if isinstance(where, str):
        raise SearchError(
            "where must be a SQLAlchemy expression, not a string of SQL",
            fix="write the filter with SQLAlchemy, e.g. where=Doc.lang == 'en'",
        )
    try:
        return sa.and_(where)
    except sa.exc.ArgumentError as exc:
        raise SearchError(
            f"where must be a SQLAlchemy boolean expression, got {type(where).__name__}",
            fix="write the filter with SQLAlchemy, e.g. where=Doc.lang == 'en'",
        ) from exc


def _base_statement(target: VectorColumn, statement: sa.Select[Any] | None) -> sa.Select[Any]:
    if statement is None:
        return sa.select(target.entity) if target.entity is not None else sa.select(target.table)
    if not isinstance(statement, sa.Select):
        raise SearchError(
            f"statement must be a select(), got {type(statement).__name__}",
            fix="pass e.g. statement=select(Doc).join(Doc.author)",
        )
    # search orders by distance and limits to k: an ORDER BY or LIMIT given is replaced.
    return statement.order_by(None).limit(None)


def _single_entity(statement: sa.Select[Any]) -> bool:
    descriptions = statement.column_descriptions
    if len(descriptions) != 1:
        return False
    entity = descriptions[0].get("entity")
    return entity is not None and descriptions[0].get("expr") is entity
