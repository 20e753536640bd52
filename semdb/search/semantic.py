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

A search is a :class:`SearchSpec` (what it is, but for its values: worked out per call by
:func:`search`, once by :class:`PreparedSearch`) run as a :class:`SemanticQuery` (one query
vector and filter values: plan chosen, statement of the path run, hits made). Statements are
built once per shape and kept; Core ones run on the driver itself (:mod:`.direct`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.exc import UnmappedColumnError

from semdb.errors import SearchError
from semdb.orm.columns import VectorColumn, vector_column
from semdb.orm.types import FloatArray
from semdb.protocols import TextEmbedder
from semdb.search.direct import (
    UNKNOWN,
    DirectStatement,
    direct_driver,
    known_direct,
    remember_direct,
)
from semdb.search.explain import Explain, plan_root
from semdb.search.plan import (
    ESTIMATE_TTL_SECONDS,
    NO_SETTINGS,
    PlanPath,
    PlanRequest,
    SearchPlan,
    choose_plan,
    database_token,
    planner_settings,
)
from semdb.search.query import finite, query_vector, wire_vector
from semdb.search.results import Hit, SearchResult
from semdb.sync.registry import check_query_model

MAX_K = 10000
_FLOAT32 = np.dtype(np.float32)
_FIRST, _LAST, _DISTANCE = itemgetter(0), itemgetter(-1), itemgetter(1)
#: The name of the query vector's bound parameter in search statements.
QUERY_VECTOR = "semdb_query_vector"
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
    bind: Bind,
    connection: Connection,
    statement: sa.Executable,
    settings: Mapping[str, str],
    parameters: dict[str, Any] | None = None,
    *,
    filtered: bool = True,
) -> list[sa.Row[Any]]:
    """Run a search statement under its planner settings.

    The settings live in a savepoint that is rolled back afterwards, so nothing may be written
    inside it: a Session's autoflush is held off (it was flushed when the search began).
    A ``filtered`` statement is planned for its actual values (no prepared generic plan); an
    unfiltered one may run as a server-side prepared statement (psycopg prepares a statement
    run often): its only value is the query vector, which no plan choice depends on.
    """
    with planner_settings(connection, settings, custom=filtered):
        if isinstance(bind, Session):
            with bind.no_autoflush:
                return list(bind.execute(statement, parameters).all())
        return list(bind.execute(statement, parameters).all())


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise SearchError(f"k must be an integer from 1 to {MAX_K}, got {k!r}", fix="pass k=10")
    return k


