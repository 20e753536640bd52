"""Which plan a search runs, decided before it runs, and the settings that make it run.

Two paths, each with its own SQL, so the planner cannot silently swap one for the other:

``index``
    ``ORDER BY col <=> q LIMIT k`` (the operator form, which the HNSW/IVFFlat index serves),
    with ``SET LOCAL`` for this query only: ``hnsw.ef_search`` (at least k),
    ``hnsw.iterative_scan = relaxed_order`` when a filter is present (pgvector 0.8+: the scan
    goes on until k rows pass the filter) and ``enable_sort = off`` so that the planner keeps
    the vector index instead of sorting the rows a btree found. Values equal to pgvector's
    defaults (ef_search 40, no iterative scan) are not sent. The settings travel with the
    query in one round trip (psycopg's pipeline mode, see :func:`planner_settings`). Rows
    come back in nearly sorted order and are re-sorted by distance.
``exact``
    ``ORDER BY cosine_distance(col, q) LIMIT k`` (the function form, which no index serves):
    the rows passing the filter (through any btree the planner likes), every distance
    computed, the true top k.

The choice: no filter -> index. With a filter, the planner's own row estimate for the filter
(``EXPLAIN`` of ``SELECT 1 FROM ... WHERE filter``) is compared with ``exact_below`` rows,
by default :data:`EXACT_BELOW_FACTOR` x sqrt(table rows): an exact search over that many rows
is as fast as the iterative index scan (measured in ``bench/query.py``). Without iterative
scans (pgvector 0.7) a filtered search is always exact: the index would return fewer than k.

A decision is kept for :data:`ESTIMATE_TTL_SECONDS` per database, column, filter (shape and
values) and options, as the estimate it rests on is.

When so many rows pass the filter that a plain HNSW scan (pgvector's defaults) finds k of
them among its ef_search candidates, but for a small chance (:data:`PLAIN_SCAN_SHORTFALL`),
that plain scan runs first: no ``SET LOCAL``, no pipeline, no iterative scan. If it returns
fewer than k rows, the iterative scan runs.

If the index path still returns fewer than k rows (the estimate was far off, or the scan hit
``hnsw.max_scan_tuples``), the search runs again exactly: k rows come back whenever k rows
pass the filter.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine

from semdb.db.preflight import parse_version
from semdb.errors import SearchError
from semdb.orm.columns import VectorColumn
from semdb.search.explain import Explain, plan_root

PlanPath = Literal["index", "exact"]
PlanRequest = Literal["auto", "index", "exact"]

#: Exact search is chosen when the filter passes at most ``EXACT_BELOW_FACTOR * sqrt(N)``
#: rows of a table of N rows. Exact search costs about one distance (and one heap row) per
#: passing row; the iterative index scan visits about k/selectivity graph nodes; the two meet
#: where passing rows ~ sqrt(N). Measured with bench/query.py (MiniLM vectors of debdesc
#: texts, 384-d, HNSW m=16 ef_construction=64, ef_search 40, k=10, 2 CPU cores): the
#: crossover was at ~2,000 passing rows of 26,850 and ~4,100 of 108,696, i.e. 12.2 and
#: 12.4 x sqrt(N).
EXACT_BELOW_FACTOR = 12.3
#: The threshold for a table of 100,000 rows, for reference (about 3,900 rows).
EXACT_BELOW_ROWS = round(EXACT_BELOW_FACTOR * 100_000**0.5)


def exact_below_rows(table_rows: float) -> int:
    """Passing rows at or below which exact search is as fast as the index, for a table."""
    return max(1, round(EXACT_BELOW_FACTOR * math.sqrt(max(table_rows, 1.0))))


#: pgvector's default ``hnsw.ef_search``: the candidates a plain HNSW scan considers.
PGVECTOR_EF_SEARCH = 40

_SAVEPOINT = sql.Identifier("semdb_search")
#: The settings of a statement that sets nothing (shared, read-only).
NO_SETTINGS: Mapping[str, str] = MappingProxyType({})
IDLE = TransactionStatus.IDLE
INERROR = TransactionStatus.INERROR


@dataclass(frozen=True)
class SearchPlan:
    """What a search decided, and why (``result.plan``)."""

    path: PlanPath
    reason: str
    estimated_rows: float | None = None
    #: What the index path sets for the query alone (read-only: plans are shared).
    settings: Mapping[str, str] = field(default_factory=lambda: NO_SETTINGS)
    fell_back_to_exact: bool = False
    #: So many rows pass the filter that a plain index scan (pgvector's defaults: no
    #: ``SET LOCAL``, no iterative scan) finds k of them among its ef_search candidates: it
    #: runs first, and the scan under :attr:`settings` only when it returns fewer than k
    #: rows. In a result's plan, True means that the plain scan gave the k rows.
    plain_first: bool = False

    @property
    def first_settings(self) -> Mapping[str, str]:
        """What the search's first statement runs under: nothing for a plain scan first,
        else :attr:`settings` (empty for exact search)."""
        return NO_SETTINGS if self.plain_first else self.settings


_iterative_scan_support: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def supports_iterative_scan(connection: Connection) -> bool:
    """pgvector 0.8+ in this database (looked up once per engine)."""
    engine = connection.engine
    known = _iterative_scan_support.get(engine)
    if known is None:
        version = connection.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
        known = version is not None and parse_version(str(version)) >= (0, 8, 0)
        _iterative_scan_support[engine] = known
    return known


#: How long a row estimate is reused for the same filter SQL and parameter values. The
#: planner's estimate only changes when the table's statistics do (ANALYZE, autovacuum).
ESTIMATE_TTL_SECONDS = 60.0
_ESTIMATES_KEPT = 4096
_estimates_lock = threading.Lock()


class _Recent:
    """Values kept for :data:`ESTIMATE_TTL_SECONDS`, at most ``size`` of them (the oldest
    go first): the planner's row estimates, table sizes and the plans decided from them."""

    def __init__(self, size: int = _ESTIMATES_KEPT) -> None:
        self._items: OrderedDict[Any, tuple[Any, float]] = OrderedDict()
        self._size = size

    def get(self, key: Any, now: float) -> Any:
        """The value kept for ``key`` if it is recent enough, else None."""
        item = self._items.get(key)  # one dict read: no lock needed
        if item is not None and now - item[1] < ESTIMATE_TTL_SECONDS:
            return item[0]
        return None

    def put(self, key: Any, value: Any, now: float) -> None:
        with _estimates_lock:
            self._items[key] = (value, now)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_estimates = _Recent()


