"""Search on a real server: which plan runs (EXPLAIN), k rows back, settings that never leak,
filters, joins, Core, thresholds, more-like-this, hybrid search, hostile input."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import semdb
from semdb.errors import (
    DimensionMismatchError,
    NonFiniteVectorError,
    SearchError,
    VectorTypeError,
    ZeroVectorError,
)
from semdb.orm import HNSW, embedding_column
from semdb.retrieval import explain_search, hybrid_search, more_like_this, search
from semdb.retrieval import plan as plan_module
from semdb.retrieval.explain import plan_nodes
from semdb.sync.registry import register, unregister_statement
from semdb.sync.target import SyncTarget

from .vector_data import clustered_vectors, exact_top_k

N, DIM = 4000, 32
COLORS = ["red", "green", "blue", "amber", "violet", "black", "white"]
SHAPES = ["circle", "square", "triangle", "hexagon", "star"]


class Base(DeclarativeBase):
    pass


class Shop(Base):
    __tablename__ = "search_shops"
    id: Mapped[int] = mapped_column(primary_key=True)
    country: Mapped[str]


class Item(Base):
    __tablename__ = "search_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    shop_id: Mapped[int] = mapped_column(sa.ForeignKey("search_shops.id"))
    c2: Mapped[int] = mapped_column(index=True)
    c10: Mapped[int] = mapped_column(index=True)
    c100: Mapped[int] = mapped_column(index=True)
    c1000: Mapped[int] = mapped_column(index=True)
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body",
        model="tiny",
        dimension=DIM,
        index=HNSW(m=16, ef_construction=64),
        sync="manual",
        fulltext="english",
    )
    shop: Mapped[Shop] = relationship()


VECTORS = clustered_vectors(N, DIM, seed=7)
# Queries near the data, as real queries are (a query far from every row has no clear
# neighbours and says nothing about the index).
_noise = np.random.default_rng(99).normal(scale=0.02, size=(20, DIM))
QUERIES = (VECTORS[np.arange(20) * 97 + 5] + _noise).astype(np.float32)


@pytest.fixture(scope="module")
def items(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Shop), [{"id": s, "country": "FR" if s % 4 == 0 else "DE"} for s in range(40)]
        )
        connection.execute(
            sa.insert(Item),
            [
                {
                    "id": i,
                    "body": f"item {i} {COLORS[i % 7]} {SHAPES[i % 5]}",
                    "shop_id": i % 40,
                    "c2": i % 2,
                    "c10": i % 10,
                    "c100": i % 100,
                    "c1000": i % 1000,
                    "embedding": VECTORS[i],
                }
                for i in range(N)
            ],
        )
        connection.execute(sa.text("ANALYZE search_items"))
        connection.execute(sa.text("ANALYZE search_shops"))
        register(connection, SyncTarget.from_column(Item.embedding))  # for semdb.hybrid_search()
        semdb.install_keyword_stats(connection, Item.embedding)  # its BM25 leg
    yield engine
    with engine.begin() as connection:
        semdb.uninstall_keyword_stats(connection, Item.embedding)
        connection.execute(unregister_statement(SyncTarget.from_column(Item.embedding)))
    Base.metadata.drop_all(engine)


@pytest.fixture(params=["orm", "core"])
def column(request: pytest.FixtureRequest) -> Any:
    """The ORM attribute (SQLAlchemy runs the search, ORM objects come back) or the table's
    column (Core rows, run on the psycopg connection itself from a statement's second run)."""
    return Item.embedding if request.param == "orm" else Item.__table__.c.embedding


def mask(column: str, value: int) -> np.ndarray:
    modulo = {"c2": 2, "c10": 10, "c100": 100, "c1000": 1000}[column]
    return (np.arange(N) % modulo) == value


def uses_vector_index(root: dict) -> bool:
    return any(
        node.get("Index Name") == "ix_search_items_embedding_hnsw" for node in plan_nodes(root)
    )


def test_unfiltered_search_uses_the_index_with_good_recall(items: sa.Engine) -> None:
    recalls = []
    with Session(items) as session:
        for query in QUERIES:
            hits = search(session, Item.embedding, query, k=10)
            assert hits.plan.path == "index" and hits.plan.reason == "no filter"
            assert len(hits) == 10
            assert [h.distance for h in hits] == sorted(h.distance for h in hits)
            truth = set(exact_top_k(VECTORS, query, 10))
            recalls.append(len(truth & {h.row.id for h in hits}) / 10)
        plan, root = explain_search(session, Item.embedding, QUERIES[0], k=10)
    assert uses_vector_index(root)
    assert np.mean(recalls) >= 0.9


def test_filter_passing_many_rows_runs_the_iterative_index_scan(items: sa.Engine) -> None:
    with Session(items) as session:
        for query in QUERIES[:5]:
            hits = search(
                session, Item.embedding, query, k=10, where=Item.c10 == 3, exact_below=100
            )
            assert hits.plan.path == "index" and not hits.plan.plain_first, hits.plan
            assert hits.plan.settings["hnsw.iterative_scan"] == "relaxed_order"
            assert hits.plan.estimated_rows == pytest.approx(400, rel=0.3)
            assert len(hits) == 10 and all(h.row.c10 == 3 for h in hits)
            truth = set(exact_top_k(VECTORS, query, 10, mask("c10", 3)))
            assert len(truth & {h.row.id for h in hits}) >= 8
        _, root = explain_search(
            session, Item.embedding, QUERIES[0], k=10, where=Item.c10 == 3, exact_below=100
        )
    assert uses_vector_index(root)


def test_filter_passing_half_the_rows_runs_a_plain_index_scan_first(items: sa.Engine) -> None:
    """Half the rows pass: 10 of a plain HNSW scan's 40 candidates pass but for a chance of
    0.03%, so the scan runs as plain pgvector runs it (no SET LOCAL, no iterative scan)."""
    with Session(items) as session:
        for query in QUERIES[:5]:
            before = planner_settings_now(session)
            hits = search(session, Item.embedding, query, k=10, where=Item.c2 == 0)
            assert hits.plan.path == "index" and hits.plan.plain_first, hits.plan
            assert "a plain index scan finds 10 among its 40 candidates" in hits.plan.reason
            assert len(hits) == 10 and all(h.row.c2 == 0 for h in hits)
            truth = set(exact_top_k(VECTORS, query, 10, mask("c2", 0)))
            assert len(truth & {h.row.id for h in hits}) >= 8
            assert planner_settings_now(session) == before
        _, root = explain_search(session, Item.embedding, QUERIES[0], k=10, where=Item.c2 == 0)
        assert uses_vector_index(root)
        # Its own ef_search (sent anyway), or a k above 40 candidates: the iterative scan.
        for options in ({"ef_search": 100, "k": 10}, {"k": 41}):
            other = search(session, Item.embedding, QUERIES[0], where=Item.c2 == 0, **options)
            assert other.plan.path == "index" and not other.plan.plain_first, options


def test_a_plain_scan_that_comes_back_short_is_followed_by_the_iterative_scan(
    items: sa.Engine, column: Any
) -> None:
    """The filter passes 95% of the rows but none of the query's 200 nearest: the plain
    scan's candidates all fail it. The iterative scan then finds the k rows."""
    near = exact_top_k(VECTORS, QUERIES[0], 200)
    where = column.table.c.id.not_in(near)
    with items.connect() as connection:
        hits = search(connection, column, QUERIES[0], k=10, where=where)
    assert hits.plan.path == "index" and not hits.plan.plain_first, hits.plan
    assert not hits.plan.fell_back_to_exact
    assert "; the plain scan returned 0 < k rows, ran the iterative scan" in hits.plan.reason
    assert hits.plan.settings["hnsw.iterative_scan"] == "relaxed_order"
    passing = np.ones(N, bool)
    passing[near] = False
    truth = set(exact_top_k(VECTORS, QUERIES[0], 10, passing))
    assert len(hits) == 10 and not {h.row.id for h in hits} & set(near)
    assert len(truth & {h.row.id for h in hits}) >= 8


def test_selective_filter_runs_exact_search_through_the_btree(items: sa.Engine) -> None:
    with Session(items) as session:
        hits = search(
            session, Item.embedding, QUERIES[0], k=3, where=Item.c1000 == 7, exact_below=100
        )
        assert hits.plan.path == "exact" and "rows pass the filter" in hits.plan.reason
        assert [h.row.id for h in hits] == exact_top_k(VECTORS, QUERIES[0], 3, mask("c1000", 7))
        # fewer rows pass than k: all of them come back
        everything = search(session, Item.embedding, QUERIES[0], k=10, where=Item.c1000 == 7)
        assert sorted(h.row.id for h in everything) == [7, 1007, 2007, 3007]
        _, root = explain_search(
            session, Item.embedding, QUERIES[0], k=3, where=Item.c1000 == 7, exact_below=100
        )
    assert not uses_vector_index(root)
    assert any(node.get("Index Name") == "ix_search_items_c1000" for node in plan_nodes(root))


def test_both_paths_agree_on_distances(items: sa.Engine) -> None:
    with Session(items) as session:
        index = search(session, Item.embedding, QUERIES[1], k=5, plan="index")
        exact = search(session, Item.embedding, QUERIES[1], k=5, plan="exact")
    assert index.plan.path == "index" and exact.plan.path == "exact"
    by_id = {h.row.id: h.distance for h in exact}
    for hit in index:
        if hit.row.id in by_id:
            assert hit.distance == pytest.approx(by_id[hit.row.id], abs=1e-5)
    expected = 1 - VECTORS[exact[0].row.id] @ QUERIES[1] / np.linalg.norm(QUERIES[1])
    assert exact[0].distance == pytest.approx(float(expected), abs=1e-5)


def test_filter_matching_few_rows_still_returns_k_through_the_index(items: sa.Engine) -> None:
    """1% of rows pass; the index path is forced: the iterative scan still finds k."""
    with Session(items) as session:
        for value in (3, 42, 77):
            hits = search(
                session, Item.embedding, QUERIES[2], k=10, where=Item.c100 == value, plan="index"
            )
            assert len(hits) == 10 and all(h.row.c100 == value for h in hits)
            assert not hits.plan.fell_back_to_exact


def test_without_iterative_scans_filters_go_exact_and_the_index_falls_back(
    items: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgvector 0.7: no iterative scan. Filtered auto -> exact; a forced index path that
    returns fewer than k rows is re-run exactly."""
    monkeypatch.setattr(plan_module, "supports_iterative_scan", lambda connection: False)
    with Session(items) as session:
        auto = search(session, Item.embedding, QUERIES[3], k=10, where=Item.c10 == 1)
        assert auto.plan.path == "exact" and "pgvector < 0.8" in auto.plan.reason
        assert len(auto) == 10
        forced = search(
            session, Item.embedding, QUERIES[3], k=10, where=Item.c1000 == 5, plan="index"
        )
        assert forced.plan.fell_back_to_exact
        assert sorted(h.row.id for h in forced) == [5, 1005, 2005, 3005]


def planner_settings_now(bind: Session | sa.Connection) -> tuple[str, ...]:
    """The session's hnsw.ef_search, enable_sort and hnsw.iterative_scan, as now set."""
    values = bind.execute(
        sa.text(
            "SELECT current_setting('hnsw.ef_search'), current_setting('enable_sort'), "
            "current_setting('hnsw.iterative_scan')"
        )
    ).one()
    return tuple(values)


def test_settings_are_local_to_the_search_and_the_transaction_survives_errors(
    items: sa.Engine,
) -> None:
    with Session(items) as session:
        session.execute(sa.text("SET hnsw.ef_search = 77"))
        search(
            session,
            Item.embedding,
            QUERIES[0],
            k=10,
            where=Item.c10 == 3,
            exact_below=100,
            ef_search=200,
        )
        assert planner_settings_now(session) == ("77", "on", "off")
        with pytest.raises(sa.exc.DBAPIError):
            search(
                session, Item.embedding, QUERIES[0], k=10, where=(Item.c10 / 0) > 1, plan="index"
            )
        assert session.execute(sa.select(sa.func.count()).select_from(Item)).scalar() == N
        session.execute(sa.text("RESET hnsw.ef_search"))


def test_autocommit_connections_work(items: sa.Engine) -> None:
    with items.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        hits = search(
            connection, Item.embedding, QUERIES[0], k=5, where=Item.c2 == 0, exact_below=10
        )
        assert hits.plan.path == "index" and len(hits) == 5
        assert connection.execute(sa.text("SHOW enable_sort")).scalar() == "on"


def test_a_search_that_begins_its_transaction_runs_in_one_of_its_own(items: sa.Engine) -> None:
    """The first statement of a read-committed transaction: its settings go in a transaction
    of its own (BEGIN; set_config ... COMMIT), no savepoint: as many round trips as a
    hand-written search on a connection whose settings are set once. Nothing is left behind,
    and the caller's transaction goes on (a failing search included)."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    where = Item.c10 == 3
    with items.connect() as connection:
        search(connection, Item.embedding, QUERIES[0], k=10, where=where, exact_below=100)
        connection.rollback()  # the row estimates are known now
        sa.event.listen(connection, "before_cursor_execute", record)
        hits = search(connection, Item.embedding, QUERIES[0], k=10, where=where, exact_below=100)
        assert len(hits) == 10 and hits.plan.settings
        assert [s.split(";")[0].split()[0] for s in statements] == ["BEGIN", "SELECT", "COMMIT"]
        assert planner_settings_now(connection) == ("40", "on", "off")
        connection.rollback()
        with pytest.raises(sa.exc.DBAPIError, match="division by zero"):
            search(connection, Item.embedding, QUERIES[0], where=(Item.c10 / 0) > 1, plan="index")
        assert connection.execute(sa.select(sa.func.count()).select_from(Item)).scalar() == N


def test_a_repeatable_read_transaction_keeps_the_snapshot_of_its_first_search(
    items: sa.Engine,
) -> None:
    """Its search is the first statement: later statements see the rows the search saw (the
    search ran in the caller's transaction, under a savepoint), not a row written since."""
    with items.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
        hits = search(connection, Item.embedding, QUERIES[0], k=5, where=Item.c2 == 0, plan="index")
        assert len(hits) == 5 and hits.plan.settings
        with items.begin() as other:
            other.execute(sa.update(Item).where(Item.id == 0).values(body="changed meanwhile"))
        try:
            seen = connection.execute(sa.select(Item.body).where(Item.id == 0)).scalar()
            assert seen != "changed meanwhile"
        finally:
            connection.rollback()
            with items.begin() as other:
                other.execute(sa.update(Item).where(Item.id == 0).values(body="item 0 red circle"))


@pytest.mark.parametrize("path", ["index", "exact"])
def test_autocommit_search_errors_leave_no_settings_behind(
    items: sa.Engine, column: Any, path: str
) -> None:
    with items.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("SET hnsw.ef_search = 55"))
        for divisor in (1, 0):  # a first search of the shape, then the one that fails
            if divisor == 0:
                failing = pytest.raises(sa.exc.DataError, match="division by zero")
            else:
                failing = contextlib.nullcontext()
            with failing:
                search(
                    connection,
                    column,
                    QUERIES[0],
                    k=10,
                    where=(Item.c10 / divisor) > -1,
                    plan=path,
                    ef_search=300,
                )
        assert planner_settings_now(connection) == ("55", "on", "off")
        hits = search(connection, column, QUERIES[0], k=10, where=Item.c2 == 0, plan="index")
        assert len(hits) == 10
        connection.execute(sa.text("RESET hnsw.ef_search"))


def test_filtered_searches_are_never_prepared(items: sa.Engine, column: Any) -> None:
    """A prepared statement's generic plan cannot see a filter's selectivity: only a search
    whose one value is the query vector is left to psycopg's prepared statements."""
    with items.connect() as connection:
        for query in QUERIES[:8]:
            search(connection, column, query, k=7)
            search(connection, column, query, k=7, where=Item.c1000 == 7)
        prepared = (
            connection.execute(
                sa.text(
                    "SELECT statement FROM pg_prepared_statements WHERE statement LIKE '%LIMIT 7%'"
                )
            )
            .scalars()
            .all()
        )
    assert len(prepared) == 1
    assert not any("WHERE" in statement for statement in prepared)


@pytest.mark.parametrize("filtered", [True, False], ids=["filtered", "unfiltered"])
def test_searches_inside_a_transaction_keep_the_callers_prepared_statements(
    items: sa.Engine, filtered: bool, column: Any
) -> None:
    """A search's settings are scoped by a savepoint, rolled back to afterwards. psycopg
    deallocates all its prepared statements when it sees a ROLLBACK command status, which
    ROLLBACK TO SAVEPOINT returns: that must not happen on the caller's connection."""
    caller = sa.text("SELECT count(*) FROM search_items WHERE c1000 = :value")

    def prepared(connection: sa.Connection) -> list[str]:
        return list(
            connection.execute(sa.text("SELECT statement FROM pg_prepared_statements"))
            .scalars()
            .all()
        )

    with items.connect() as connection:
        for value in range(6):  # psycopg prepares a statement on its fifth run
            connection.execute(caller, {"value": value})
        assert any("c1000 = $1" in statement for statement in prepared(connection))
        for query in QUERIES[:3]:
            hits = search(
                connection,
                column,
                query,
                k=7,
                where=Item.c2 == 0 if filtered else None,
                plan="index",
                ef_search=100,
            )
            assert hits.plan.settings and len(hits) == 7
        statements = prepared(connection)
        assert connection.in_transaction()
    assert any("c1000 = $1" in statement for statement in statements)


@pytest.mark.parametrize("path", ["index", "exact"])
def test_filters_of_one_shape_with_other_values_find_their_own_rows(
    items: sa.Engine, path: str
) -> None:
    """Statements are reused per filter shape with the values bound at execution: each
    search must see its own values, never those of the search that built the statement."""
    with Session(items) as session:
        for value in (3, 4, 3, 9):
            hits = search(
                session, Item.embedding, QUERIES[1], k=5, where=Item.c10 == value, plan=path
            )
            assert len(hits) == 5 and {h.row.c10 for h in hits} == {value}
        for values in ([1, 2], [5, 6, 7], [8]):
            hits = search(
                session, Item.embedding, QUERIES[2], k=6, where=Item.c10.in_(values), plan=path
            )
            assert len(hits) == 6 and {h.row.c10 for h in hits} <= set(values)
        for low, high in ((10, 12), (50, 50)):
            hits = search(
                session,
                Item.embedding,
                QUERIES[3],
                k=4,
                where=sa.and_(Item.c100.between(low, high), Item.body != "x"),
                plan=path,
            )
            assert len(hits) == 4 and all(low <= h.row.c100 <= high for h in hits)
            truth = exact_top_k(
                VECTORS, QUERIES[3], 4, (np.arange(N) % 100 >= low) & (np.arange(N) % 100 <= high)
            )
            if path == "exact":
                assert [h.row.id for h in hits] == truth


def test_row_estimates_tell_filter_values_apart(items: sa.Engine) -> None:
    """Estimates are kept per filter SQL and values: each filter gets its own."""
    with items.connect() as connection:

        def estimated(where: Any) -> float:
            plan, _ = explain_search(connection, Item.embedding, QUERIES[0], k=3, where=where)
            assert plan.estimated_rows is not None
            return plan.estimated_rows

        assert estimated(Item.c10 == 3) == estimated(Item.c10 == 3)
        assert 300 < estimated(Item.c10 == 3) < 500
        assert estimated(Item.c100 == 3) < 100
        assert estimated(Item.c10.in_([1, 2])) > 1.5 * estimated(Item.c10.in_([1]))
        assert estimated(Item.c10 < 2) > 1.5 * estimated(Item.c10 < 1)


def test_core_search_returns_rows_with_distances(items: sa.Engine) -> None:
    table = Item.__table__
    with items.connect() as connection:
        hits = search(connection, table.c.embedding, QUERIES[4], k=4, where=table.c.c2 == 1)
    assert len(hits) == 4
    assert all(h.row.c2 == 1 and h.row.distance == pytest.approx(h.distance) for h in hits)


def test_an_orm_column_searched_on_a_connection_gives_rows(items: sa.Engine) -> None:
    """A Connection runs select(Item) as Core: each hit is the row, not its first column."""
    with items.connect() as connection:
        hits = search(connection, Item.embedding, QUERIES[4], k=3, where=Item.c2 == 1)
    assert all(isinstance(h.row, sa.Row) and h.row.c2 == 1 for h in hits)


def test_joins_and_related_filters(items: sa.Engine) -> None:
    with Session(items) as session:
        joined = search(
            session,
            Item.embedding,
            QUERIES[5],
            k=6,
            statement=sa.select(Item, Shop.country).join(Item.shop),
            where=Shop.country == "FR",
        )
        assert len(joined) == 6 and all(hit.row.country == "FR" for hit in joined)
        assert all(hit.row.Item.shop_id % 4 == 0 for hit in joined)
        related = search(
            session, Item.embedding, QUERIES[5], k=6, where=Item.shop.has(Shop.country == "FR")
        )
        assert [h.row.id for h in related] == [h.row.Item.id for h in joined]


def test_max_distance_keeps_only_close_rows(items: sa.Engine) -> None:
    with Session(items) as session:
        everything = search(session, Item.embedding, VECTORS[10], k=10)
        cutoff = everything[4].distance
        close = search(session, Item.embedding, VECTORS[10], k=10, max_distance=cutoff)
    assert [h.row.id for h in close] == [h.row.id for h in everything][: len(close)]
    assert 5 <= len(close) < 10 and close[0].row.id == 10


def test_more_like_this_leaves_the_row_out(items: sa.Engine) -> None:
    with Session(items) as session:
        item = session.get(Item, 123)
        similar = more_like_this(session, Item.embedding, item, k=5)
        assert len(similar) == 5 and 123 not in {h.row.id for h in similar}
        truth = [i for i in exact_top_k(VECTORS, VECTORS[123], 6) if i != 123][:5]
        assert len(set(truth) & {h.row.id for h in similar}) >= 4
        filtered = more_like_this(session, Item.embedding, 123, k=5, where=Item.c2 == 1)
        assert all(h.row.c2 == 1 and h.row.id != 123 for h in filtered)
        with pytest.raises(SearchError, match="no row"):
            more_like_this(session, Item.embedding, 10**9)


def test_hybrid_search_fuses_both_rankings_in_one_statement(items: sa.Engine) -> None:
    with Session(items) as session:
        # "item 4 violet star" is the only text with all three words, and row 4's vector
        # is the nearest to itself: first in both rankings.
        hits = hybrid_search(session, Item.embedding, "4 violet star", vector=VECTORS[4], k=10)
        words = hybrid_search(session, Item.embedding, "violet or hexagon", vector=VECTORS[4], k=10)
    assert len(hits) == 10
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    top = hits[0]
    assert top.row.id == 4 and top.semantic_rank == 1 and top.keyword_rank == 1
    assert top.score == pytest.approx(2 / 61)  # untuned: RRF, weights 1 and 1, k 60
    assert hits.fusion.method == "rrf" and hits.fusion.source == "default"
    for hit in words:
        if hit.keyword_rank is not None:  # any of the words
            assert "violet" in hit.row.body or "hexagon" in hit.row.body
    assert any(h.keyword_rank is not None and h.semantic_rank is None for h in words)


def test_hybrid_search_with_a_filter(items: sa.Engine) -> None:
    with Session(items) as session:
        hits = hybrid_search(
            session, Item.embedding, "red circle", vector=QUERIES[0], k=8, where=Item.c2 == 0
        )
    assert len(hits) == 8 and all(h.row.c2 == 0 for h in hits)


@pytest.mark.parametrize(
    ("kwargs", "error", "culprit"),
    [
        ({"k": 0}, SearchError, "k must be"),
        ({"k": "10"}, SearchError, "k must be"),
        ({"where": "1=1; DROP TABLE search_items"}, SearchError, "not a string of SQL"),
        ({"where": 42}, SearchError, "boolean expression"),
        ({"plan": "fastest"}, SearchError, "plan must be"),
        ({"query": np.ones(DIM + 1)}, DimensionMismatchError, f"{DIM}-dimensional"),
        ({"query": np.ones(DIM + 1, np.float32)}, DimensionMismatchError, f"{DIM}-dimensional"),
        ({"query": np.ones((2, DIM), np.float32)}, DimensionMismatchError, "1-d"),
        ({"query": np.full(DIM, np.nan, np.float32)}, NonFiniteVectorError, "NaN or infinite"),
        (
            {"query": np.r_[np.ones(DIM - 1), np.inf].astype(np.float32)},
            NonFiniteVectorError,
            "NaN",
        ),
        ({"query": np.full(DIM, 1e39)}, NonFiniteVectorError, "float32"),
        ({"query": np.zeros(DIM, np.float32)}, ZeroVectorError, "zero vector"),
        ({"query": None}, VectorTypeError, "query must be text or a vector.*NoneType"),
        ({"query": {"a": 1.0}}, VectorTypeError, "got dict"),
        ({"query": True}, VectorTypeError, "got bool"),
        ({"query": 3.5}, VectorTypeError, "got float"),
        ({"query": [True] * DIM}, VectorTypeError, "holding bool"),
        ({"query": ["0.5"] * DIM}, VectorTypeError, "holding str"),
        ({"query": [0.5 + 1j] * DIM}, VectorTypeError, "holding complex"),
        ({"query": np.ones(DIM, complex)}, VectorTypeError, "complex"),
        ({"query": np.ones(DIM, object)}, VectorTypeError, "object"),
        ({"query": np.ones(DIM, bool)}, VectorTypeError, "bool"),
        ({"max_distance": "near"}, SearchError, "max_distance must be a number"),
        ({"ef_search": 0}, SearchError, "ef_search must be"),
        ({"exact_below": -1}, SearchError, "exact_below must be"),
        ({"query": "text without an embedder"}, SearchError, "needs an embedder"),
        ({"statement": "SELECT * FROM search_items"}, SearchError, "must be a select"),
    ],
)
def test_bad_arguments_are_refused_with_the_culprit(
    items: sa.Engine, kwargs: dict, error: type, culprit: str
) -> None:
    query = kwargs.pop("query", QUERIES[0])
    with Session(items) as session:
        with pytest.raises(error, match=culprit):
            search(session, Item.embedding, query, **kwargs)
        # the session stays usable, nothing written
        assert session.execute(sa.select(sa.func.count()).select_from(Item)).scalar() == N


def test_invalid_vectors_are_value_errors_and_bad_types_type_errors() -> None:
    assert issubclass(NonFiniteVectorError, ValueError)
    assert issubclass(ZeroVectorError, ValueError)
    assert issubclass(DimensionMismatchError, ValueError)
    assert issubclass(VectorTypeError, TypeError)


def test_a_filter_on_a_missing_column_points_at_the_filter(items: sa.Engine) -> None:
    """The table in the database lacks a column the model declares: the error names the
    user's filter (not an EXPLAIN they never wrote), and the session stays usable."""
    ghost = sa.Table(
        "search_items",
        sa.MetaData(),
        *[sa.Column(c.name, c.type, primary_key=c.primary_key) for c in Item.__table__.c],
        sa.Column("no_such_column", sa.Integer),
    )
    ghost.c.embedding.info.update(Item.__table__.c.embedding.info)
    with items.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
        with pytest.raises(SearchError, match="filter.*no_such_column"):
            search(
                connection, ghost.c.embedding, QUERIES[0], k=3, where=ghost.c.no_such_column == 1
            )
        assert connection.execute(sa.select(sa.func.count()).select_from(Item)).scalar() == N


def test_huge_but_finite_query_values_are_a_valid_vector(items: sa.Engine) -> None:
    with Session(items) as session:  # the finiteness check must not overflow on them
        assert len(search(session, Item.embedding, np.full(DIM, 3e38, np.float32), k=3)) == 3


def test_hostile_strings_in_filters_are_only_values(items: sa.Engine) -> None:
    hostile = "'; DROP TABLE search_items; --"
    with Session(items) as session:
        hits = search(session, Item.embedding, QUERIES[0], k=3, where=Item.body == hostile)
        assert len(hits) == 0
        fused = hybrid_search(session, Item.embedding, hostile + " red", vector=QUERIES[0], k=3)
        assert len(fused) == 3
        assert session.execute(sa.select(sa.func.count()).select_from(Item)).scalar() == N


def test_a_column_not_declared_with_semdb_is_refused(items: sa.Engine) -> None:
    with Session(items) as session, pytest.raises(semdb.SemdbError, match="embedding_column"):
        search(session, Item.c10, QUERIES[0])


def test_the_sql_function_gives_psql_users_the_same_hybrid_search(items: sa.Engine) -> None:
    vector_text = "[" + ",".join(repr(float(x)) for x in VECTORS[4]) + "]"
    with items.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT (h.item).id, (h.item).body, h.score, h.semantic_rank, h.keyword_rank "
                "FROM semdb.hybrid_search(NULL::search_items, 'embedding', "
                "CAST(:q AS vector), :text, 10) AS h"
            ),
            {"q": vector_text, "text": "4 violet star"},
        ).all()
    with Session(items) as session:
        hits = hybrid_search(session, Item.embedding, "4 violet star", vector=VECTORS[4], k=10)
    assert [row.id for row in rows] == [hit.row.id for hit in hits]
    assert [row.score for row in rows] == pytest.approx([hit.score for hit in hits])
    assert rows[0].body == "item 4 violet star" and rows[0].keyword_rank == 1


