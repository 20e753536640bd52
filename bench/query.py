"""Filtered and unfiltered top-k: semdb.search against the plans plain pgvector offers.

    python -m bench.query                  # ~108k rows of MiniLM vectors of real text
    python -m bench.query --rows 20000 --queries 50 --synthetic     # a quick run

The table holds the debdesc texts (see bench/data.py) with an HNSW index (m=16,
ef_construction=64, cosine) and a btree on ``bucket`` (uniform 0-999), so ``bucket < t``
passes t/10 % of the rows. Held-out rows are the queries. For each selectivity, every query
runs once through each plan, side by side in one run, the plans in a new random order for
each query (``--block N``: N queries a plan in a row instead). A plan's queries/s is one over
its median time per query (``qps_mean`` in the JSON is the mean): a noisy neighbour's burst
slows whichever plans were running then, and the median sets those queries aside.

Interleaving query by query starts every search on caches made cold by the other clients'
work. That inflates every fixed per-query cost, client-side Python included: plain psycopg's
exact plan at 0.1% took about 0.12 ms a query run in a row, 0.28 ms interleaved. The
``sa`` plans measure that share. The plans:

- ``pg hnsw``: plain psycopg, ``ORDER BY embedding <=> q LIMIT k``, ef_search 40, no
  iterative scan (pgvector's default);
- ``pg iterative``: the same with ``hnsw.iterative_scan = relaxed_order`` (the planner may
  still choose the btree);
- ``pg exact``: ``ORDER BY cosine_distance(embedding, q)``: exact, through the btree or a scan;
- ``sa hnsw``, ``sa iterative``, ``sa exact``: the same plans as Core statements executed by
  SQLAlchemy (session settings, statement built once, vector bound in binary): what
  SQLAlchemy's own execution costs, the floor for any helper that runs through it;
- ``semdb``: ``semdb.search(connection, Doc.embedding, q, k=10, where=Doc.bucket < t,
  statement=select(Doc.id))``, plan chosen automatically, the filter and the statement built
  once per selectivity as the sa plans build theirs; also ``semdb index`` and ``semdb exact``
  (forced), to show the crossover that EXACT_BELOW_FACTOR encodes;
- ``semdb built per call``: the same search with the filter and the statement built anew for
  each query, as a one-off call is written: what SQLAlchemy's construction of expressions
  (and their cache keys) adds, on caches made cold;
- ``semdb prepared``: the same search as a ``semdb.PreparedSearch`` built once, run with
  ``t=...`` (plan chosen automatically for each run's value).

"best pg" is the fastest pg plan that returns k rows at recall >= 0.95 (and "best sa" the
fastest sa plan). Recall is against
exact top-k computed in numpy. Every plan reads the ids of its rows by position (``row[0]``):
the cost measured is the search's, not that of the attribute lookups a caller may make.
Results: a table, and bench/results/query.json.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import sql as psql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateTable

from bench.common import engine as make_engine
from bench.common import machine, print_table
from bench.data import write_result

K = 10
#: Queries a plan runs in a row, in its turn (see the module documentation).
BLOCK = 1
THRESHOLDS = [None, 500, 200, 100, 50, 20, 10, 5, 1]  # bucket < t passes t/10 %
DIM = 384


class Base(DeclarativeBase):
    pass


def _model() -> Any:
    from semdb import HNSW, embedding_column

    class BenchDoc(Base):
        __tablename__ = "bench_docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        package: Mapped[str]
        kind: Mapped[str]
        body: Mapped[str]
        bucket: Mapped[int] = mapped_column(index=True)
        embedding = embedding_column(
            "body",
            model="all-MiniLM-L6-v2",
            dimension=DIM,
            sync="manual",
            index=HNSW(m=16, ef_construction=64, ef_search=40),
        )

    return BenchDoc


def load_data(
    rows: int | None, synthetic: bool, seed: int = 0
) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    if synthetic:
        n = rows or 20000
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(200, DIM))
        matrix = centres[rng.integers(0, 200, n)] + 0.7 * rng.normal(size=(n, DIM))
        matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
        return [(f"p{i}", "synthetic", f"text {i}") for i in range(n)], matrix
    from bench.data import table_rows

    items, matrix = table_rows()
    texts = [(item.package, item.kind, item.text) for item in items]
    if rows is not None:
        texts, matrix = texts[:rows], matrix[:rows]
    return texts, matrix


def prepare(
    engine: sa.Engine,
    doc: Any,
    texts: list[tuple[str, str, str]],
    matrix: np.ndarray,
    buckets: np.ndarray,
    keep: np.ndarray,
) -> None:
    """Create and fill the table, unless it already holds exactly this data."""
    from semdb import copy_rows

    digest = f"{len(keep)}:{int(keep.sum())}:{float(matrix[keep][:, 0].sum()):.6f}"
    table = doc.__table__
    with engine.connect() as connection:
        comment = connection.execute(
            sa.text("SELECT obj_description(to_regclass('bench_docs'), 'pg_class')")
        ).scalar()
    if comment == digest:
        print("reusing the loaded table bench_docs")
        return
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS bench_docs"))
        connection.execute(CreateTable(table))
        ids = np.flatnonzero(keep)
        copy_rows(
            connection,
            doc,
            {
                "id": ids.tolist(),
                "package": [texts[i][0] for i in ids],
                "kind": [texts[i][1] for i in ids],
                "body": [texts[i][2] for i in ids],
                "bucket": buckets[ids].tolist(),
                "embedding": matrix[ids],
            },
            model="all-MiniLM-L6-v2@bench",
        )
    print(
        f"loaded {int(keep.sum())} rows in {time.perf_counter() - started:.1f} s; building indexes"
    )
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(sa.text("SET maintenance_work_mem = '1GB'"))
        for index in table.indexes:
            index.create(connection)
        connection.execute(sa.text("ANALYZE bench_docs"))
        connection.exec_driver_sql(
            psql.SQL("COMMENT ON TABLE bench_docs IS {}")
            .format(psql.Literal(digest))
            .as_string(None)
        )
    print(f"indexes built in {time.perf_counter() - started:.1f} s")


class RawPlan:
    """One plain psycopg connection with session settings, running one SQL shape."""

    def __init__(self, uri: str, sql_text: psql.Composed, settings: dict[str, str]) -> None:
        from pgvector.psycopg import register_vector

        # No prepared statements: a generic plan cannot see how selective the filter is
        # (semdb plans every search for its actual values too); this is what psql does.
        self.connection = psycopg.connect(uri, autocommit=True, prepare_threshold=None)
        register_vector(self.connection)
        for name, value in settings.items():
            self.connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        self.sql = sql_text

    def run(self, vector: np.ndarray, threshold: int | None) -> list[int]:
        rows = self.connection.execute(self.sql, {"q": vector, "t": threshold}).fetchall()
        return [row[0] for row in rows]


def raw_plans(uri: str, filtered: bool) -> dict[str, RawPlan]:
    where = psql.SQL("WHERE bucket < %(t)s " if filtered else "")
    operator = psql.SQL(
        "SELECT id, embedding <=> %(q)s AS d FROM bench_docs {where}"
        "ORDER BY embedding <=> %(q)s LIMIT {k}"
    ).format(where=where, k=psql.Literal(K))
    exact = psql.SQL(
        "SELECT id, cosine_distance(embedding, %(q)s) AS d FROM bench_docs {where}"
        "ORDER BY cosine_distance(embedding, %(q)s) LIMIT {k}"
    ).format(where=where, k=psql.Literal(K))
    plans = {
        "pg hnsw": RawPlan(uri, operator, {"hnsw.ef_search": "40", "hnsw.iterative_scan": "off"}),
        "pg exact": RawPlan(uri, exact, {}),
    }
    if filtered:
        plans["pg iterative"] = RawPlan(
            uri, operator, {"hnsw.ef_search": "40", "hnsw.iterative_scan": "relaxed_order"}
        )
    return plans


class SqlAlchemyPlan:
    """The yardstick for any SQLAlchemy helper: one SQLAlchemy connection with session
    settings, executing one Core statement (built once, values bound at execution), the
    query vector bound in binary as semdb binds it. No plan choice, no per-query settings:
    what SQLAlchemy's own execution costs on top of plain psycopg."""

    def __init__(
        self, engine: sa.Engine, table: sa.Table, exact: bool, filtered: bool, settings: dict
    ) -> None:
        from semdb.orm.types import VectorType

        self.connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.connection.connection.dbapi_connection.prepare_threshold = None  # as RawPlan
        for name, value in settings.items():
            self.connection.execute(
                sa.text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value}
            )
        query = sa.bindparam("q", type_=VectorType(DIM, "vector"))
        distance = (
            sa.func.cosine_distance(table.c.embedding, query, type_=sa.Float)
            if exact
            else table.c.embedding.op("<=>", return_type=sa.Float)(query)
        )
        statement = sa.select(table.c.id, distance.label("d")).order_by(distance).limit(K)
        if filtered:
            statement = statement.where(table.c.bucket < sa.bindparam("t"))
        self.statement = statement

    def run(self, vector: np.ndarray, threshold: int | None) -> list[int]:
        from semdb.search.query import wire_vector

        wire = wire_vector(vector, "vector", None)  # type: ignore[arg-type]  # target unused
        rows = self.connection.execute(self.statement, {"q": wire, "t": threshold}).all()
        return [row[0] for row in rows]