@dataclass(slots=True)
class SearchSpec:
    """What a search is, but for its query vector and its filter's values: the column, k, the
    statement it extends and its shape, the filter and its shape, the options. Worked out on
    every :func:`search` call, once for a :class:`PreparedSearch`."""

    target: VectorColumn
    k: int
    where: Any
    #: SQLAlchemy's cache key of the filter: its bound parameters (``names``, in this order)
    #: and a small number standing for its shape (None: the filter cannot be cached).
    where_cache_key: Any
    where_token: int | None
    names: tuple[str, ...]
    base: sa.Select[Any]
    base_key: Any  # what identifies the statement extended (None: it holds values)
    shape: _Shape
    extended: bool  # a statement was given
    request: PlanRequest
    ef_search: int | None
    exact_below: int | None
    #: What identifies the search but for its values, the query vector and the database
    #: (None: its statement or filter cannot be cached).
    shape_key: tuple[Any, ...] | None = None
    #: A PreparedSearch's statements and direct statements, by path (and dialect), found
    #: without a lookup in the shared caches (None: a one-off search's spec).
    kept: dict[Any, Any] | None = None

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
    ) -> SearchSpec:
        target: VectorColumn = vector_column(column)
        check_k(k)
        where = _check_filter(where)
        cache_key = where._generate_cache_key() if where is not None else None
        base, base_key = _base_statement(target, statement)
        shape_key = None if base_key is None else (target.column, target.entity, base_key)
        where_token = None if cache_key is None else _token(cache_key.key)
        return cls(
            target=target,
            k=k,
            where=where,
            where_cache_key=cache_key,
            where_token=where_token,
            names=() if cache_key is None else tuple(b.key for b in cache_key.bindparams),
            base=base,
            base_key=base_key,
            shape=_shape_of(base, shape_key),
            extended=statement is not None,
            request=plan,
            ef_search=ef_search,
            exact_below=exact_below,
            shape_key=None
            if shape_key is None or (where is not None and where_token is None)
            else (*shape_key, where_token, k, plan, ef_search, exact_below),
        )

    @property
    def filtered(self) -> bool:
        """Does anything but the vector column decide which rows qualify?"""
        if self.where is not None:
            return True
        if not self.extended:
            return False
        # More than one table selected (a join) or a WHERE in the statement given. (A join
        # that selects no column of the other table is not seen: if it drops rows, the
        # index path returns fewer than k and the search runs again exactly.)
        return self.shape.has_where or len(self.shape.froms) > 1

    def own_values(self) -> list[Any]:
        """The values the filter carries, in the order of :attr:`names`."""
        if self.where_cache_key is None:
            return []
        return [bind.effective_value for bind in self.where_cache_key.bindparams]


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
        spec = SearchSpec.build(
            column,
            k=k,
            where=where,
            statement=statement,
            ef_search=ef_search,
            plan=plan,
            exact_below=exact_below,
        )
        self._begin(bind, spec, query, embedder, spec.own_values(), own=True)

    @classmethod
    def of_spec(
        cls,
        bind: Bind,
        spec: SearchSpec,
        query: Any,
        embedder: TextEmbedder | None,
        values: list[Any],
        *,
        own: bool = False,
    ) -> SemanticQuery:
        """A search of ``spec``, with the filter's ``values`` (in the order of ``spec.names``;
        ``own``: those the filter carries) in place of those it was built with."""
        semantic = cls.__new__(cls)
        semantic._begin(bind, spec, query, embedder, values, own=own)
        return semantic

    def _begin(
        self,
        bind: Bind,
        spec: SearchSpec,
        query: Any,
        embedder: TextEmbedder | None,
        values: list[Any],
        *,
        own: bool,
    ) -> None:
        self.bind = bind
        self.spec = spec
        self.target = spec.target
        self.k = spec.k
        self.where = spec.where
        self.base, self.base_key = spec.base, spec.base_key
        self.extended = spec.extended
        self.shape = spec.shape
        # select(Entity) gives objects through a Session; a Connection returns its columns.
        self.single_entity = spec.shape.single_entity and isinstance(bind, Session)
        #: The filter's values, in the order of ``spec.names`` (``own``: those it carries).
        self._where_values = values
        self._own_values = own
        self.connection = connection_of(bind)
        if isinstance(query, str) and embedder is not None:
            # The model the column holds now (an activation may have switched it).
            check_query_model(self.connection, self.target, embedder)
        self.vector: FloatArray = query_vector(self.target, query, embedder)
        self._filter_values: dict[str, Any] = {}
        #: What identifies the statement :meth:`statement` returned, with its values left to
        #: :meth:`parameters` (None: it holds values of its own).
        self._statement_key: tuple[Any, ...] | None = None
        self._wire: Any = self.vector  # encoded by statement(), for its path
        self.is_filtered = filtered = spec.filtered
        self.plan: SearchPlan = choose_plan(
            self.connection,
            self.target,
            k=self.k,
            filtered=filtered,
            filter_statement=self.filter_statement,
            filter_key=self.filter_key() if filtered and spec.request == "auto" else None,
            request=spec.request,
            ef_search=spec.ef_search,
            exact_below=spec.exact_below,
        )

    def filter_key(self) -> tuple[Any, ...] | None:
        """What identifies the filter statement, cheaply: the table, the WHERE clause's
        shape and its values (None when a statement was given, or a value cannot be used as
        a key: the statement is then compiled to know)."""
        if self.where is None or self.spec.where_token is None:
            return None
        if self.extended and (self.shape.has_where or self.shape.froms != (self.target.table,)):
            return None
        values = _key_values(self._where_values)
        if values is None:
            return None
        return ("filter", self.target.table, self.spec.where_token, values)

    def filter_statement(self) -> sa.Select[Any]:
        """``SELECT 1 FROM <base froms> WHERE <filters>``: what the row estimate is about."""
        counted: sa.Select[Any] = self.base.with_only_columns(
            sa.literal_column("1"), maintain_column_froms=True
        )
        if self.where is None:
            return counted
        counted = counted.where(self.where)
        if self._own_values:
            return counted
        return counted.params(dict(zip(self.spec.names, self._where_values, strict=True)))

    def statement(self, path: PlanPath) -> sa.Select[Any]:
        """The search statement for ``path``; :meth:`parameters` gives the values to bind.

        Built once per statement shape, path and k (the query vector bound at execution, as
        :data:`QUERY_VECTOR`), and once more per filter shape: a filter of a shape seen
        before (the same SQLAlchemy cache key) reuses that statement with its values bound
        at execution, so SQLAlchemy finds its compiled form without walking the statement.
        """
        self._wire = wire_vector(self.vector, _query_storage(self.target, path), self.target)
        kept = self.spec.kept
        known_here = kept.get(path) if kept is not None else None
        if known_here is not None:  # a PreparedSearch's own statement for this path
            kept_statement: sa.Select[Any] = known_here[0]
            self._statement_key = known_here[2]
            self._filter_values = dict(zip(known_here[1], self._where_values, strict=True))
            return kept_statement
        statement = self._build_statement(path)
        if kept is not None and self._statement_key is not None:
            kept[path] = (statement, tuple(self._filter_values), self._statement_key)
        return statement

    def _build_statement(self, path: PlanPath) -> sa.Select[Any]:
        self._filter_values = {}
        self._statement_key = None
        key = (self.target.column, self.target.entity, self.base_key, path, self.k)
        template: sa.Select[Any] | None = _templates.get(key) if self.base_key is not None else None
        if template is None:
            vector_type = self.target.query_value(None, for_index=path == "index").type
            query = sa.bindparam(QUERY_VECTOR, type_=vector_type)
            if path == "index":
                distance = self.target.index_distance(query)
            else:
                distance = self.target.exact_distance(query)
            # k written into the SQL (a checked integer): the planner knows it even in a
            # prepared statement's generic plan.
            limit = sa.literal_column(str(int(self.k)), sa.Integer)
            template = (
                self.base.add_columns(distance.label("distance")).order_by(distance).limit(limit)
            )
            if self.base_key is not None:
                _remember(key, template)
        if self.where is None:
            if self.base_key is not None:
                self._statement_key = key
            return template
        where_token = self.spec.where_token if self.base_key is not None else None
        if where_token is None:
            return self._with_values(template.where(self.where))
        full_key = (*key, where_token)
        known = _templates.get(full_key)
        if known is not None:
            statement: sa.Select[Any] = known[0]
            names: tuple[str, ...] = known[1]
            self._filter_values = dict(zip(names, self._where_values, strict=True))
            self._statement_key = full_key
            return statement
        statement = template.where(self.where)
        names = self.spec.names
        if len(set(names)) == len(names) and QUERY_VECTOR not in names:
            _remember(full_key, (statement, names))
            self._filter_values = dict(zip(names, self._where_values, strict=True))
            self._statement_key = full_key
            return statement
        return self._with_values(statement)

    def _with_values(self, statement: sa.Select[Any]) -> sa.Select[Any]:
        """``statement`` with the filter's values of this search written into it."""
        if self._own_values:
            return statement
        return statement.params(dict(zip(self.spec.names, self._where_values, strict=True)))

    def parameters(self) -> dict[str, Any]:
        """The values :meth:`statement` leaves to bind: the query vector, and the filter's
        values when the statement was built for an earlier filter of the same shape."""
        return {**self._filter_values, QUERY_VECTOR: self._wire}

    def settings(self, path: PlanPath) -> Mapping[str, str]:
        return self.plan.settings if path == "index" else NO_SETTINGS

    def run(self) -> SearchResult:
        plan = self.plan
        rows = self._execute(plan.path, plan.first_settings)
        if plan.plain_first and len(rows) < self.k:
            shortfall = len(rows)
            rows = self._execute("index", plan.settings)
            plan = SearchPlan(
                "index",
                plan.reason + f"; the plain scan returned {shortfall} < k rows, ran the "
                "iterative scan",
                plan.estimated_rows,
                plan.settings,
            )
        if plan.path == "index" and len(rows) < self.k:
            exact_rows = self._execute("exact", NO_SETTINGS)
            if len(exact_rows) > len(rows):
                shortfall, rows = len(rows), exact_rows
                plan = SearchPlan(
                    "exact",
                    plan.reason + f"; the index returned {shortfall} < k rows, ran exact",
                    plan.estimated_rows,
                    {},
                    fell_back_to_exact=True,
                )
        found = map(_FIRST, rows) if self.single_entity else rows
        return SearchResult(_hits(found, rows, plan.path), plan)

    def explain(self, *, analyze: bool = False) -> dict[str, Any]:
        """The root of the JSON plan of the chosen path, under the same settings (those of
        the plain scan when it runs first)."""
        with planner_settings(self.connection, self.plan.first_settings):
            explained = self.connection.execute(
                Explain(self.statement(self.plan.path), analyze=analyze), self.parameters()
            ).scalar()
        return plan_root(explained)

    def _execute(self, path: PlanPath, settings: Mapping[str, str]) -> list[sa.Row[Any]]:
        """The rows of ``path``'s statement under ``settings``: on the psycopg connection
        itself when the search allows it (see :mod:`semdb.search.direct`), else through
        SQLAlchemy."""
        statement = self.statement(path)
        parameters = self.parameters()
        key = self._statement_key
        dialect = self.connection.dialect
        direct = None
        driver = None
        if key is not None and not self.shape.orm and self.bind is self.connection:
            driver = direct_driver(self.connection)
            if driver is not None:
                direct = self._direct_statement(path)
        if isinstance(direct, DirectStatement) and driver is not None:
            return direct.run(self.connection, driver, parameters, settings)
        rows = execute_search(
            self.bind,
            self.connection,
            statement,
            settings,
            parameters,
            filtered=self.is_filtered,
        )
        if direct is UNKNOWN and key is not None:  # the first run of this statement
            remember_direct(key, statement, dialect, parameters, rows)
        return rows

    def _direct_statement(self, path: PlanPath) -> DirectStatement | None | str:
        """The statement :meth:`statement` last returned (for ``path``), as compiled for
        the driver: a PreparedSearch keeps it, a search looks it up (:data:`UNKNOWN`: not
        compiled yet; None: it cannot run on the driver)."""
        key, dialect = self._statement_key, self.connection.dialect
        kept = self.spec.kept
        direct = kept.get((path, dialect), UNKNOWN) if kept is not None else UNKNOWN
        if direct is UNKNOWN and key is not None:
            direct = known_direct(key, dialect)
            if kept is not None and direct is not UNKNOWN:
                kept[(path, dialect)] = direct
        return direct


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
    spec = SearchSpec.build(
        column,
        k=k,
        where=where,
        statement=statement,
        ef_search=ef_search,
        plan=plan,
        exact_below=exact_below,
    )
    values = spec.own_values()
    key = None if spec.shape_key is None else _replay_key(bind, query, values, spec.shape_key)
    return _run(_search_replays, key, bind, spec, query, embedder, values, own=True).within(
        max_distance
    )


