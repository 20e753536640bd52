"""BM25 in SQL, dense, untuned RRF and tuned hybrid search side by side, through semdb's API.

For each set (see bench/hybrid_sets.py and bench/README-hybrid.md): the corpus is loaded into
a table with MiniLM vectors (semdb's ONNX embedder), an HNSW index, the GIN index of
``fulltext="english"`` and BM25 statistics; the fusion is tuned on the set's validation
queries with :func:`semdb.retrieval.tuning.tune_hybrid` (never on test); then every test
query runs through ``semdb.keyword_search``, ``semdb.search``, ``semdb.hybrid_search`` with
RRF 1:1 k=60 (untuned) and ``semdb.hybrid_search`` with the stored choice (tuned), 100 rows
each: nDCG@10 and Recall@100.

Then, on 100k rows (bench/data.py's debdesc texts and their cached vectors): p50 latency of
a dense search and a hybrid search (k=10, 100 candidates per leg), and what the BM25
statistics' triggers cost: COPY (semdb.copy_rows) throughput and a worker-like vector
update, with and without them.

    python -m bench.hybrid                    # everything (tens of minutes on 2 cores)
    python -m bench.hybrid --queries 200      # a sample of test queries
    python -m bench.hybrid --skip-latency
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench.common import engine as bench_engine
from bench.common import machine, median, print_table
from bench.data import write_result
from bench.hybrid_sets import RetrievalSet, debdesc, set_vectors, stdlib

DIM = 384
MODEL = "all-MiniLM-L6-v2"


def _table(name: str) -> Any:
    from semdb import HNSW, embedding_column

    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = name
        id: Mapped[str] = mapped_column(primary_key=True)
        body: Mapped[str]
        embedding = embedding_column(
            "body",
            model=MODEL,
            dimension=DIM,
            sync="manual",
            fulltext="english",
            index=HNSW(m=16, ef_construction=64),
        )

    return Doc


def load(
    engine: sa.Engine, doc: Any, ids: list[str], texts: list[str], vectors: np.ndarray
) -> dict[str, float]:
    """The table filled, indexed, registered, with BM25 statistics (reused when unchanged)."""
    import semdb
    from semdb.sync.registry import register
    from semdb.sync.target import SyncTarget

    table = doc.__table__
    digest = f"{len(ids)}:{float(vectors[:, 0].sum()):.6f}:{sum(map(len, texts))}"
    with engine.connect() as connection:
        comment = connection.execute(
            sa.text("SELECT obj_description(to_regclass(:t), 'pg_class')"), {"t": table.name}
        ).scalar()
    if comment == digest:
        return {}
    timings = {}
    with engine.begin() as connection:
        table.drop(connection, checkfirst=True)
        table.create(connection)
        started = time.perf_counter()
        semdb.copy_rows(
            connection,
            doc,
            {"id": ids, "body": texts, "embedding": vectors},
            model=f"{MODEL}@bench",
        )
        timings["copy_s"] = time.perf_counter() - started
        register(connection, SyncTarget.from_column(doc.embedding))
        started = time.perf_counter()
        semdb.install_keyword_stats(connection, doc.embedding)
        timings["bm25_stats_s"] = time.perf_counter() - started
        connection.execute(sa.text(f"ANALYZE {table.name}"))
        connection.execute(sa.text(f"COMMENT ON TABLE {table.name} IS '{digest}'"))
    vacuum_postings(engine, doc)
    return timings


def vacuum_postings(engine: sa.Engine, doc: Any) -> None:
    """VACUUM ANALYZE of the column's postings after a bulk load (what autovacuum does a
    little later): sets the visibility map, so that reading postings is index-only."""
    from semdb.sync.keyword_stats import postings_sql
    from semdb.sync.target import SyncTarget

    name = postings_sql(SyncTarget.from_column(doc.embedding)).as_string(None)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"VACUUM (ANALYZE) {name}")


def ndcg10(ranking: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, key in enumerate(ranking[:10]) if key in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return dcg / ideal


def recall100(ranking: list[str], relevant: set[str]) -> float:
    return len(relevant & set(ranking[:100])) / len(relevant)


def evaluate_set(
    engine: sa.Engine, data: RetrievalSet, queries: int | None, validation: int | None
) -> dict[str, Any]:
    from semdb.retrieval.tuning import describe, tune_hybrid

    doc_vectors, query_vectors = set_vectors(data)
    doc = _table(f"bench_hybrid_{data.name}")
    print(f"[{data.name}] {len(data.docs)} documents, {len(data.test)} test queries")
    timings = load(engine, doc, data.doc_ids, data.docs, doc_vectors)
    column = doc.embedding
    light = sa.select(doc.id)
    chosen_validation = (
        sorted(data.validation)[:validation] if validation else sorted(data.validation)
    )
    with engine.begin() as connection:
        started = time.perf_counter()
        tuning = tune_hybrid(
            connection,
            column,
            data.queries,
            {q: {d: 1.0 for d in data.validation[q]} for q in chosen_validation},
            vectors=query_vectors,
        )
        tune_s = time.perf_counter() - started
    print(
        f"  tuned on {tuning.queries} validation queries in {tune_s:.0f} s: "
        f"{describe(tuning.fusion)} (validation nDCG@10 {tuning.ndcg:.4f}; "
        f"dense {tuning.semantic_ndcg:.4f}, BM25 {tuning.keyword_ndcg:.4f})"
    )
    test_ids = sorted(data.test)
    if queries is not None and queries < len(test_ids):
        rng = np.random.default_rng(0)
        test_ids = sorted(rng.choice(test_ids, size=queries, replace=False).tolist())
    methods = ["BM25 (SQL)", "dense", "hybrid RRF untuned", "hybrid tuned"]
    scores: dict[str, dict[str, list[float]]] = {
        m: {"ndcg": [], "recall": [], "ms": []} for m in methods
    }
    with engine.connect() as connection:
        for n, q in enumerate(test_ids):
            text, vector, relevant = data.queries[q], query_vectors[q], data.test[q]
            for method in methods:
                started = time.perf_counter()
                ranking = _ranking(connection, method, column, light, text, vector)
                scores[method]["ms"].append(1000 * (time.perf_counter() - started))
                scores[method]["ndcg"].append(ndcg10(ranking, relevant))
                scores[method]["recall"].append(recall100(ranking, relevant))
            if (n + 1) % 200 == 0:
                print(f"  {n + 1}/{len(test_ids)} queries", flush=True)
    summary = {
        m: {
            "ndcg@10": float(np.mean(v["ndcg"])),
            "recall@100": float(np.mean(v["recall"])),
            "p50_ms_k100": median(v["ms"]),
        }
        for m, v in scores.items()
    }
    better_leg = max(summary["BM25 (SQL)"]["ndcg@10"], summary["dense"]["ndcg@10"])
    return {
        "documents": len(data.docs),
        "test_queries": len(test_ids),
        "validation_queries": tuning.queries,
        "load": timings,
        "tuning": {
            "chosen": describe(tuning.fusion),
            "validation_ndcg@10": tuning.ndcg,
            "validation_dense": tuning.semantic_ndcg,
            "validation_bm25": tuning.keyword_ndcg,
            "seconds": tune_s,
            "grid": tuning.scores,
        },
        "methods": summary,
        "tuned_minus_better_leg_points": 100 * (summary["hybrid tuned"]["ndcg@10"] - better_leg),
    }


def _ranking(
    connection: sa.Connection, method: str, column: Any, light: Any, text: str, vector: Any
) -> list[str]:
    import semdb

    if method == "BM25 (SQL)":
        hits = semdb.keyword_search(connection, column, text, k=100, statement=light)
    elif method == "dense":
        hits = semdb.search(connection, column, vector, k=100, statement=light)
    elif method == "hybrid RRF untuned":
        hits = semdb.hybrid_search(
            connection,
            column,
            text,
            vector=vector,
            k=100,
            statement=light,
            fusion="rrf",
            weights=(1.0, 1.0),
            rrf_k=60,
        )
    else:  # the stored, tuned fusion
        hits = semdb.hybrid_search(connection, column, text, vector=vector, k=100, statement=light)
    return [hit.row[0] for hit in hits]


def latency(engine: sa.Engine, samples: int, rounds: int = 3) -> dict[str, Any]:
    """p50 of dense, hybrid and BM25 search (k=10) on the 108,896 rows of bench/data.py,
    measured side by side: each query runs the three searches back to back, in an order that
    rotates from query to query, ``rounds`` times over the sample (the first round warms
    the cache and is not counted)."""
    import os

    import semdb
    from bench.data import table_rows
    from bench.hybrid_sets import embedder

    items, matrix = table_rows()
    doc = _table("bench_hybrid_latency")
    ids = [f"{i}" for i in range(len(items))]
    load(engine, doc, ids, [item.text for item in items], matrix)
    data = debdesc()
    chosen = sorted(data.test)[:samples]
    texts = [data.queries[q] for q in chosen]
    vectors = embedder().embed(texts, kind="query")
    column = doc.embedding
    searches = {
        "dense": lambda c, t, v: semdb.search(c, column, v, k=10),
        "hybrid": lambda c, t, v: semdb.hybrid_search(c, column, t, vector=v, k=10),
        "bm25": lambda c, t, v: semdb.keyword_search(c, column, t, k=10),
    }
    names = list(searches)
    times: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()
    with engine.connect() as connection:
        for round_ in range(rounds):
            for n, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
                order = names[n % 3 :] + names[: n % 3]
                for name in order:
                    started = time.perf_counter()
                    searches[name](connection, text, vector)
                    if round_ > 0:
                        times[name].append(time.perf_counter() - started)
    result: dict[str, Any] = {
        "rows": len(items),
        "queries": len(chosen),
        "measured_rounds": rounds - 1,
        "load_average_before_after": [load_before, os.getloadavg()],
    }
    for name in names:
        result[f"{name}_p50_ms"] = 1000 * median(times[name])
        result[f"{name}_p90_ms"] = 1000 * float(np.percentile(times[name], 90))
    result["hybrid_over_dense"] = result["hybrid_p50_ms"] / result["dense_p50_ms"]
    return result


def upkeep(
    engine: sa.Engine, rows: int, *, tables: tuple[bool, ...] = (True, False), repeats: int = 1
) -> dict[str, Any]:
    """COPY and a worker-like vector UPDATE of ``rows`` rows without BM25 upkeep, with the
    writer's triggers (statistics and postings) and with deferred upkeep (keys recorded;
    the fold after the COPY timed apart), into a table with its declared indexes (HNSW,
    GIN) and without indexes; each triple measured back to back ``repeats`` times
    (medians)."""
    import os

    import semdb
    from bench.data import table_rows
    from semdb.sync.registry import register
    from semdb.sync.target import SyncTarget

    items, matrix = table_rows()
    texts = [item.text for item in items[:rows]]
    vectors = matrix[:rows]
    ids = [str(i) for i in range(rows)]
    out: dict[str, Any] = {"rows": rows, "repeats": repeats, "load_average": os.getloadavg()}
    runs: dict[str, dict[str, list[float]]] = {}
    modes = {
        "none": "without BM25 triggers",
        "writer": "with BM25 triggers",
        "deferred": "deferred",
    }
    for indexes in tables:
        for _ in range(repeats):
            for mode, name in modes.items():
                doc = _table("bench_hybrid_upkeep")
                table = doc.__table__
                with engine.begin() as connection:
                    table.drop(connection, checkfirst=True)
                    table.create(connection)
                    if not indexes:
                        for index in table.indexes:
                            index.drop(connection)
                    register(connection, SyncTarget.from_column(doc.embedding))
                    if mode != "none":
                        semdb.install_keyword_stats(
                            connection, doc.embedding, deferred=mode == "deferred"
                        )
                with engine.begin() as connection:
                    started = time.perf_counter()
                    semdb.copy_rows(
                        connection,
                        doc,
                        {"id": ids, "body": texts, "embedding": vectors},
                        model=f"{MODEL}@bench",
                    )
                    copy_s = time.perf_counter() - started
                fold_s = None
                if mode == "deferred":  # the work moved out of the writer
                    with engine.begin() as connection:
                        started = time.perf_counter()
                        semdb.refresh_keyword_stats(connection, doc.embedding)
                        fold_s = time.perf_counter() - started
                with engine.begin() as connection:
                    started = time.perf_counter()
                    connection.execute(
                        sa.text("UPDATE bench_hybrid_upkeep SET embedding = embedding")
                    )
                    update_s = time.perf_counter() - started
                where = "indexed" if indexes else "no indexes"
                label = f"{where}, {name}"
                run = runs.setdefault(label, {"copy": [], "update": [], "fold": []})
                run["copy"].append(rows / copy_s)
                run["update"].append(rows / update_s)
                if fold_s is not None:
                    run["fold"].append(rows / fold_s)
                print(f"  {label}: copy {rows / copy_s:,.0f} rows/s, ", end="")
                print(f"vector update {rows / update_s:,.0f} rows/s", end="")
                print("" if fold_s is None else f", fold {rows / fold_s:,.0f} rows/s", flush=True)
                with engine.begin() as connection:
                    if mode != "none":
                        semdb.uninstall_keyword_stats(connection, doc.embedding)
                    table.drop(connection)
    for label, run in runs.items():
        out[label] = {
            "copy_rows_per_s": median(run["copy"]),
            "vector_update_rows_per_s": median(run["update"]),
            "copy_runs": run["copy"],
            **({"fold_rows_per_s": median(run["fold"])} if run["fold"] else {}),
        }
    for indexes in tables:
        where = "indexed" if indexes else "no indexes"
        without = out[f"{where}, without BM25 triggers"]
        with_ = out[f"{where}, with BM25 triggers"]
        out[f"{where}: copy cost"] = 1 - with_["copy_rows_per_s"] / without["copy_rows_per_s"]
        out[f"{where}: vector update cost"] = (
            1 - with_["vector_update_rows_per_s"] / without["vector_update_rows_per_s"]
        )
        deferred = out[f"{where}, deferred"]
        out[f"{where}: deferred copy cost"] = (
            1 - deferred["copy_rows_per_s"] / without["copy_rows_per_s"]
        )
        out[f"{where}: deferred vector update cost"] = (
            1 - deferred["vector_update_rows_per_s"] / without["vector_update_rows_per_s"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, help="test queries per set (default: all)")
    parser.add_argument("--validation", type=int, help="validation queries (default: all)")
    parser.add_argument("--sets", default="debdesc,stdlib")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--upkeep-rows", type=int, default=20000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--latency-only", action="store_true", help="only the latency and upkeep measurements"
    )
    parser.add_argument("--skip-upkeep", action="store_true")
    parser.add_argument("--skip-latency-search", action="store_true")
    parser.add_argument(
        "--upkeep-unindexed-only", action="store_true", help="upkeep into a table without indexes"
    )
    parser.add_argument("--upkeep-repeats", type=int, default=1)
    args = parser.parse_args()
    engine = bench_engine()
    results: dict[str, Any] = {"machine": machine(), "model": f"{MODEL} (semdb ONNX fp32)"}
    sets = {"debdesc": debdesc, "stdlib": lambda: stdlib(engine)}
    for name in [] if args.latency_only else args.sets.split(","):
        results[name] = evaluate_set(engine, sets[name](), args.queries, args.validation)
        rows = [
            (method, v["ndcg@10"], v["recall@100"], v["p50_ms_k100"])
            for method, v in results[name]["methods"].items()
        ]
        print_table(
            f"{name}: {results[name]['test_queries']} test queries, tuned: "
            f"{results[name]['tuning']['chosen']}",
            ["method", "nDCG@10", "Recall@100", "p50 ms (k=100)"],
            rows,
        )
    if not args.skip_latency:
        if not args.skip_latency_search:
            results["latency"] = latency(engine, args.latency_queries)
            print("latency:", results["latency"])
        if not args.skip_upkeep:
            tables = (False,) if args.upkeep_unindexed_only else (True, False)
            results["upkeep"] = upkeep(
                engine, args.upkeep_rows, tables=tables, repeats=args.upkeep_repeats
            )
            print("upkeep:", {k: v for k, v in results["upkeep"].items() if "cost" in k})
    path = write_result("hybrid-latency" if args.latency_only else "hybrid", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