def sqlalchemy_plans(engine: sa.Engine, table: sa.Table, filtered: bool) -> dict[str, Any]:
    plans = {"sa exact": SqlAlchemyPlan(engine, table, True, filtered, {})}
    if filtered:
        plans["sa iterative"] = SqlAlchemyPlan(
            engine, table, False, True, {"hnsw.iterative_scan": "relaxed_order"}
        )
    else:
        plans["sa hnsw"] = SqlAlchemyPlan(engine, table, False, False, {})
    return plans


def _threshold(rows: int) -> int:
    from semdb.search import exact_below_rows

    return exact_below_rows(rows)


def _raw_runner(plan: RawPlan, threshold: int | None) -> Any:
    def run(q: np.ndarray) -> list[int]:
        return plan.run(q, threshold)

    return run


def _path(plan: Any) -> str:
    """How a semdb search ran: its path, and whether the plain index scan sufficed or the
    index fell back to exact."""
    plain = " plain" if plan.plain_first else ""
    return plan.path + plain + (" (fell back)" if plan.fell_back_to_exact else "")


def _semdb_runner(
    connection: sa.Connection, table: sa.Table, where: Any, request: str, paths: Counter[str]
) -> Any:
    """``semdb.search`` with the filter and the statement built once, as the sa plans build
    theirs (and as the pg plans' SQL is one string)."""
    import semdb

    ids = sa.select(table.c.id)

    def run(q: np.ndarray) -> list[int]:
        hits = semdb.search(
            connection, table.c.embedding, q, k=K, where=where, plan=request, statement=ids
        )
        if request == "auto":
            paths[_path(hits.plan)] += 1
        return [hit.row[0] for hit in hits]

    return run