def _hits(found: Any, rows: list[sa.Row[Any]], path: PlanPath) -> list[Hit]:
    """The hits of ``rows`` (``found``: what each hit carries), nearest first.

    Built by C-level iteration (map, itemgetter, ``tuple.__new__``): a search makes k hits,
    and a Python call per hit (``Hit._make``) costs as much as the rest of a fast search's
    Python."""
    hits: list[Hit] = list(
        map(tuple.__new__, repeat(Hit), zip(found, map(_LAST, rows), strict=True))
    )
    if path == "index":
        hits.sort(key=_DISTANCE)  # relaxed_order scans are nearly sorted
    return hits


def _replay_key(bind: Bind, query: Any, values: list[Any], *shape: Any) -> tuple[Any, ...] | None:
    """What a replay is kept by: the database, the search's shape and its filter values (None:
    this run cannot be replayed, see :class:`_Replay`)."""
    if type(bind) is not Connection or type(query) is not np.ndarray:
        return None
    values_key = _key_values(values)
    if values_key is None:
        return None
    return (database_token(bind), *shape, values_key)


def _run(
    replays: _Replays,
    key: tuple[Any, ...] | None,
    bind: Bind,
    spec: SearchSpec,
    query: Any,
    embedder: TextEmbedder | None,
    values: list[Any],
    *,
    own: bool,
) -> SearchResult:
    """A search of ``spec``: replayed when ``replays`` holds a run kept by ``key``, else run
    in full (and kept for the next run by that key)."""
    if key is not None:
        replay = replays.get(key)
        if replay is not None:
            replayed = replay.run(cast(Connection, bind), spec, query)
            if replayed is not None:
                return replayed
    semantic = SemanticQuery.of_spec(bind, spec, query, embedder, values, own=own)
    result = semantic.run()
    if key is not None:
        replays.keep(key, semantic, result)
    return result