def test_the_sql_function_refuses_what_it_cannot_search(items: sa.Engine) -> None:
    with items.connect() as connection, pytest.raises(sa.exc.DBAPIError, match="not a registered"):
        connection.execute(
            sa.text(
                "SELECT * FROM semdb.hybrid_search(NULL::search_shops, 'embedding', "
                "CAST('[1,2]' AS vector), 'x', 10)"
            )
        )


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"fusion": "english'; DROP TABLE search_items; --"}, "fusion must be one of"),
        ({"rrf_k": -1}, "rrf_k"),
        ({"text": "   "}, "non-empty query text"),
        ({"candidates": 0}, "candidates must be"),
    ],
)
def test_hybrid_search_refuses_bad_arguments(items: sa.Engine, kwargs: dict, culprit: str) -> None:
    text = kwargs.pop("text", "red circle")
    with Session(items) as session, pytest.raises(semdb.SemdbError, match=culprit):
        hybrid_search(session, Item.embedding, text, vector=QUERIES[0], **kwargs)


def test_pending_rows_are_flushed_before_the_search_and_never_lost(items: sa.Engine) -> None:
    """The index path runs in a savepoint that is rolled back: a flush inside it would
    silently undo the application's writes. Pending rows are flushed first, and found."""
    with Session(items) as session:
        session.add(
            Item(
                id=N + 1,
                body="pending",
                shop_id=0,
                c2=1,
                c10=1,
                c100=1,
                c1000=1,
                embedding=VECTORS[0],
            )
        )
        hits = search(session, Item.embedding, VECTORS[0], k=3, where=Item.c2 == 1, plan="index")
        assert hits.plan.path == "index" and N + 1 in {h.row.id for h in hits}
        session.commit()
    with Session(items) as session:
        assert session.get(Item, N + 1) is not None
        session.delete(session.get(Item, N + 1))
        session.commit()


