"""Which path a search runs, decided before it runs, and the settings that make it run.

No filter: the index (the two paths: :mod:`semdb.retrieval.statement`). A filter: the
planner's row estimate for it (``EXPLAIN`` of ``SELECT 1 FROM ... WHERE filter``) against
``exact_below`` rows, by default :data:`EXACT_BELOW_FACTOR` x sqrt(table rows), where an
exact search is as fast as the iterative index scan (``bench/search.py``). Without iterative
scans (pgvector < 0.8) a filtered search is exact: the index would return fewer than k.

The index path sets, for its statement alone: ``hnsw.ef_search`` (at least k),
``hnsw.iterative_scan = relaxed_order`` under a filter (the scan goes on until k rows pass)
and ``enable_sort = off`` (the planner keeps the index instead of sorting what a btree
found); values equal to pgvector's defaults are not sent. When a plain HNSW scan finds k
passing rows among its 40 candidates but for a small chance (:data:`PLAIN_SCAN_SHORTFALL`),
it runs first, with no settings. An index scan that returns fewer than k rows is followed by
the next way (iterative, then exact): k rows come back whenever k rows pass the filter.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from semdb.db.preflight import parse_version
from semdb.errors import SearchError
from semdb.orm.columns import VectorColumn
from semdb.orm.indexes import HNSW
from semdb.retrieval.explain import Explain, plan_root
from semdb.retrieval.settings import run_statement
from semdb.retrieval.statement import PlanPath

if TYPE_CHECKING:
    from semdb.retrieval.nearest import KnnSearch

PlanRequest = Literal["auto", "index", "exact"]

#: Exact search is chosen when the filter passes at most ``EXACT_BELOW_FACTOR * sqrt(N)``
#: rows of a table of N rows. Exact search costs about one distance (and one heap row) per
#: passing row; the iterative index scan visits about k/selectivity graph nodes; the two meet
#: where passing rows ~ sqrt(N). Measured with bench/query.py (MiniLM vectors of debdesc
#: texts, 384-d, HNSW m=16 ef_construction=64, k=10, 2 CPU cores): the crossover was at
#: ~2,000 passing rows of 26,850 and ~4,100 of 108,696, i.e. 12.2 and 12.4 x sqrt(N).
EXACT_BELOW_FACTOR = 12.3
#: pgvector's default ``hnsw.ef_search``: the candidates a plain HNSW scan considers.
PGVECTOR_EF_SEARCH = 40
#: The plain scan goes first when the chance that fewer than k of its candidates pass the
#: filter is at most this, were the filter independent of the vectors. A shortfall costs a
#: second scan; the plain scan saves the settings' round trips and the iterative scan's
#: bookkeeping, so it pays while shortfalls stay rare.
PLAIN_SCAN_SHORTFALL = 0.05
#: pgvector's own defaults: settings equal to them are not sent.
PGVECTOR_DEFAULTS = {
    "hnsw.ef_search": str(PGVECTOR_EF_SEARCH),
    "hnsw.iterative_scan": "off",
    "ivfflat.probes": "1",
    "ivfflat.iterative_scan": "off",
}
NO_SETTINGS: Mapping[str, str] = MappingProxyType({})


def exact_below_rows(table_rows: float) -> int:
    """Passing rows at or below which exact search is as fast as the index, for a table."""
    return max(1, round(EXACT_BELOW_FACTOR * math.sqrt(max(table_rows, 1.0))))


@dataclass(frozen=True)
class SearchPlan:
    """What a search decided, and why (``result.plan``)."""

    path: PlanPath
    reason: str
    estimated_rows: float | None = None
    #: What the index path sets for its statement alone.
    settings: Mapping[str, str] = field(default_factory=lambda: NO_SETTINGS)
    fell_back_to_exact: bool = False
    #: A plain index scan (no settings) runs first; the scan under :attr:`settings` only if
    #: it returns fewer than k rows. In a result's plan: the plain scan gave the k rows.
    plain_first: bool = False

    @property
    def first_settings(self) -> Mapping[str, str]:
        """What the first statement runs under."""
        return NO_SETTINGS if self.plain_first else self.settings


def choose_plan(
    connection: Connection,
    search: KnnSearch,
    values: Mapping[str, Any],
) -> SearchPlan:
    """Decide the path of ``search`` with its filter's ``values`` (see the module)."""
    target, k, filtered = search.target, search.k, search.filtered
    request, ef_search, exact_below = search.request, search.ef_search, search.exact_below
    if search.chunked:  # the index's candidates: as many as the chunks fetched
        from semdb.retrieval.chunked import candidates_for

        k = candidates_for(k, 0, *search.candidates())
    if request not in ("auto", "index", "exact"):
        raise SearchError(
            f"plan must be 'auto', 'index' or 'exact', got {request!r}", fix="pass plan='auto'"
        )
    if exact_below is not None and (
        not isinstance(exact_below, int) or isinstance(exact_below, bool) or exact_below < 0
    ):
        raise SearchError(
            f"exact_below must be a non-negative integer, got {exact_below!r}",
            fix="leave it out (the default grows with the table)",
        )
    if target.spec.index is None and request != "index":
        return SearchPlan("exact", f"{target.name} has no vector index declared")
    if request == "exact":
        return SearchPlan("exact", "asked for exact search")
    iterative = supports_iterative_scan(connection)
    settings = index_settings(target, k, ef_search, filtered=filtered, iterative=iterative)
    if request == "index":
        return SearchPlan("index", "asked for the index", None, settings)
    if not filtered:
        return SearchPlan("index", "no filter", None, settings)
    if not iterative:
        return SearchPlan("exact", "pgvector < 0.8 has no iterative index scan for filters")
    estimated = estimate_rows(
        connection,
        lambda: search.filter_statement(values),
        key=search.estimate_key(connection, values),
    )
    rows = table_rows(connection, target)
    threshold = exact_below_rows(rows) if exact_below is None else exact_below
    if estimated <= threshold:
        return SearchPlan(
            "exact",
            f"about {estimated:.0f} rows pass the filter (<= {threshold}): exact is as fast",
            estimated,
        )
    passing = estimated / max(rows, 1.0)
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