class PreparedSearch:
    """A search built once and run many times, with another query and other filter values
    each time: what :func:`search` works out from its arguments on every call (the column,
    the statement extended and its shape, the filter's shape, k, the options) is worked out
    here once. The plan is still chosen for each run's values, and the statements are those
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
        self.spec = spec = SearchSpec.build(
            column,
            k=k,
            where=where,
            statement=statement,
            ef_search=ef_search,
            plan=plan,
            exact_below=exact_below,
        )
        spec.kept = {}
        self.max_distance = None if max_distance is None else float(max_distance)
        binds = [] if spec.where_cache_key is None else list(spec.where_cache_key.bindparams)
        #: The filter's parameters a run may name (``bindparam("lang")``), and those it must.
        self.parameters = frozenset(bind.key for bind in binds if not _anonymous(bind))
        self.required = frozenset(
            bind.key
            for bind in binds
            if not _anonymous(bind) and bind.required and bind.callable is None
        )
        self._defaults = spec.own_values()
        self._replays = _Replays(_PREPARED_REPLAYS_KEPT)

    def __call__(
        self, bind: Bind, query: Any, *, embedder: TextEmbedder | None = None, **values: Any
    ) -> SearchResult:
        """The hits for ``query`` (text with ``embedder``, or a vector) with the filter's
        named parameters set to ``values``."""
        if not (self.parameters.issuperset(values) and self.required.issubset(values)):
            unknown = sorted(values.keys() - self.parameters)
            missing = sorted(self.required - values.keys())
            named = ", ".join(sorted(self.parameters)) or "none"
            raise SearchError(
                "this search's filter "
                + (f"has no parameter {', '.join(unknown)}" if unknown else "")
                + ("; " if unknown and missing else "")
                + (f"needs a value for {', '.join(missing)}" if missing else "")
                + f" (its parameters: {named})",
                fix="name the filter's values with sqlalchemy.bindparam('name') and pass "
                "name=value to each run",
            )
        ordered = (
            list(map(values.get, self.spec.names, self._defaults)) if values else self._defaults
        )
        key = _replay_key(bind, query, ordered)
        return _run(
            self._replays, key, bind, self.spec, query, embedder, ordered, own=False
        ).within(self.max_distance)


#: Runs kept for replaying: a PreparedSearch's (per database and filter values), and those of
#: :func:`search` (per database, search shape and filter values).
_PREPARED_REPLAYS_KEPT = 256
_SEARCH_REPLAYS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class _Replay:
    """What a search run on a Connection worked out, kept for the next run of the same search
    with the same filter values on the same database: the plan, the statement as it runs on
    libpq, its settings, and its values but for the query vector's.

    A replay skips everything but the query vector's check and encoding, the driver checks
    (:func:`semdb.search.direct.direct_driver`, on every run), the statement and the hits:
    bench/query.py showed that this per-call Python, run on caches the other clients made
    cold, cost as much as a 0.1% filtered search itself. It is kept
    :data:`~semdb.search.plan.ESTIMATE_TTL_SECONDS` after the full run it comes from, whose
    plan decision was itself at most that old: a plan is decided again within twice that.
    """

    until: float  # time.monotonic() after which the search runs in full again
    plan: SearchPlan
    direct: DirectStatement
    settings: Mapping[str, str]
    #: The statement's values (:meth:`DirectStatement.bind`), the filter's bound, and the
    #: position of the query vector's: the encoded vector goes there as it is (the vector
    #: type's bind processor passes an encoded vector through).
    values: list[Any]
    slot: int
    storage: str  # of the query vector's parameter: vector or halfvec

    def run(self, bind: Connection, spec: SearchSpec, query: np.ndarray) -> SearchResult | None:
        """The hits for ``query``; None when the search must run in full: the vector needs
        converting or is refused, the connection cannot run it on the driver, or fewer than k
        rows came back (the full run then retries or goes exact, as its plan says)."""
        target = spec.target
        if query.dtype is not _FLOAT32 or query.shape != (target.dimension,) or not finite(query):
            return None
        driver = direct_driver(bind)
        if driver is None:
            return None
        values = self.values.copy()
        values[self.slot] = wire_vector(query, self.storage, target)
        rows = self.direct.execute(bind, driver, values, self.settings)
        if len(rows) < spec.k:
            return None
        return SearchResult(_hits(rows, rows, self.plan.path), self.plan)


class _Replays:
    """Runs kept for replaying (see :class:`_Replay`), at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self._kept: dict[tuple[Any, ...], _Replay] = {}
        self._size = size

    def get(self, key: tuple[Any, ...]) -> _Replay | None:
        replay = self._kept.get(key)
        if replay is None or replay.until <= time.monotonic():
            return None
        return replay

    def keep(self, key: tuple[Any, ...], semantic: SemanticQuery, result: SearchResult) -> None:
        """Keep what ``semantic`` worked out, if its plan's first statement ran on the driver
        and gave the k rows."""
        plan = semantic.plan
        if result.plan is not plan or len(result) < semantic.k:
            return
        direct = semantic._direct_statement(plan.path)
        if not isinstance(direct, DirectStatement):
            return
        if len(self._kept) >= self._size:
            self._kept.clear()
        self._kept[key] = _Replay(
            until=time.monotonic() + ESTIMATE_TTL_SECONDS,
            plan=plan,
            direct=direct,
            settings=plan.first_settings,
            values=direct.bind({**semantic._filter_values, QUERY_VECTOR: None}),
            slot=direct.slot(QUERY_VECTOR),
            storage=_query_storage(semantic.target, plan.path),
        )


