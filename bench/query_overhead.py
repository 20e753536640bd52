"""Where a search's time goes beyond the SQL: semdb's execution alone against the full call.

    python -m bench.query                          # loads the table first (once)
    python -m bench.query_overhead                 # 50% and 0.1% of rows pass the filter
    python -m bench.query_overhead --cold          # with a whole-table exact scan between

On the table bench/query.py loads, for each selectivity, every query runs through, in turn:

- ``pg``: the best hand-written psycopg plan there (``pg iterative`` at 50%, ``pg exact`` at
  0.1%), as in bench/query.py;
- ``semdb execution``: only what semdb sends and reads for the search: the compiled
  statement, its per-query settings (the index path's ``SET LOCAL`` pipeline) and the
  ``Row``\\ s, run on the driver as ``semdb.search`` runs it (no plan choice, no statement
  lookup, no hits);
- ``PreparedSearch`` and ``semdb.search``: the whole call.

``--cold`` adds bench/query.py's ``pg exact`` plan to the rotation at 50% (a scan of the whole
table): every other plan then starts on cold caches, as in bench/query.py, which inflates
fixed per-call costs. Results: a table, and bench/results/query-overhead.json.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

import numpy as np
import sqlalchemy as sa

from bench.common import engine as make_engine
from bench.common import machine, print_table
from bench.data import write_result
from bench.query import (
    DIM,
    K,
    _measure,
    _model,
    _prepared_runner,
    _raw_runner,
    _semdb_runner,
    raw_plans,
)


def _execution_runner(connection: sa.Connection, table: sa.Table, threshold: int) -> Any:
    """semdb's execution of the search alone (see the module documentation)."""
    import semdb
    from semdb.search.direct import DirectStatement, direct_driver, known_direct
    from semdb.search.query import wire_vector
    from semdb.search.semantic import QUERY_VECTOR, SemanticQuery

    nearest = semdb.PreparedSearch(
        table.c.embedding,
        k=K,
        where=table.c.bucket < sa.bindparam("t"),
        statement=sa.select(table.c.id),
    )
    probe = np.zeros(DIM, np.float32)
    probe[0] = 1.0
    for _ in range(2):  # the first run compiles the statement for the driver
        nearest(connection, probe, t=threshold)
    semantic = SemanticQuery.of_spec(connection, nearest.spec, probe, None, [threshold])
    path = semantic.plan.path
    semantic.statement(path)
    direct = known_direct(semantic._statement_key, connection.dialect)
    driver = direct_driver(connection)
    assert isinstance(direct, DirectStatement) and driver is not None
    settings = semantic.plan.first_settings
    values = semantic.parameters()
    target = semantic.target
    storage = target.index_storage() if path == "index" else target.spec.storage

    def run(q: np.ndarray) -> list[int]:
        values[QUERY_VECTOR] = wire_vector(q, storage, target)
        rows = direct.run(connection, driver, values, settings)
        return [row[0] for row in rows]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--cold", action="store_true", help="a whole-table scan between")
    args = parser.parse_args()

    from semdb.db.url import libpq_uri

    engine = make_engine()
    table = _model().__table__
    with engine.connect() as connection:
        if sa.inspect(connection).has_table("bench_docs") is False:
            raise SystemExit("no table bench_docs: run python -m bench.query first")
        vectors = connection.execute(
            sa.text("SELECT embedding FROM bench_docs ORDER BY md5(id::text) LIMIT :n"),
            {"n": args.queries},
        ).scalars()
        queries = np.stack([np.asarray(v.to_numpy(), np.float32) for v in vectors])
    uri = libpq_uri(engine.url)
    results = []
    for threshold, best in ((500, "pg iterative"), (1, "pg exact")):
        plans = raw_plans(uri, True)
        runners: dict[str, Any] = {"pg": _raw_runner(plans[best], threshold)}
        if args.cold and best != "pg exact":
            runners["whole-table scan"] = _raw_runner(plans["pg exact"], threshold)
        connections = [
            engine.connect().execution_options(isolation_level="AUTOCOMMIT") for _ in range(3)
        ]
        runners["semdb execution"] = _execution_runner(connections[0], table, threshold)
        runners["PreparedSearch"] = _prepared_runner(connections[1], table, threshold, Counter())
        runners["semdb.search"] = _semdb_runner(
            connections[2], table, table.c.bucket < threshold, "auto", Counter()
        )
        times, _ = _measure(runners, queries, 1)
        for plan in plans.values():
            plan.connection.close()
        for connection in connections:
            connection.close()
        medians = {name: float(np.median(seconds)) for name, seconds in times.items()}
        row = {
            "selectivity": f"{threshold / 10:g}%",
            "pg_plan": best,
            "median_us": {name: value * 1e6 for name, value in medians.items()},
        }
        results.append(row)
    names = ["pg", "semdb execution", "PreparedSearch", "semdb.search"]
    print_table(
        f"median µs per query, {args.queries} queries" + (", cold" if args.cold else ""),
        ["filter", "pg plan", *names, "execution - pg", "Prepared - execution"],
        [
            [
                row["selectivity"],
                row["pg_plan"],
                *[row["median_us"][name] for name in names],
                row["median_us"]["semdb execution"] - row["median_us"]["pg"],
                row["median_us"]["PreparedSearch"] - row["median_us"]["semdb execution"],
            ]
            for row in results
        ],
    )
    path = write_result(
        "query-overhead" + ("-cold" if args.cold else ""),
        {"queries": args.queries, "cold": args.cold, "results": results, "machine": machine()},
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