def test_the_default_threshold_grows_with_the_square_root_of_the_table(items: sa.Engine) -> None:
    from semdb.retrieval import exact_below_rows

    assert exact_below_rows(100_000) == 3890 and exact_below_rows(25_000) == 1945
    with Session(items) as session:  # 4,000 rows: exact below about 780 passing rows
        wide = search(session, Item.embedding, QUERIES[0], k=10, where=Item.c2 == 0)
        narrow = search(session, Item.embedding, QUERIES[0], k=10, where=Item.c10 == 0)
    assert wide.plan.path == "index" and "> 778" in wide.plan.reason
    assert narrow.plan.path == "exact" and "<= 778" in narrow.plan.reason


def test_hits_leave_the_stored_vector_out_until_it_is_read(items: sa.Engine) -> None:
    """A vector comes back as text (kilobytes per row): the default statement does not fetch
    it. ORM hits load it when it is read; Core rows do not carry it."""
    query = QUERIES[0]
    with Session(items) as session:
        hits = search(session, Item.embedding, query, k=3)
        state = sa.inspect(hits[0].row)
        assert {"embedding", "embedding_hash"} <= state.unloaded
        assert "body" not in state.unloaded
        stored = hits[0].row.embedding  # loaded on access
        assert np.allclose(stored, VECTORS[hits[0].row.id], atol=1e-6)
    with items.connect() as connection:
        rows = search(connection, Item.__table__.c.embedding, query, k=3)
        assert "embedding" not in rows[0].row._fields and "body" in rows[0].row._fields
        assert "embedding_model" in rows[0].row._fields
        # asked for, the vector comes back
        table = Item.__table__
        asked = search(connection, table.c.embedding, query, k=3, statement=sa.select(table))
        assert np.allclose(asked[0].row.embedding, VECTORS[asked[0].row.id], atol=1e-6)


