"""Search latency over a chunked column vs an unchunked one with the same parent rows.

    python -m bench.chunks_latency [--parents 10000] [--chunks 4] [--queries 50] [--keep]

Synthetic 384-d vectors (random directions; a chunk is its parent's vector plus noise), one
table with an unchunked column and one with a chunked column (``--chunks`` chunks per
parent), HNSW on both; ``semdb.search`` k=10, unfiltered and with a filter on a parent column
passing 30%, 10% and 1% of the rows. Medians (and minimums: the least disturbed run on a shared
machine) of ``--queries`` searches, the two sides interleaved, in the same run. ``--keep``
leaves the tables loaded and reuses them next time (the load and HNSW builds take minutes).

``--real``: MiniLM vectors of debdesc texts (bench/.cache) instead of random directions.
Each row also gives the CPU time of a search (this process's, plus its server process's read
from ``/proc/PID/schedstat``), medians: on a machine shared with other jobs the wall times
mostly measure the wait for a core, the CPU time much less so. ``python -m bench.chunks``
runs this with its other targets (``--only latency``).

Before (10,000 parents, 4 chunks each, random, 40 queries, one run): 10% filter 1.98 ms vs
13.9 ms (7x, exact): the exact path sorted every passing chunk by parent, with parallel
workers whose start and tuple queue were most of the time (EXPLAIN ANALYZE: Gather Merge
27.8 ms over a 9.8 ms scan). Then the exact path kept a top-N of the passing chunks and
planned without workers (``semdb.serial_plan()``, migration 0008): ``--real``, load 4,
none 1.9-2.5x, 30% 4.2x, 10% 3.3x, 1% 2.3x (wall medians).

Where the time went (EXPLAIN ANALYZE, random vectors, 10,000 x 4): at 30% the index path's
iterative scan went on until 40 chunks passed (78 scanned, each joined to its parent for
the filter), against 10 rows for the unchunked column; at 10% the exact path reads 4,000
chunks through 1,000 primary-key probes and computes 4,000 distances where the unchunked
one reads 1,000 rows (server 2.9 ms against 0.55 ms, median of 20); building the chunked
statement again for each new filter object cost ~0.6 ms of Python.
Now: 2 chunks per parent wanted on the index path (at least 20), and the exact path ranks
every passing parent by a LATERAL min() over its own chunks, its filter outermost (the
statement is built once), and looks up which chunk matched for the k parents kept only.
Old (93a65e5) and new code on the same tables, 100 queries a filter, runs interleaved
old/new twice at load 4-4.6 (CPU ms per search, client + server, unchunked / chunked):

| filter | before (two runs) | after (two runs) |
|---|---|---|
| none (index) | 1.72x, 1.53x | 1.42x, 1.45x |
| 30% (index) | 2.93x, 2.83x | 2.20x, 2.09x |
| 10% (exact) | 3.21x, 3.13x | 2.79x, 2.45x |
| 1% (exact) | 2.28x, 2.34x | 1.61x, 1.63x |

Wall medians in the same runs: none 1.72x, 2.07x -> 2.47x, 1.57x; 30% 3.11x, 2.80x ->
2.13x, 2.13x; 10% 4.12x, 3.70x -> 2.91x, 2.34x; 1% 2.93x, 2.69x -> 1.57x, 1.32x. Still above
2x at 30% and 10%. What is left at 10% is the data: with 4 chunks a parent the exact path
reads 4,000 chunks through 1,000 primary-key probes and computes 4,000 distances where the
unchunked search reads 1,000 rows (server 2.2 ms against 0.5 ms); at 30% the iterative scan
goes on until 20 chunks pass, each joined to its parent, against 10 rows filtered in place,
and the chunked statement is built again for each new filter object (~0.6 ms of Python; a
filter object used again, or PreparedSearch, skips it). A larger ef_search did not help the
30% case; the index path at 10% is slower still (14 ms server).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench.common import CACHE, median
from bench.common import engine as bench_engine

DIM = 384


class Base(DeclarativeBase):
    pass


class Flat(Base):
    __tablename__ = "bench_flat"
    id: Mapped[int] = mapped_column(primary_key=True)
    grp: Mapped[int] = mapped_column(index=True)
    body: Mapped[str | None]


class Chunked(Base):
    __tablename__ = "bench_chunked"
    id: Mapped[int] = mapped_column(primary_key=True)
    grp: Mapped[int] = mapped_column(index=True)
    body: Mapped[str | None]


def declare() -> None:
    import semdb

    Flat.embedding = semdb.embedding_column("body", model="bench", dimension=DIM, sync="manual")
    Chunked.embedding = semdb.embedding_column(
        "body", model="bench", dimension=DIM, sync="manual", chunking=semdb.Chunks()
    )


def text(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in vector.tolist()) + "]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parents", type=int, default=10000)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the tables")
    parser.add_argument(
        "--real",
        action="store_true",
        help="MiniLM vectors of debdesc texts (bench/.cache) instead of random directions",
    )
    args = parser.parse_args()
    measure(
        parents=args.parents,
        chunks=args.chunks,
        queries=args.queries,
        keep=args.keep,
        real=args.real,
    )


FILTERS = {"none": None, "30%": 30, "10%": 10, "1%": 1}


def measure(
    *, parents: int, chunks: int, queries: int, keep: bool, real: bool
) -> dict[str, object]:
    """Each filter of bench/query's set, the two sides interleaved query by query: medians,
    minimums and the ratio chunked / unchunked; a table, and the figures returned."""
    import semdb
    from bench.common import print_table

    declare()
    engine = bench_engine()
    kind = "real" if real else "random"
    if keep and loaded(engine, parents, chunks, kind):
        print("reusing the loaded tables")
    else:
        load(engine, parents, chunks, kind)
    if real:  # texts that are neither parents nor chunks
        vectors = np.asarray(real_vectors()[-queries:], dtype=np.float32)
    else:
        vectors = np.random.default_rng(1).standard_normal((queries, DIM)).astype(np.float32)

    def where(model: type[Flat] | type[Chunked], share: int | None) -> object:
        if share is None:
            return None
        return model.grp == 0 if share == 1 else model.grp < share

    rows: list[dict[str, object]] = []
    load_before = os.getloadavg()[0]
    sides = (("flat", Flat), ("chunked", Chunked))
    # one session (one server process) a side: its server CPU time is read around each search
    sessions = {label: Session(engine) for label, _ in sides}
    backends = {
        label: int(session.execute(sa.select(sa.func.pg_backend_pid())).scalar_one())
        for label, session in sessions.items()
    }
    try:
        for name, share in FILTERS.items():
            times: dict[str, list[float]] = {"flat": [], "chunked": []}
            cpu: dict[str, list[float]] = {"flat": [], "chunked": []}
            paths: dict[str, str] = {}
            for q in vectors:
                for label, model in sides:
                    server = server_cpu(backends[label])
                    client = time.process_time()
                    began = time.perf_counter()
                    hits = semdb.search(
                        sessions[label], model.embedding, q, k=10, where=where(model, share)
                    )
                    times[label].append(time.perf_counter() - began)
                    cpu[label].append(
                        time.process_time() - client + server_cpu(backends[label]) - server
                    )
                    assert len(hits) == 10
                    paths[label] = hits.plan.path
            flat, chunked = median(times["flat"]) * 1000, median(times["chunked"]) * 1000
            low_flat, low_chunked = min(times["flat"]) * 1000, min(times["chunked"]) * 1000
            cpu_flat, cpu_chunked = median(cpu["flat"]) * 1000, median(cpu["chunked"]) * 1000
            rows.append(
                {
                    "filter": name,
                    "unchunked_ms": flat,
                    "chunked_ms": chunked,
                    "ratio": chunked / flat,
                    "unchunked_min_ms": low_flat,
                    "chunked_min_ms": low_chunked,
                    "ratio_of_minimums": low_chunked / low_flat,
                    "unchunked_cpu_ms": cpu_flat,
                    "chunked_cpu_ms": cpu_chunked,
                    "cpu_ratio": cpu_chunked / cpu_flat if cpu_flat else float("nan"),
                    "unchunked_path": paths["flat"],
                    "chunked_path": paths["chunked"],
                }
            )
    finally:
        for session in sessions.values():
            session.close()
    load_after = os.getloadavg()[0]
    print_table(
        f"search latency, k=10, {parents:,} parents x {chunks} chunks ({kind} vectors), "
        f"{queries} searches a filter, medians (min)",
        [
            "filter",
            "unchunked ms",
            "chunked ms",
            "ratio",
            "ratio of min",
            "CPU ms (client+server)",
            "CPU ratio",
            "paths",
        ],
        [
            (
                r["filter"],
                f"{r['unchunked_ms']:.2f} ({r['unchunked_min_ms']:.2f})",
                f"{r['chunked_ms']:.2f} ({r['chunked_min_ms']:.2f})",
                f"{r['ratio']:.2f}x",
                f"{r['ratio_of_minimums']:.2f}x",
                f"{r['unchunked_cpu_ms']:.2f} / {r['chunked_cpu_ms']:.2f}",
                f"{r['cpu_ratio']:.2f}x",
                f"{r['unchunked_path']} / {r['chunked_path']}",
            )
            for r in rows
        ],
    )
    print(f"load average {load_before:.1f} before, {load_after:.1f} after")
    if not keep:
        Base.metadata.drop_all(engine)
    return {
        "parents": parents,
        "chunks_per_parent": chunks,
        "vectors": kind,
        "queries": queries,
        "filters": rows,
        "load_before": load_before,
        "load_after": load_after,
    }


def server_cpu(pid: int) -> float:
    """Seconds a server process has run on a CPU (``/proc/PID/schedstat``, nanoseconds: the
    embedded server runs on this machine); 0 where it cannot be read (a remote server)."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def real_vectors() -> np.ndarray:
    """The MiniLM vectors of the debdesc texts that bench/embed.py keeps in bench/.cache."""
    found = sorted(CACHE.glob("minilm128-*.npy"))
    if not found:
        raise SystemExit("no MiniLM vectors in bench/.cache: run python -m bench.embed first")
    return np.load(found[0], mmap_mode="r")