def estimate_rows(
    connection: Connection,
    statement: sa.Select[Any] | Callable[[], sa.Select[Any]],
    *,
    key: tuple[Any, ...] | None = None,
) -> float:
    """The planner's estimate of how many rows ``statement`` returns (not executed).

    Estimates are kept for :data:`ESTIMATE_TTL_SECONDS` per (database, SQL, parameter values),
    so that repeated filters (a tenant, a category) cost no extra round trip. ``key``, when
    given, stands for the statement's SQL and values (cheaper than compiling it); the
    statement may then be a callable that builds it only when the estimate is not known.
    """
    if key is None:
        statement = statement() if callable(statement) else statement
        compiled = statement.compile(dialect=connection.dialect)
        try:
            key = (
                compiled.string,
                tuple(sorted((k, repr(v)) for k, v in compiled.params.items())),
            )
        except Exception:  # a value without a usable repr: no caching
            key = None
    cache_key = None if key is None else (database_token(connection), *key)
    now = time.monotonic()
    if cache_key is not None:
        cached: float | None = _estimates.get(cache_key, now)
        if cached is not None:
            return cached
    query = statement() if callable(statement) else statement
    with custom_plans(connection):
        explained = connection.execute(Explain(query)).scalar()
    rows = float(plan_root(explained)["Plan Rows"])
    if cache_key is not None:
        _estimates.put(cache_key, rows, now)
    return rows


_table_rows = _Recent()


def table_rows(connection: Connection, target: VectorColumn) -> float:
    """The planner's row count of the vector column's table (``pg_class.reltuples``),
    kept for :data:`ESTIMATE_TTL_SECONDS`."""
    key = (database_token(connection), target.table)
    now = time.monotonic()
    cached: float | None = _table_rows.get(key, now)
    if cached is not None:
        return cached
    name = str(connection.dialect.identifier_preparer.format_table(target.table))
    rows = connection.execute(
        sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"), {"name": name}
    ).scalar()
    if rows is None or rows < 0:  # never analysed: ask the planner
        rows = estimate_rows(
            connection, sa.select(sa.literal_column("1")).select_from(target.table)
        )
    _table_rows.put(key, float(rows), now)
    return float(rows)


_databases: weakref.WeakKeyDictionary[Engine, tuple[str, int]] = weakref.WeakKeyDictionary()
_engine_numbers = itertools.count()


def database_token(connection: Connection) -> tuple[str, int]:
    """What stands for the connection's database in cache keys: one token per engine (hashing
    the engine's URL on every search costs more than the rest of the lookup)."""
    engine = connection.engine
    token = _databases.get(engine)
    if token is None:
        with _estimates_lock:  # a number never reused, unlike id(): no stale estimates
            token = _databases.setdefault(engine, ("engine", next(_engine_numbers)))
    return token


