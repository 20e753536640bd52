"""A tenant's search on a table of 20 LIST partitions against the same search on a table
holding that tenant's rows alone, side by side.

    python -m bench.partitions                    # 20 tenants x 2,000 rows, 64-d, 300 queries
    python -m bench.partitions --per-tenant 5000 --queries 500

Both tables have the same HNSW index (m=16, ef_construction=64) and the same rows for the
tenant; the partitioned one has 19 more tenants. Each query runs ``semdb.search(..., k=10,
where=tenant == T)`` on both, interleaved, on one Session each, with plan auto, index and
exact; per plan, the best of ``--rounds`` rounds' medians is compared (the order alternates
between rounds; the machine may be shared), and the hits of the two are compared in the
first round. EXPLAIN shows which partitions each plan reads.

Results: a table, and bench/results/partitions.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
from bench.common import engine as make_engine
from bench.common import machine, print_table
from bench.data import write_result
from semdb.orm import HNSW, embedding_column
from semdb.retrieval.explain import plan_nodes

DIM = 64
TENANTS = 20
TENANT = 7


class Base(DeclarativeBase):
    pass


class Partitioned(Base):
    __tablename__ = "bench_part_tenants"
    __table_args__ = {"postgresql_partition_by": "LIST (tenant)"}
    tenant: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "tenant", model="none", dimension=DIM, index=HNSW(), sync="manual"
    )


class Standalone(Base):
    __tablename__ = "bench_part_one_tenant"
    tenant: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "tenant", model="none", dimension=DIM, index=HNSW(), sync="manual"
    )


def vectors_of(tenant: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(tenant)
    centres = rng.normal(size=(10, DIM))
    points = centres[rng.integers(0, 10, n)] + 0.5 * rng.normal(size=(n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def build(engine: sa.Engine, per_tenant: int) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        for tenant in range(TENANTS):
            connection.exec_driver_sql(
                f"CREATE TABLE bench_part_tenants_{tenant} PARTITION OF bench_part_tenants "
                f"FOR VALUES IN ({tenant})"
            )
    for tenant in range(TENANTS):
        rows = [
            {"tenant": tenant, "id": i, "embedding": v}
            for i, v in enumerate(vectors_of(tenant, per_tenant))
        ]
        with engine.begin() as connection:
            semdb.copy_rows(connection, Partitioned.__table__, rows)
            if tenant == TENANT:
                semdb.copy_rows(connection, Standalone.__table__, rows)
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE bench_part_tenants")
        connection.exec_driver_sql("ANALYZE bench_part_one_tenant")


def relations(session: Session, column: Any, where: Any, query: np.ndarray) -> list[str]:
    _, plan = semdb.explain_search(session, column, query, k=10, where=where)
    return sorted({node["Relation Name"] for node in plan_nodes(plan) if "Relation Name" in node})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-tenant", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="reuse the tables of a past run")
    args = parser.parse_args()
    engine = make_engine()
    if not args.keep:
        started = time.perf_counter()
        build(engine, args.per_tenant)
        print(f"built in {time.perf_counter() - started:.1f} s")
    queries = vectors_of(1000 + TENANT, args.queries)
    targets = {
        "20 partitions": (Partitioned.embedding, Partitioned.tenant == TENANT),
        "tenant alone": (Standalone.embedding, Standalone.tenant == TENANT),
    }
    rows, results = [], {}
    with Session(engine) as first, Session(engine) as second:
        sessions = dict(zip(targets, (first, second), strict=True))
        read = {
            name: " ".join(relations(sessions[name], column, where, queries[0]))
            for name, (column, where) in targets.items()
        }
        for mode in ("auto", "index", "exact"):
            times: dict[str, list[float]] = {name: [] for name in targets}
            paths: dict[str, str] = {}
            same = 0
            for name, (column, where) in targets.items():
                for q in queries[:20]:  # warm up
                    semdb.search(sessions[name], column, q, k=10, where=where, plan=mode)
            rounds: dict[str, list[float]] = {name: [] for name in targets}
            for round_ in range(args.rounds):
                times = {name: [] for name in targets}
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for q in queries:
                    hits = {}
                    for name in order:
                        column, where = targets[name]
                        began = time.perf_counter()
                        result = semdb.search(
                            sessions[name], column, q, k=10, where=where, plan=mode
                        )
                        times[name].append(time.perf_counter() - began)
                        hits[name] = [hit.row.id for hit in result]
                        paths[name] = result.plan.path + (
                            " plain first" if result.plan.plain_first else ""
                        )
                    if round_ == 0:
                        same += hits["20 partitions"] == hits["tenant alone"]
                for name in targets:
                    rounds[name].append(statistics.median(times[name]))
            # the best round's median: the machine is shared, bursts of load hit one round
            medians = {name: min(values) * 1e3 for name, values in rounds.items()}
            ratio = medians["20 partitions"] / medians["tenant alone"]
            results[mode] = {"median_ms": medians, "ratio": ratio, "same_hits": same,
                             "paths": paths}  # fmt: skip
            rows.append(
                (
                    f"plan={mode}",
                    medians["20 partitions"],
                    paths["20 partitions"],
                    medians["tenant alone"],
                    paths["tenant alone"],
                    ratio,
                    f"{same}/{args.queries}",
                )
            )
    print_table(
        f"search k=10, tenant {TENANT} of {TENANTS} ({args.per_tenant:,} rows each, {DIM}-d, "
        f"{args.queries} queries); EXPLAIN reads {read['20 partitions']} / "
        f"{read['tenant alone']}",
        ["plan", "partitions ms", "path", "alone ms", "path", "ratio", "same hits"],
        rows,
    )
    write_result(
        "partitions",
        {
            "machine": machine(),
            "per_tenant": args.per_tenant,
            "tenants": TENANTS,
            "queries": args.queries,
            "relations_read": read,
            "results": results,
        },
    )
    engine.dispose()


if __name__ == "__main__":
    main()