_search_replays = _Replays(_SEARCH_REPLAYS_KEPT)


def _query_storage(target: VectorColumn, path: PlanPath) -> str:
    """The type the query vector is bound as on ``path``: the index's (a halfvec expression
    index takes a halfvec) or the column's."""
    return target.index_storage() if path == "index" else target.spec.storage


def _anonymous(bind: sa.BindParameter[Any]) -> bool:
    """A parameter SQLAlchemy named itself (a value written in an expression, or a
    ``unique`` one): its key is an anonymous label, ``%(<number> <name>)s``."""
    return bind.key.startswith("%(")


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
    if isinstance(where, sa.ColumnElement):
        return where  # what sa.and_(where) returns for it
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


def _base_statement(
    target: VectorColumn, statement: sa.Select[Any] | None
) -> tuple[sa.Select[Any], Any]:
    """The statement to extend, and what identifies its shape for :data:`_templates` (None
    when it holds values of its own: it is then built for each search)."""
    if statement is None:
        return _default_statement(target), "default"
    if not isinstance(statement, sa.Select):
        raise SearchError(
            f"statement must be a select(), got {type(statement).__name__}",
            fix="pass e.g. statement=select(Doc).join(Doc.author)",
        )
    # search orders by distance and limits to k: an ORDER BY or LIMIT given is replaced.
    if statement._order_by_clauses or statement._limit_clause is not None:
        statement = statement.order_by(None).limit(None)
    cache_key = statement._generate_cache_key()
    if cache_key is None or cache_key.bindparams:
        return statement, None
    return statement, _token(cache_key.key)