@contextmanager
def custom_plans(connection: Connection) -> Iterator[None]:
    """Statements inside are planned for their actual parameter values (no prepared generic
    plan): a generic plan cannot know how selective ``bucket < $1`` is, and picks the wrong
    index. psycopg's prepared statements are turned off on this connection meanwhile."""
    with unprepared(connection.connection.dbapi_connection):
        yield


@contextmanager
def unprepared(driver: Any) -> Iterator[None]:
    """psycopg neither prepares nor tracks the statements sent inside (``prepare_threshold``
    None meanwhile; a driver without one is left alone).

    Besides keeping generic plans away (:func:`custom_plans`), this keeps semdb's savepoint
    commands out of psycopg's bookkeeping: psycopg takes a ``ROLLBACK`` command status (which
    ``ROLLBACK TO SAVEPOINT`` returns) as a sign that its prepared statements may be stale,
    and deallocates all of them, the caller's included, on every search in a transaction.
    """
    threshold = getattr(driver, "prepare_threshold", None)
    if threshold is None:
        yield
        return
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = threshold


def choose_plan(
    connection: Connection,
    target: VectorColumn,
    *,
    k: int,
    filtered: bool,
    filter_statement: Callable[[], sa.Select[Any]],
    filter_key: tuple[Any, ...] | None = None,
    request: PlanRequest = "auto",
    ef_search: int | None = None,
    exact_below: int | None = None,
) -> SearchPlan:
    """Decide the path for one search; see the module documentation.

    Decisions are kept as estimates are (:data:`ESTIMATE_TTL_SECONDS`), by database, column,
    filter (its shape and values, ``filter_key``) and options: a search like an earlier one
    reuses its plan without deciding again.
    """
    if request not in ("auto", "index", "exact"):
        raise SearchError(
            f"plan must be 'auto', 'index' or 'exact', got {request!r}", fix="pass plan='auto'"
        )
    key: tuple[Any, ...] | None = None
    if not filtered or filter_key is not None or request != "auto":
        key = (
            database_token(connection),
            target.column,
            filtered,
            filter_key,
            k,
            request,
            ef_search,
            exact_below,
            supports_iterative_scan(connection),
        )
        now = time.monotonic()
        known: SearchPlan | None = _decisions.get(key, now)
        if known is not None:
            return known
    plan = _decide(
        connection,
        target,
        k=k,
        filtered=filtered,
        filter_statement=filter_statement,
        filter_key=filter_key,
        request=request,
        ef_search=ef_search,
        exact_below=exact_below,
    )
    if key is not None:
        _decisions.put(key, plan, now)
    return plan


_decisions = _Recent()


def _decide(
    connection: Connection,
    target: VectorColumn,
    *,
    k: int,
    filtered: bool,
    filter_statement: Callable[[], sa.Select[Any]],
    filter_key: tuple[Any, ...] | None,
    request: PlanRequest,
    ef_search: int | None,
    exact_below: int | None,
) -> SearchPlan:
    iterative = supports_iterative_scan(connection)
    if target.spec.index is None and request != "index":
        return SearchPlan("exact", f"{target.name} has no vector index declared")
    if request == "exact":
        return SearchPlan("exact", "asked for exact search")
    if request == "index":
        return SearchPlan(
            "index",
            "asked for the index",
            None,
            _settings(target, k, ef_search, filtered, iterative),
        )
    if not filtered:
        return SearchPlan(
            "index", "no filter", None, _settings(target, k, ef_search, False, iterative)
        )
    if not iterative:
        return SearchPlan("exact", "pgvector < 0.8 has no iterative index scan for filters")
    estimated = estimate_rows(connection, filter_statement, key=filter_key)
    if exact_below is None:
        threshold = exact_below_rows(table_rows(connection, target))
    else:
        threshold = exact_below
    if estimated <= threshold:
        return SearchPlan(
            "exact",
            f"about {estimated:.0f} rows pass the filter (<= {threshold}): exact is as fast",
            estimated,
        )
    settings = _settings(target, k, ef_search, True, iterative)
    passing = estimated / max(table_rows(connection, target), 1.0)
    if _plain_scan_finds_k(target, k, ef_search, passing):
        return SearchPlan(
            "index",
            f"about {estimated:.0f} rows pass the filter (> {threshold}, {passing:.0%} of the "
            f"table): a plain index scan finds {k} among its {PGVECTOR_EF_SEARCH} candidates",
            estimated,
            settings,
            plain_first=True,
        )
    return SearchPlan(
        "index",
        f"about {estimated:.0f} rows pass the filter (> {threshold}): iterative index scan",
        estimated,
        settings,
    )