def test_a_core_search_outside_a_transaction_begins_one(items: sa.Engine) -> None:
    table = Item.__table__
    with items.connect() as connection:
        for _ in range(2):
            hits = search(connection, table.c.embedding, QUERIES[0], k=3, where=table.c.c2 == 0)
            assert len(hits) == 3
            assert connection.in_transaction()  # as connection.execute() would have begun it
            connection.commit()


@pytest.mark.parametrize("path", ["index", "exact"])
def test_a_core_search_on_a_lost_connection_invalidates_it(items: sa.Engine, path: str) -> None:
    table = Item.__table__

    def run(connection: sa.Connection) -> Any:
        return search(
            connection, table.c.embedding, QUERIES[0], k=3, where=table.c.c10 == 1, plan=path
        )

    with items.connect() as connection:
        run(connection)
        run(connection)
        pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        connection.commit()
        with items.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(sa.exc.OperationalError) as raised:
            run(connection)
        assert raised.value.connection_invalidated and connection.invalidated
        connection.rollback()
        assert len(run(connection)) == 3  # a new connection, as SQLAlchemy does


@pytest.mark.parametrize("path", ["index", "exact"])
def test_a_core_search_keeps_the_connections_transaction_options(
    items: sa.Engine, path: str
) -> None:
    table = Item.__table__
    options = {"isolation_level": "SERIALIZABLE", "postgresql_readonly": True}
    with items.connect().execution_options(**options) as connection:
        for _ in range(2):
            hits = search(
                connection, table.c.embedding, QUERIES[1], k=5, where=table.c.c10 == 4, plan=path
            )
            assert len(hits) == 5 and connection.in_transaction()
            level, read_only = connection.execute(
                sa.text(
                    "SELECT current_setting('transaction_isolation'), "
                    "current_setting('transaction_read_only')"
                )
            ).one()
            assert (level, read_only) == ("serializable", "on")
            connection.commit()


