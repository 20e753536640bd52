"""Read-your-writes on a real streaming replica: 1,000 tries.

    python -m bench.replica                 # 1,000 tries, 5,000 rows of 64 dimensions
    python -m bench.replica --tries 200

An embedded server (a temporary SEMDB_HOME) and a hot standby of it (pg_basebackup -R,
semdb.db.servers.LocalServer). Each try commits one row with a new vector on the primary,
takes ``semdb.commit_lsn``, waits on the replica with ``semdb.wait_for_replay`` and searches
the replica for that vector (filtered by the row's tenant): the row must come back first.
The same loop without the wait counts how often the replica had not caught up yet.

Results: a table, and bench/results/replica.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
from bench.common import machine, print_table
from bench.data import write_result
from semdb.db.migrate import upgrade
from semdb.db.servers import LocalServer
from semdb.orm import HNSW, embedding_column

DIM = 64


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "bench_replica_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[int] = mapped_column(index=True)
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "tenant", model="none", dimension=DIM, index=HNSW(), sync="manual"
    )


def tries(
    primary: sa.Engine, replica: sa.Engine, n: int, *, wait: bool, start: int
) -> dict[str, float]:
    rng = np.random.default_rng(start)
    found, waits, searches = 0, [], []
    with Session(primary) as writer, Session(replica) as reader:
        for attempt in range(n):
            vector = rng.normal(size=DIM).astype(np.float32)
            key, tenant = start + attempt, attempt % 10
            writer.add(Note(id=key, tenant=tenant, embedding=vector))
            writer.commit()
            if wait:
                lsn = semdb.commit_lsn(writer)
                waits.append(semdb.wait_for_replay(reader, lsn, timeout=10))
            began = time.perf_counter()
            hits = semdb.search(reader, Note.embedding, vector, k=1, where=Note.tenant == tenant)
            searches.append(time.perf_counter() - began)
            found += [hit.row.id for hit in hits] == [key]
            reader.rollback()
    result = {"tries": n, "found": found, "search_ms_median": statistics.median(searches) * 1e3}
    if waits:
        ordered = sorted(waits)
        result["wait_ms_median"] = statistics.median(waits) * 1e3
        result["wait_ms_p99"] = ordered[int(0.99 * (len(ordered) - 1))] * 1e3
        result["wait_ms_max"] = ordered[-1] * 1e3
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="semdb-bench-replica-") as folder:
        home = Path(folder)
        server = semdb.EmbeddedServer(home / "primary")
        url = server.start()
        replica_server = LocalServer(home / "replica")
        try:
            primary = semdb.create_engine(url)
            upgrade(primary)
            Base.metadata.create_all(primary)
            vectors = np.random.default_rng(0).normal(size=(args.rows, DIM)).astype(np.float32)
            with primary.begin() as connection:
                connection.execute(
                    sa.insert(Note.__table__),
                    [{"id": i, "tenant": i % 10, "embedding": v} for i, v in enumerate(vectors)],
                )
                connection.exec_driver_sql("ANALYZE bench_replica_notes")
            replica_server.basebackup(server.socket_dir)
            replica_server.start()
            replica = semdb.create_read_engine(replica_server.url())
            with_wait = tries(primary, replica, args.tries, wait=True, start=1_000_000)
            without = tries(primary, replica, args.tries, wait=False, start=2_000_000)
            replica.dispose()
            primary.dispose()
        finally:
            replica_server.stop()
            server.stop()
    rows = [
        ("commit_lsn + wait_for_replay", with_wait["found"], with_wait["tries"],
         with_wait["wait_ms_median"], with_wait["wait_ms_p99"], with_wait["search_ms_median"]),
        ("no wait", without["found"], without["tries"], float("nan"), float("nan"),
         without["search_ms_median"]),
    ]  # fmt: skip
    print_table(
        f"read-your-writes on a streaming replica ({args.rows:,} rows, {DIM}-d)",
        ["mode", "found", "tries", "wait ms (median)", "wait ms (p99)", "search ms (median)"],
        rows,
    )
    write_result("replica", {"machine": machine(), "with_wait": with_wait, "without_wait": without})


if __name__ == "__main__":
    main()