def _semdb_built_per_call_runner(
    connection: sa.Connection, table: sa.Table, threshold: int | None
) -> Any:
    """``semdb.search`` with the filter and the statement built anew for each query, as a
    one-off call in an application is written: SQLAlchemy's construction of the expressions
    and their cache keys is part of its cost."""
    import semdb

    def run(q: np.ndarray) -> list[int]:
        hits = semdb.search(
            connection,
            table.c.embedding,
            q,
            k=K,
            where=None if threshold is None else table.c.bucket < threshold,
            statement=sa.select(table.c.id),
        )
        return [hit.row[0] for hit in hits]

    return run


def _prepared_runner(
    connection: sa.Connection, table: sa.Table, threshold: int | None, paths: Counter[str]
) -> Any:
    import semdb

    nearest = semdb.PreparedSearch(
        table.c.embedding,
        k=K,
        where=None if threshold is None else table.c.bucket < sa.bindparam("t"),
        statement=sa.select(table.c.id),
    )
    values = {} if threshold is None else {"t": threshold}

    def run(q: np.ndarray) -> list[int]:
        hits = nearest(connection, q, **values)
        paths[_path(hits.plan)] += 1
        return [hit.row[0] for hit in hits]

    return run


def _fastest(row: dict[str, Any], names: Any, wanted: int) -> str | None:
    """The fastest of the plans ``names`` that returned k rows at recall >= 0.95."""
    eligible = [n for n in names if row[n]["rows"] >= wanted - 1e-9 and row[n]["recall"] >= 0.95]
    return max(eligible, key=lambda n: row[n]["qps"]) if eligible else None