@pytest.mark.parametrize("path", ["index", "exact", "auto"])
def test_core_rows_are_the_same_on_every_run(items: sa.Engine, path: str) -> None:
    """Rows carry their columns by name and by Column object on every run, not only the
    first (a regression of the removed driver path)."""
    table = Item.__table__
    with items.connect() as connection:
        for value in (3, 4, 3, 4):
            hits = search(
                connection,
                table.c.embedding,
                QUERIES[2],
                k=4,
                where=table.c.c10 == value,
                plan=path,
            )
            assert len(hits) == 4
            for hit in hits:
                assert hit.row._mapping[table.c.id] == hit.row.id
                assert hit.row._mapping[table.c.c10] == value == hit.row.c10
                assert hit.row._mapping["distance"] == pytest.approx(hit.distance)


def test_a_failed_core_search_keeps_the_callers_transaction_usable(items: sa.Engine) -> None:
    """On the index path the settings live in a savepoint; a failure rolls back to it, so
    the caller's transaction and its earlier writes survive (Core, on libpq)."""
    table = Item.__table__
    with items.connect() as connection:
        for divisor in (1, 0):
            where = (table.c.c10 / divisor) > -1
            if divisor:
                search(connection, table.c.embedding, QUERIES[0], k=5, where=where, plan="index")
                connection.execute(sa.update(table).where(table.c.id == 1).values(body="kept"))
                continue
            with pytest.raises(sa.exc.DataError, match="division by zero"):
                search(connection, table.c.embedding, QUERIES[0], k=5, where=where, plan="index")
        assert connection.execute(sa.select(table.c.body).where(table.c.id == 1)).scalar() == "kept"
        assert planner_settings_now(connection) == ("40", "on", "off")
        connection.rollback()