def _plain_scan_finds_k(
    target: VectorColumn, k: int, ef_search: int | None, passing: float
) -> bool:
    """Would a plain HNSW scan with pgvector's defaults find k passing rows among its
    candidates, but for a chance of :data:`PLAIN_SCAN_SHORTFALL`? (The count that passes is
    binomial if the filter is independent of the vectors.)"""
    if not isinstance(target.spec.index, HNSW):
        return False
    if index_settings(target, k, ef_search, filtered=False, iterative=False):
        return False  # an ef_search of its own: settings are sent anyway
    n, p = PGVECTOR_EF_SEARCH, min(max(passing, 0.0), 1.0)
    shortfall = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n + 1)))
    return shortfall <= PLAIN_SCAN_SHORTFALL


def index_settings(
    target: VectorColumn, k: int, ef_search: int | None, *, filtered: bool, iterative: bool
) -> Mapping[str, str]:
    """What the index path sets for its statement: what differs from pgvector's defaults,
    plus ``enable_sort = off`` when a filter could tempt the planner into a btree + sort."""
    index = target.spec.index
    wanted: dict[str, str] = {}
    if ef_search is not None and (
        not isinstance(ef_search, int) or isinstance(ef_search, bool) or not 1 <= ef_search <= 1000
    ):
        raise SearchError(f"ef_search must be from 1 to 1000, got {ef_search!r}", fix="pass 40-400")
    if isinstance(index, HNSW) or index is None:
        ef = ef_search if ef_search is not None else (index.ef_search if index else 40)
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


# -- what the database says, kept for a while ------------------------------------------------

#: How long a row estimate (and a table's row count) is reused. The planner's estimate only
#: changes when the table's statistics do (ANALYZE, autovacuum); asking again costs a round
#: trip and a planning (about 0.3 ms, as much as a selective search itself).
ESTIMATE_TTL_SECONDS = 60.0
#: At most this many estimates are kept per engine (the oldest go first): a bound on memory
#: for applications whose filters take many values.
ESTIMATES_KEPT = 4096


class _Known:
    """What searches learned of one engine's database: pgvector's version, row estimates."""

    def __init__(self) -> None:
        self.iterative: bool | None = None
        self.estimates: OrderedDict[Any, tuple[float, float]] = OrderedDict()
        self.lock = threading.Lock()


_known: weakref.WeakKeyDictionary[Engine, _Known] = weakref.WeakKeyDictionary()


def _known_of(connection: Connection) -> _Known:
    known = _known.get(connection.engine)
    return _known.setdefault(connection.engine, _Known()) if known is None else known


def supports_iterative_scan(connection: Connection) -> bool:
    """pgvector 0.8+ in this database (looked up once per engine)."""
    known = _known_of(connection)
    if known.iterative is None:
        version = connection.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
        known.iterative = version is not None and parse_version(str(version)) >= (0, 8, 0)
    return known.iterative


def estimate_rows(
    connection: Connection, statement: Callable[[], sa.Select[Any]], *, key: Any
) -> float:
    """The planner's estimate of how many rows ``statement()`` returns (not executed).

    Kept per engine and ``key`` (None: not kept). An error (a filter on a column the table
    lacks) is raised as a :class:`SearchError` naming the filter; the caller's transaction
    stays usable (a savepoint).
    """
    known = _known_of(connection)
    item = None if key is None else known.estimates.get(key)
    if item is not None and time.monotonic() - item[1] < ESTIMATE_TTL_SECONDS:
        return item[0]
    query = statement()
    try:
        explained = run_statement(
            connection,
            connection,
            Explain(query),
            None,
            NO_SETTINGS,
            custom_plan=True,
            protect=True,
        )[0][0]
    except sa.exc.DBAPIError as exc:
        cause = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise SearchError(
            f"the search's filter cannot run: {cause} (filter: {_describe(query)})",
            fix="check the filter: its columns and tables must exist in the database (a "
            "migration not applied?) and its values must suit their columns",
        ) from exc
    rows = float(plan_root(explained)["Plan Rows"])
    if key is not None:
        with known.lock:
            known.estimates[key] = (rows, time.monotonic())
            known.estimates.move_to_end(key)
            while len(known.estimates) > ESTIMATES_KEPT:
                known.estimates.popitem(last=False)
    return rows


def _describe(statement: sa.Select[Any]) -> str:
    where = statement.whereclause
    text = str(where) if where is not None else str(statement)
    return " ".join(text.split())[:300]


def table_rows(connection: Connection, target: VectorColumn) -> float:
    """The planner's row count of the vector column's table, kept as estimates are."""
    table = target.table
    return estimate_rows(
        connection,
        lambda: sa.select(sa.literal_column("1")).select_from(table),
        key=("table", table),
    )