def _recall(
    ids: list[int],
    query: np.ndarray,
    kth: float,
    vectors: np.ndarray,
    position: dict[int, int],
    mask: np.ndarray,
) -> float:
    wanted = min(K, int(mask.sum()))
    good = sum(
        1
        for i in set(ids)
        if mask[position[i]] and float(vectors[position[i]] @ query) >= kth - 1e-5
    )
    return min(good, wanted) / wanted


def _measure(
    runners: dict[str, Any], queries: np.ndarray, block: int
) -> tuple[dict[str, list[float]], dict[str, list[list[int]]]]:
    """Every query through every plan, side by side: the queries are cut into blocks of
    ``block``; each block runs through every plan in turn, in a new random order per block
    (so that no plan always follows the one that evicted its pages, and noise falls on all
    plans alike). Seconds per query of each block, and ids in query order, per plan."""
    seconds: dict[str, list[float]] = defaultdict(list)
    found: dict[str, list[list[int]]] = defaultdict(list)
    order = np.random.default_rng(7)
    for q in queries[: min(5, len(queries))]:  # warm up every plan
        for run in runners.values():
            run(q)
    names = list(runners)
    for start in range(0, len(queries), block):
        chunk = queries[start : start + block]
        for name in order.permutation(names):
            run = runners[name]
            started = time.perf_counter()
            ids = [run(q) for q in chunk]
            seconds[str(name)].append((time.perf_counter() - started) / len(chunk))
            found[str(name)].extend(ids)
    return seconds, found