def loaded(engine: sa.Engine, parents: int, chunks: int, kind: str) -> bool:
    """Are the tables there, with these many parents and chunks, of this kind of vectors?"""
    with engine.connect() as connection:
        chunk_table = "bench_chunked_embedding_chunks"
        found = sa.select(sa.func.to_regclass(chunk_table))
        if connection.execute(found).scalar() is None:
            return False
        counted = connection.execute(
            sa.select(
                sa.select(sa.func.count()).select_from(Flat).scalar_subquery(),
                sa.select(sa.func.count()).select_from(sa.table(chunk_table)).scalar_subquery(),
            )
        ).one()
        body = connection.execute(sa.select(Flat.body).limit(1)).scalar()
    return tuple(counted) == (parents, parents * chunks) and body == kind


def load(engine: sa.Engine, parents_count: int, chunks: int, kind: str) -> None:
    """Random directions (a chunk: its parent's plus noise), or real MiniLM vectors (chunk c
    of parent i: the text ``c * parents + i``; the parent's vector is its first chunk's, as
    semdb stores it)."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    rng = np.random.default_rng(0)
    if kind == "real":
        real = real_vectors()
        if len(real) < parents_count * chunks + 1000:
            raise SystemExit(f"{len(real)} vectors: too few for {parents_count} x {chunks}")
        chunk_vectors = np.asarray(real[: parents_count * chunks], dtype=np.float32).reshape(
            chunks, parents_count, DIM
        )
        parents = chunk_vectors[0]
    else:
        parents = rng.standard_normal((parents_count, DIM)).astype(np.float32)
    started = time.perf_counter()
    with engine.begin() as connection:
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor:
            for table in ("bench_flat", "bench_chunked"):
                with cursor.copy(f"COPY {table} (id, grp, body, embedding) FROM STDIN") as copy:
                    for i, v in enumerate(parents):
                        copy.write_row((i, i % 100, kind, text(v)))
            with cursor.copy(
                "COPY bench_chunked_embedding_chunks (parent_id, chunk, char_start, char_end, "
                "embedding, model, content_hash) FROM STDIN"
            ) as copy:
                for i, v in enumerate(parents):
                    for c in range(chunks):
                        if kind == "real":
                            vector = chunk_vectors[c, i]
                        else:
                            vector = v + 0.8 * rng.standard_normal(DIM).astype(np.float32)
                        copy.write_row((i, c, 0, 1, text(vector), "bench@1", b"h"))
        connection.execute(sa.text("ANALYZE"))
    print(f"loaded in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