def test_sql_with_percent_signs(items: sa.Engine) -> None:
    table = Item.__table__
    statement = sa.select(table.c.id, sa.literal_column("'50%'").label("share"))
    with items.connect() as connection:
        for _ in range(2):
            hits = search(
                connection,
                table.c.embedding,
                QUERIES[3],
                k=3,
                statement=statement,
                where=table.c.body.like("item%"),
            )
            assert [hit.row.share for hit in hits] == ["50%"] * 3


def test_a_prepared_search_finds_what_search_finds(items: sa.Engine, column: Any) -> None:
    """Built once, run with other vectors and values: the same hits, plans chosen for each
    run's values (a selective value goes exact, a broad one through the index)."""
    below = semdb.PreparedSearch(column, k=6, where=Item.c1000 < sa.bindparam("below"))
    shop = semdb.PreparedSearch(
        column,
        k=4,
        statement=None if column is Item.embedding else sa.select(Item.__table__.c.id),
        where=sa.and_(Item.c2 == sa.bindparam("half"), Item.c10 != 7),
    )
    with items.connect() as connection:
        paths = set()
        for query, value in zip(QUERIES[:6], (3, 900, 3, 950, 2, 900), strict=True):
            got = below(connection, query, below=value)
            want = search(connection, column, query, k=6, where=Item.c1000 < value)
            assert [h.row.id for h in got] == [h.row.id for h in want]
            assert got.plan.path == want.plan.path and len(got) == 6
            assert all(h.row.c1000 < value for h in got)
            paths.add(got.plan.path)
        assert paths == {"exact", "index"}
        for query, half in zip(QUERIES[6:10], (0, 1, 1, 0), strict=True):
            got = shop(connection, query, half=half)
            truth = exact_top_k(VECTORS, query, 4, mask("c2", half) & ~mask("c10", 7))
            assert len(got) == 4
            if got.plan.path == "exact":
                assert [h.row.id for h in got] == truth


def test_a_prepared_search_names_a_wrong_or_missing_value(items: sa.Engine) -> None:
    nearest = semdb.PreparedSearch(
        Item.embedding,
        k=3,
        where=(Item.body == sa.bindparam("body")) & (Item.c10 == sa.bindparam("c10", 1)),
    )
    assert nearest.parameters == {"body", "c10"} and nearest.required == {"body"}
    with Session(items) as session:
        with pytest.raises(SearchError, match="has no parameter colour.*needs a value for body"):
            nearest(session, QUERIES[0], colour="red")
        with pytest.raises(SearchError, match="needs a value for body"):
            nearest(session, QUERIES[0], c10=3)
        hostile = "x'; DROP TABLE search_items; --"
        assert nearest(session, QUERIES[0], body=hostile) == []
        body = "item 11 violet square"  # c10 is 1, the default
        assert [h.row.id for h in nearest(session, QUERIES[0], body=body)] == [11]
        assert nearest(session, QUERIES[0], body=body, c10=2) == []
        assert session.execute(sa.select(sa.func.count()).select_from(Item)).scalar() == N