def _default_statement(target: VectorColumn) -> sa.Select[Any]:
    """The whole row, but for the stored vector and its content hash: deferred on an ORM
    entity (loaded if read), left out of a table's row. A hit seldom needs them, and a
    vector comes back as text: for 384 dimensions about 7.5 kB to format, send and parse,
    which cost more than the search itself (bench: 0.57 vs 0.08 ms per 10-hit search).

    Built once per column and entity (building it costs about 80 µs, a third of a small
    filtered search); a ``select()`` is immutable, so every search may share it."""
    key = ("default", target.column, target.entity)
    known: sa.Select[Any] | None = _templates.get(key)
    if known is None:
        known = _build_default_statement(target)
        _remember(key, known)
    return known


def _build_default_statement(target: VectorColumn) -> sa.Select[Any]:
    heavy = [target.column, target.hash_column]
    if target.entity is None:
        return sa.select(*[column for column in target.table.c if column not in heavy])
    mapper = sa.inspect(target.entity)
    deferred = []
    for column in heavy:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            continue
        deferred.append(defer(getattr(target.entity, prop.key)))
    return sa.select(target.entity).options(*deferred)


#: The search statements built so far, by (column, entity, statement shape, path, k), and by
#: the same and the filter's shape (with the names of the filter's bound parameters).
_templates: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_TEMPLATES_KEPT = 512
_templates_lock = threading.Lock()


