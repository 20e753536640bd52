"""Text searches from an asyncio application: semdb.aio against sequential and threaded sync use.

    python -m bench.async                   # the bench_docs table of bench/search.py (~108k rows)
    python -m bench.async --queries 256 --clients 32

Run ``python -m bench.search`` first: it loads the table (debdesc texts, MiniLM vectors, HNSW)
and exports the MiniLM bundle. Each query is a debdesc text, embedded with semdb's
ONNX embedder (fp32, CPU) and searched with a filter passing 10% of the rows
(``bucket < 100``), k=10. Side by side, in one run:

- ``sequential``: ``semdb.search(session, ..., text, embedder=...)``, one query after another;
- ``4 threads``: the same sync call from four threads, each with its own session;
- ``async, 32 clients``: 32 tasks on one event loop, each running
  ``await semdb.aio.search(session, ..., text, embedder=...)`` on its own AsyncSession;
  concurrent texts are embedded together (semdb.aio.QueryBatcher).

Reported: queries/s of each, the ratios, the event loop's lag while the async clients ran (a
ticker task that sleeps 1 ms and measures how late it wakes: p99 and max), and whether every
async result has the sync API's rows. Results: a table, and bench/results/async.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bench.common import engine as make_engine
from bench.common import machine, print_table
from bench.data import write_result

THRESHOLD = 100  # bucket < 100: 10% of the rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import semdb
    import semdb.aio
    from bench.search import _model, embedder, load_data

    engine = make_engine()
    table = _model().__table__
    with engine.connect() as connection:
        if connection.execute(sa.text("SELECT to_regclass('bench_docs')")).scalar() is None:
            raise SystemExit("run python -m bench.search first: it loads the table")
    texts, _ = load_data(None)
    rng = np.random.default_rng(3)
    queries = [texts[i][2] for i in rng.choice(len(texts), size=args.queries, replace=False)]
    embed = embedder()
    where = table.c.bucket < THRESHOLD
    statement = sa.select(table.c.id)

    def sync_search(session: Session, text: str) -> list[int]:
        hits = semdb.search(
            session, table.c.embedding, text, embedder=embed, k=10, where=where, statement=statement
        )
        session.rollback()
        return [hit.row[0] for hit in hits]

    for text in queries[:8]:  # warm up
        with Session(engine) as session:
            sync_search(session, text)

    def run_sequential(batch: list[str]) -> tuple[float, list[list[int]]]:
        started = time.perf_counter()
        with Session(engine) as session:
            found = [sync_search(session, text) for text in batch]
        return len(batch) / (time.perf_counter() - started), found

    def run_threads(batch: list[str]) -> float:
        def worker(chunk: list[str]) -> None:
            with Session(engine) as session:
                for text in chunk:
                    sync_search(session, text)

        threads = [
            threading.Thread(target=worker, args=(batch[i :: args.threads],))
            for i in range(args.threads)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(batch) / (time.perf_counter() - started)

    async def run_async(batch: list[str]) -> tuple[float, list[list[int]], list[float]]:
        async_engine = semdb.aio.create_async_engine(engine.url, pool_size=args.clients)
        lags: list[float] = []
        results: list[list[int]] = [[] for _ in batch]
        next_query = iter(range(len(batch)))

        async def ticker() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - before - 0.001)

        async def client() -> None:
            async with AsyncSession(async_engine) as session:
                for i in next_query:
                    hits = await semdb.aio.search(
                        session,
                        table.c.embedding,
                        batch[i],
                        embedder=embed,
                        k=10,
                        where=where,
                        statement=statement,
                    )
                    await session.rollback()
                    results[i] = [hit.row[0] for hit in hits]

        async def warm(session: AsyncSession) -> None:
            await semdb.aio.search(session, table.c.embedding, batch[0], embedder=embed, k=10)

        await asyncio.gather(*(warm(AsyncSession(async_engine)) for _ in range(args.clients)))
        tick = asyncio.create_task(ticker())
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        elapsed = time.perf_counter() - started
        tick.cancel()
        await async_engine.dispose()
        return len(batch) / elapsed, results, lags

    # Rounds: each mode runs each round's queries, the modes in turn, so that a burst of
    # load from other jobs falls on all of them; queries/s is the median over rounds.
    rates: dict[str, list[float]] = {"sequential": [], "threads": [], "async": []}
    expected: list[list[int]] = []
    found: list[list[int]] = []
    lags: list[float] = []
    per_round = len(queries) // args.rounds
    for r in range(args.rounds):
        batch = queries[r * per_round : (r + 1) * per_round]
        rate, want = run_sequential(batch)
        rates["sequential"].append(rate)
        expected.extend(want)
        rates["threads"].append(run_threads(batch))
        rate, got, lag = asyncio.run(run_async(batch))
        rates["async"].append(rate)
        found.extend(got)
        lags.extend(lag)
    sequential, threaded, concurrent = (float(np.median(rates[m])) for m in rates)
    same = sum(a == b for a, b in zip(found, expected, strict=True))
    lag_ms = np.array(lags) * 1000
    row = {
        "queries": len(queries),
        "sequential_qps": sequential,
        "threads_qps": threaded,
        "async_qps": concurrent,
        "async_vs_sequential": concurrent / sequential,
        "async_vs_threads": concurrent / threaded,
        "loop_lag_p99_ms": float(np.percentile(lag_ms, 99)),
        "loop_lag_max_ms": float(lag_ms.max()),
        "same_rows": same,
        "rounds": rates,
    }
    print_table(
        f"text searches (embed + 10% filter, k=10) over bench_docs, {len(queries)} queries",
        ["", "queries/s", "vs sequential"],
        [
            ["sequential", sequential, "1.00x"],
            [f"{args.threads} threads", threaded, f"{threaded / sequential:.2f}x"],
            [f"async, {args.clients} clients", concurrent, f"{concurrent / sequential:.2f}x"],
        ],
    )
    print(
        f"async vs {args.threads} threads: {concurrent / threaded:.2f}x; event loop lag p99 "
        f"{row['loop_lag_p99_ms']:.1f} ms, max {row['loop_lag_max_ms']:.1f} ms; "
        f"{same}/{len(found)} results identical to the sync API's"
    )
    path = write_result(
        "async",
        {
            **row,
            "clients": args.clients,
            "threads": args.threads,
            "machine": machine(),
            "command": f"python -m bench.async --queries {args.queries} --clients {args.clients}",
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