def _queries_per_second(block_seconds: list[float]) -> float:
    """Queries per second from the median block (see the module documentation)."""
    return 1.0 / float(np.median(block_seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows (default: all ~108k)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--synthetic", action="store_true", help="random clustered vectors")
    parser.add_argument("--selectivity", type=int, action="append", help="only these thresholds")
    parser.add_argument(
        "--block",
        type=int,
        default=BLOCK,
        help=f"queries each plan runs in a row before the next plan's turn (default {BLOCK})",
    )
    args = parser.parse_args()

    from semdb.db.url import libpq_uri

    texts, matrix = load_data(args.rows, args.synthetic)
    rng = np.random.default_rng(42)
    n = len(texts)
    held_out = rng.choice(n, size=args.queries, replace=False)
    keep = np.ones(n, dtype=bool)
    keep[held_out] = False
    buckets = rng.integers(0, 1000, n)
    engine = make_engine()
    doc = _model()
    prepare(engine, doc, texts, matrix, buckets, keep)
    uri = libpq_uri(engine.url)
    table_ids = np.flatnonzero(keep)
    table_vectors = matrix[keep]
    queries = matrix[held_out]

    results: list[dict[str, Any]] = []
    thresholds = (
        [None if t == -1 else t for t in args.selectivity] if args.selectivity else THRESHOLDS
    )
    for threshold in thresholds:
        mask = (
            np.ones(len(table_ids), bool) if threshold is None else buckets[table_ids] < threshold
        )
        # Ties are common (identical texts have identical vectors): a returned row counts as
        # correct when it is at least as close as the true k-th nearest row.
        similarity = queries @ table_vectors[mask].T
        kth = np.sort(similarity, axis=1)[:, -min(K, int(mask.sum()))]
        position = {int(i): p for p, i in enumerate(table_ids)}
        plans = raw_plans(uri, threshold is not None)
        table = doc.__table__
        where = None if threshold is None else table.c.bucket < threshold
        paths: Counter[str] = Counter()
        # autocommit, as the psycopg plans run: no BEGIN/COMMIT round trips on either side.
        # Each semdb plan on a connection (a backend) of its own, as each pg plan: a forced
        # index scan at 0.1% walks the whole graph for 70 ms, and the next search on that
        # backend ran 3x slower (0.5 -> 1.7 ms).
        yardsticks = sqlalchemy_plans(engine, table, threshold is not None)
        runners: dict[str, Any] = {
            name: _raw_runner(plan, threshold) for name, plan in {**plans, **yardsticks}.items()
        }
        connections = []
        semdb_plans = (("index", "semdb index"), ("exact", "semdb exact"), ("auto", "semdb"))
        for request, name in semdb_plans:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            connections.append(connection)
            runners[name] = _semdb_runner(connection, table, where, request, paths)
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        connections.append(connection)
        runners["semdb built per call"] = _semdb_built_per_call_runner(connection, table, threshold)
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        connections.append(connection)
        runners["semdb prepared"] = _prepared_runner(connection, table, threshold, Counter())
        times, found = _measure(runners, queries, args.block)
        for plan in [*plans.values(), *yardsticks.values()]:
            plan.connection.close()
        for connection in connections:
            connection.close()
        row: dict[str, Any] = {
            "selectivity": "none" if threshold is None else f"{threshold / 10:g}%",
            "passing_rows": int(mask.sum()),
            "semdb_paths": dict(paths),
        }
        for name in runners:
            recall = float(
                np.mean(
                    [
                        _recall(ids, queries[i], kth[i], table_vectors, position, mask)
                        for i, ids in enumerate(found[name])
                    ]
                )
            )
            rows_back = float(np.mean([len(ids) for ids in found[name]]))
            row[name] = {
                "qps": _queries_per_second(times[name]),
                "qps_mean": len(times[name]) / sum(times[name]),
                "recall": recall,
                "rows": rows_back,
            }
        best = _fastest(row, plans, min(K, int(mask.sum())))
        row["best_pg"] = best
        row["semdb_vs_best"] = row["semdb"]["qps"] / row[best]["qps"] if best else None
        row["prepared_vs_best"] = row["semdb prepared"]["qps"] / row[best]["qps"] if best else None
        row["built_per_call_vs_best"] = (
            row["semdb built per call"]["qps"] / row[best]["qps"] if best else None
        )
        best_sa = _fastest(row, yardsticks, min(K, int(mask.sum())))
        row["best_sa"] = best_sa
        row["sa_vs_best"] = row[best_sa]["qps"] / row[best]["qps"] if best and best_sa else None
        row["semdb_vs_sa"] = row["semdb"]["qps"] / row[best_sa]["qps"] if best_sa else None
        if threshold is None:
            row["semdb_vs_exact"] = row["semdb"]["qps"] / row["pg exact"]["qps"]
        results.append(row)
        print(row)

    names = ["pg hnsw", "pg iterative", "pg exact", "sa hnsw", "sa iterative", "sa exact"]
    names += ["semdb index", "semdb exact", "semdb", "semdb built per call", "semdb prepared"]
    for metric, title in (
        ("qps", "queries/s"),
        ("recall", f"recall@{K}"),
        ("rows", "rows returned"),
    ):
        print_table(
            f"top-{K} over {int(keep.sum())} rows, {len(queries)} queries: {title}",
            ["filter", "passing", *names],
            [
                [row["selectivity"], row["passing_rows"]]
                + [row[name][metric] if name in row else "-" for name in names]
                for row in results
            ],
        )

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "-"

    print_table(
        "semdb against the best plan: plain psycopg (pg) and SQLAlchemy alone (sa)",
        [
            "filter",
            "best pg",
            "q/s",
            "semdb q/s",
            "semdb/pg",
            "prepared/pg",
            "per call/pg",
            "sa/pg",
            "semdb/sa",
            "semdb plans",
        ],
        [
            [
                row["selectivity"],
                row["best_pg"] or "-",
                row[row["best_pg"]]["qps"] if row["best_pg"] else "-",
                row["semdb"]["qps"],
                ratio(row["semdb_vs_best"]),
                ratio(row["prepared_vs_best"]),
                ratio(row["built_per_call_vs_best"]),
                ratio(row["sa_vs_best"]),
                ratio(row["semdb_vs_sa"]),
                ", ".join(f"{k} {v}" for k, v in row["semdb_paths"].items()),
            ]
            for row in results
        ],
    )
    unfiltered = next((r for r in results if r["selectivity"] == "none"), None)
    if unfiltered:
        print(
            f"unfiltered: semdb recall {unfiltered['semdb']['recall']:.3f} at "
            f"{unfiltered['semdb_vs_exact']:.1f}x the exact plan's q/s"
        )
    path = write_result(
        ("query" if not args.synthetic else "query-synthetic")
        + (f"-block{args.block}" if args.block != BLOCK else ""),
        {
            "rows": int(keep.sum()),
            "queries": len(queries),
            "k": K,
            "block": args.block,
            "results": results,
            "exact_below_rows": _threshold(int(keep.sum())),
            "machine": machine(),
            "synthetic": args.synthetic,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