_shapes: dict[tuple[Any, ...], _Shape] = {}

#: Small stand-ins for SQLAlchemy cache keys, which are deep tuples: hashing one costs about a
#: microsecond, and a search looks up several caches with it. Numbers are never reused, so
#: dropping them all (when there are too many) makes no stale match.
_tokens: dict[Any, int] = {}
_TOKENS_KEPT = 4096
_token_numbers = itertools.count()


def _token(cache_key: Any) -> int:
    """The number that stands for ``cache_key`` (a SQLAlchemy cache key's ``key``)."""
    token = _tokens.get(cache_key)
    if token is None:
        with _templates_lock:
            if len(_tokens) >= _TOKENS_KEPT:
                _tokens.clear()
            token = _tokens.setdefault(cache_key, next(_token_numbers))
    return token


def _remember(key: tuple[Any, ...], template: Any) -> None:
    with _templates_lock:
        _templates[key] = template
        while len(_templates) > _TEMPLATES_KEPT:
            _templates.popitem(last=False)


_PLAIN_VALUES = frozenset({int, str, float, bool, type(None)})


def _key_values(values: Any) -> tuple[Any, ...] | None:
    """Filter values as a hashable tuple for a cache key, or None if one cannot be."""
    values = tuple(values)
    types = tuple(map(type, values))
    if _PLAIN_VALUES.issuperset(types):
        # Each with its type: 1 and 1.0 and True are equal keys but not the same filter.
        return tuple(zip(types, values, strict=True))
    out: list[Any] = []
    for value in values:
        if isinstance(value, (list, tuple)):
            nested = _key_values(value)
            if nested is None:
                return None
            out.append((type(value).__name__, nested))
        elif isinstance(value, np.ndarray):
            out.append(("ndarray", value.dtype.str, value.shape, value.tobytes()))
        else:
            try:
                hash(value)
            except TypeError:
                return None
            out.append((type(value).__name__, value))
    return tuple(out)


@dataclass(frozen=True)
class _Shape:
    """What a search needs to know of the statement it extends, found once per shape."""

    single_entity: bool  # select(Entity): hits carry the object itself
    orm: bool  # it selects ORM entities or attributes: SQLAlchemy's ORM runs it
    has_where: bool  # the statement filters rows itself
    froms: tuple[Any, ...]  # the tables (or joins) its columns come from


def _shape_of(statement: sa.Select[Any], shape: Any = None) -> _Shape:
    """The :class:`_Shape` of ``statement``, kept by ``shape`` (None: not kept)."""
    if shape is not None:
        known = _shapes.get(shape)
        if known is None:
            if len(_shapes) > _TEMPLATES_KEPT:
                _shapes.clear()
            known = _shapes[shape] = _shape_of(statement)
        return known
    return _Shape(
        single_entity=_single_entity(statement),
        orm=any(
            description.get("entity") is not None for description in statement.column_descriptions
        ),
        has_where=statement.whereclause is not None,
        froms=tuple(statement.columns_clause_froms),
    )


def _single_entity(statement: sa.Select[Any]) -> bool:
    """Does the statement select one ORM entity (hits then carry the object itself)?"""
    descriptions = statement.column_descriptions
    if len(descriptions) != 1:
        return False
    entity = descriptions[0].get("entity")
    return entity is not None and descriptions[0].get("expr") is entity