#: The plain scan goes first when the chance that fewer than k of its candidates pass the
#: filter is at most this, were the filter independent of the vectors. A shortfall costs a
#: second scan (about twice the time of that search); the plain scan saves the per-query
#: settings and the iterative scan's bookkeeping (bench/query.py: 0.84x -> 0.9x of plain
#: psycopg at 50%), so it pays while shortfalls stay rare.
PLAIN_SCAN_SHORTFALL = 0.05


def _plain_scan_finds_k(
    target: VectorColumn, k: int, ef_search: int | None, passing: float
) -> bool:
    """Would a plain HNSW scan with pgvector's defaults find k passing rows among its
    ef_search candidates, but for a chance of :data:`PLAIN_SCAN_SHORTFALL`? The count that
    passes is binomial if the filter is independent of the vectors; when it is not (a filter
    on the very topic of the query) and fewer come back, the iterative scan runs next."""
    from semdb.orm.indexes import HNSW

    index = target.spec.index
    if not isinstance(index, HNSW) or _settings(target, k, ef_search, False, False):
        return False  # not HNSW, or an ef_search of its own: the settings are sent anyway
    n, p = PGVECTOR_EF_SEARCH, min(max(passing, 0.0), 1.0)
    shortfall = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n + 1)))
    return shortfall <= PLAIN_SCAN_SHORTFALL


#: pgvector's own defaults: a search whose settings all equal them sends no SET LOCAL (a plain
#: statement, no pipeline); a value set for the whole session then applies to it.
PGVECTOR_DEFAULTS = {
    "hnsw.ef_search": str(PGVECTOR_EF_SEARCH),
    "hnsw.iterative_scan": "off",
    "ivfflat.probes": "1",
    "ivfflat.iterative_scan": "off",
}


def _settings(
    target: VectorColumn, k: int, ef_search: int | None, filtered: bool, iterative: bool
) -> Mapping[str, str]:
    """What the index path sets for this query: only what differs from pgvector's defaults,
    plus ``enable_sort = off`` when a filter could tempt the planner into a btree + sort."""
    try:
        return _index_settings(target.spec.index, k, ef_search, filtered, iterative)
    except TypeError:  # an index declaration that cannot be a cache key
        return _index_settings.__wrapped__(target.spec.index, k, ef_search, filtered, iterative)


@functools.lru_cache(maxsize=1024)
def _index_settings(
    index: Any, k: int, ef_search: int | None, filtered: bool, iterative: bool
) -> Mapping[str, str]:
    from semdb.orm.indexes import HNSW

    wanted: dict[str, str] = {}
    if isinstance(index, HNSW) or index is None:
        ef = ef_search if ef_search is not None else (index.ef_search if index else 40)
        if not 1 <= ef <= 1000:
            raise SearchError(f"ef_search must be from 1 to 1000, got {ef}", fix="pass 40-400")
        wanted["hnsw.ef_search"] = str(min(1000, max(ef, k)))
        if iterative:
            wanted["hnsw.iterative_scan"] = "relaxed_order" if filtered else "off"
    else:
        probes = index.probes if ef_search is None else ef_search
        wanted["ivfflat.probes"] = str(min(probes, index.lists))
        if iterative:
            wanted["ivfflat.iterative_scan"] = "relaxed_order" if filtered else "off"
    settings = {
        name: value for name, value in wanted.items() if PGVECTOR_DEFAULTS.get(name) != value
    }
    if filtered:
        settings["enable_sort"] = "off"
    return MappingProxyType(settings)


@dataclass(frozen=True)
class SettingsCommands:
    """The commands that run one statement under planner settings, encoded once per settings
    and mode (:func:`settings_commands`).

    They are sent with the statement, followed by a single Sync, in one round trip (pipeline
    mode): the ``opening`` commands (a savepoint, inside a transaction), the ``assignments``
    (``set_config(name, value, true)``, that is ``SET LOCAL``), the statement itself, and the
    ``closing`` commands (back to the savepoint, which restores the previous values). Without
    a transaction (autocommit), the commands up to the Sync form one implicit transaction,
    which ends with them and takes the settings along: no savepoint, no BEGIN/COMMIT.
    ``recover`` is run after a failure inside a caller's transaction, which it keeps usable.
    """

    opening: tuple[bytes, ...]
    assignments: bytes
    closing: tuple[bytes, ...]
    recover: bytes | None


