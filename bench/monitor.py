"""What operating semdb costs: ``semdb monitor``'s answer time, and the query log's price.

    python -m bench.monitor                    # on a copy of bench.search's 108k-row table
    python -m bench.monitor --home DIR         # another semdb home holding bench_docs

The data is ``bench.search``'s: ``bench_docs`` (about 108k MiniLM vectors of debdesc texts,
384-d, HNSW m=16 ef_construction=64, cosine). The benchmark never alters the original: it
copies bench.search's SEMDB_HOME (bench/.cache/semdb-home, its server stopped) to
bench/.cache/monitor-home once, and works there: migrates semdb's schema, registers
``bench_docs.embedding`` in semdb.vector_columns (the copy's only change) and ANALYZEs it.

Figures:

- ``semdb.monitor.monitor`` without the recall sample (median of 5 runs) and with a
  100-query recall sample (targets: under 1 s and under 10 s);
- search throughput with the query log off and on at a 10% sample (target: at most 3%
  slower), side by side: blocks of unfiltered top-10 searches (``semdb.search`` on one
  connection, vectors of stored rows as queries) alternate between off and on, the on
  blocks waiting for the log's writer to finish their entries before the clock stops.

Results: a table, and bench/results/monitor.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from bench.common import CACHE, machine, print_table

NAME = "public.bench_docs.embedding"
RESULTS = Path(__file__).resolve().parent / "results" / "monitor.json"


def prepare(home: Path, source: Path) -> Any:
    import os

    if not (home / "pgdata").exists():
        if not (source / "pgdata").exists():
            raise SystemExit(f"no {source}: run python -m bench.search first")
        print(f"copying {source} to {home} (once)")
        shutil.copytree(
            source, home, ignore=shutil.ignore_patterns("server.lock", "holders.json", "*.pid")
        )
    os.environ["SEMDB_HOME"] = str(home)
    os.environ.pop("SEMDB_DATABASE_URL", None)
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import semdb
    import semdb.alembic  # op.create_embedding_sync
    from semdb.db.migrate import upgrade

    engine = semdb.create_engine()
    upgrade(engine)
    with engine.begin() as connection:
        known = connection.execute(
            sa.text("SELECT 1 FROM semdb.vector_columns WHERE table_name = 'bench_docs'")
        ).first()
        if known is None:
            Operations(MigrationContext.configure(connection)).create_embedding_sync(
                "bench_docs",
                "embedding",
                sources=["body"],
                model="all-MiniLM-L6-v2",
                dimension=384,
            )
        connection.execute(sa.text("ANALYZE bench_docs"))
    return engine


def time_monitor(engine: Any, runs: int, recall: int) -> list[float]:
    from semdb.monitor import monitor

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        report = monitor(engine, columns=[NAME], recall_queries=recall)
        times.append(time.perf_counter() - started)
    column = report.columns[0]
    print(json.dumps(report.as_dict()["columns"][0], default=str)[:1500])
    assert column.coverage is not None
    return times


def query_log_cost(engine: Any, blocks: int, per_block: int, sample: float) -> dict[str, Any]:
    import semdb
    from semdb.orm.declaration import embedding_column
    from semdb.orm.indexes import HNSW

    table = sa.Table(
        "bench_docs",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text),
        embedding_column(
            "body", model="all-MiniLM-L6-v2", dimension=384, index=HNSW(), name="embedding"
        ).column,
    )
    with engine.connect() as connection:
        vectors = [
            np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, np.float32)
            for v in connection.execute(
                sa.text("SELECT embedding FROM bench_docs TABLESAMPLE SYSTEM (1) LIMIT :n"),
                {"n": per_block},
            ).scalars()
        ]
    statement = sa.select(table.c.id)
    timings: dict[str, list[float]] = {"off": [], "on": []}
    logged = 0
    with engine.connect() as connection:
        for vector in vectors[:50]:  # warm caches
            semdb.search(connection, table.c.embedding, vector, k=10, statement=statement)
        connection.rollback()
        for block in range(blocks):
            order = ["off", "on"] if block % 2 == 0 else ["on", "off"]
            for mode in order:
                if mode == "on":
                    semdb.query_log.enable(engine, sample=sample)
                started = time.perf_counter()
                for vector in vectors:
                    result = semdb.search(
                        connection, table.c.embedding, vector, k=10, statement=statement
                    )
                    connection.rollback()
                    logged += result.query_id is not None
                if mode == "on":
                    semdb.query_log.flush(engine)
                timings[mode].append(time.perf_counter() - started)
                if mode == "on":
                    semdb.query_log.disable(engine)
    off, on = sum(timings["off"]), sum(timings["on"])
    searches = blocks * len(vectors)
    return {
        "searches_per_mode": searches,
        "logged": logged,
        "off_qps": searches / off,
        "on_qps": searches / on,
        "cost": on / off - 1.0,
        "block_ratio_median": statistics.median(
            b / a for a, b in zip(timings["off"], timings["on"], strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=CACHE / "monitor-home")
    parser.add_argument("--source", type=Path, default=CACHE / "semdb-home")
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=200)
    parser.add_argument("--sample", type=float, default=0.1)
    parser.add_argument("--skip-log", action="store_true")
    args = parser.parse_args()
    engine = prepare(args.home, args.source)
    fast = time_monitor(engine, 5, 0)
    with_recall = time_monitor(engine, 2, 100)
    rows = [
        ("semdb monitor (no recall), s", statistics.median(fast), 1.0),
        ("semdb monitor --recall 100, s", statistics.median(with_recall), 10.0),
    ]
    result: dict[str, Any] = {
        "machine": machine(),
        "monitor_seconds": fast,
        "monitor_recall_100_seconds": with_recall,
    }
    if not args.skip_log:
        cost = query_log_cost(engine, args.blocks, args.per_block, args.sample)
        result["query_log"] = cost
        rows += [
            ("searches/s, query log off", cost["off_qps"], float("nan")),
            (f"searches/s, query log {args.sample:.0%}", cost["on_qps"], float("nan")),
            ("query log cost (total time)", cost["cost"], 0.03),
            ("query log cost (median block ratio - 1)", cost["block_ratio_median"] - 1, 0.03),
        ]
    print_table("semdb monitor and the query log", ["figure", "measured", "target"], rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    engine.dispose()


if __name__ == "__main__":
    main()