def settings_commands(settings: Mapping[str, str], in_transaction: bool) -> SettingsCommands:
    """The :class:`SettingsCommands` for ``settings``, inside a transaction or not."""
    return _settings_commands(tuple(settings.items()), in_transaction)


@functools.lru_cache(maxsize=256)
def _settings_commands(
    settings: tuple[tuple[str, str], ...], in_transaction: bool
) -> SettingsCommands:
    assignments = sql.SQL("SELECT {}").format(
        sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
            for name, value in settings
        )
    )
    if not in_transaction:
        return SettingsCommands((), assignments.as_bytes(None), (), None)
    return SettingsCommands(
        opening=(sql.SQL("SAVEPOINT {}").format(_SAVEPOINT).as_bytes(None),),
        assignments=assignments.as_bytes(None),
        closing=(
            sql.SQL("ROLLBACK TO SAVEPOINT {}").format(_SAVEPOINT).as_bytes(None),
            sql.SQL("RELEASE SAVEPOINT {}").format(_SAVEPOINT).as_bytes(None),
        ),
        recover=sql.SQL("ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}")
        .format(_SAVEPOINT)
        .as_bytes(None),
    )


class _SettingsCursor(psycopg.Cursor[Any]):
    """A psycopg cursor that runs each statement under planner settings, in one round trip
    (psycopg's pipeline mode; see :class:`SettingsCommands`): the cursor of searches that
    run through SQLAlchemy (:func:`planner_settings`). Core searches on the driver send the
    same commands with libpq's own pipeline (:mod:`semdb.search.libpq`).

    The ``set_config`` statement runs as a server-side prepared statement when the connection
    allows them (psycopg's ``prepare_threshold`` is not None; PgBouncer users turn it off):
    the server then neither parses nor plans it again. ``custom``: the statement itself is
    never prepared, so that it is planned for its actual values (see :func:`custom_plans`).
    """

    def __init__(
        self,
        connection: psycopg.Connection[Any],
        *,
        commands: SettingsCommands,
        custom: bool,
        **options: Any,
    ) -> None:
        super().__init__(connection, **options)
        self.commands = commands
        self.custom = custom

    def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> _SettingsCursor:
        connection = self._conn
        commands = self.commands
        threshold = connection.prepare_threshold
        try:
            with connection.pipeline():
                command = psycopg.Cursor(connection)
                if commands.opening:
                    with unprepared(connection):
                        for opening in commands.opening:
                            command.execute(opening, prepare=False)
                command.execute(commands.assignments, prepare=threshold is not None)
                super().execute(
                    query, params, prepare=False if self.custom else prepare, binary=binary
                )
                if commands.closing:
                    with unprepared(connection):
                        for closing in commands.closing:
                            command.execute(closing, prepare=False)
        except psycopg.Error:
            if commands.recover is not None and connection.info.transaction_status == INERROR:
                try:  # back to the savepoint: the caller's transaction stays usable
                    with unprepared(connection):
                        psycopg.Cursor(connection).execute(commands.recover, prepare=False)
                except psycopg.Error:  # no savepoint (it failed itself): report the first error
                    pass
            raise
        return self


@contextmanager
def planner_settings(
    connection: Connection, settings: Mapping[str, str], *, custom: bool = True
) -> Iterator[None]:
    """Apply ``settings`` to the statements inside, and to nothing after them.

    Each statement executed inside runs in one round trip with its settings (see
    :class:`_SettingsCursor`): inside the caller's transaction, a savepoint is taken, the
    settings set with ``set_config(..., is_local => true)`` (``SET LOCAL``), the statement run,
    and the savepoint rolled back to and released, which restores the previous values exactly
    and keeps the caller's transaction usable if the search fails. In autocommit mode the
    commands form one implicit transaction that ends with them.

    ``custom``: plan the statements for their actual values (see :func:`custom_plans`).
    """
    if not settings:
        if not custom:
            yield
            return
        with custom_plans(connection):
            yield
        return
    driver = cast(psycopg.Connection[Any], connection.connection.dbapi_connection)
    autocommit = bool(getattr(driver, "autocommit", False))
    if not autocommit and not connection.in_transaction():
        connection.begin()
    in_transaction = not autocommit or driver.info.transaction_status != IDLE
    previous = driver.cursor_factory
    driver.cursor_factory = cast(
        Any,
        functools.partial(
            _SettingsCursor,
            commands=settings_commands(settings, in_transaction),
            custom=custom,
        ),
    )
    try:
        yield
    finally:
        driver.cursor_factory = previous
