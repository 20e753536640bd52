"""Text searches from an asyncio application: semdb.aio against sequential and threaded sync use.

    python -m bench.async                   # the bench_docs table of bench/search.py (~108k rows)
    python -m bench.async --queries 256 --clients 32
    python -m bench.async --vectors         # the same, queries given as vectors: no embedding
    python -m bench.async --embed-threads 1 --max-concurrent 2   # ORT settings to compare

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
ticker task that sleeps 1 ms and measures how late it wakes: p99 and max) next to the same
ticker on an idle loop (what the machine's scheduler alone costs), whether every async result
has the sync API's rows, and where the time goes: CPU milliseconds a query in this process
(Python, SQLAlchemy, ONNX Runtime) and in the server's backends (read from /proc for the
backends of this bench's connections), the machine's cores they kept busy, and the embedding
alone (wall and CPU ms a query text, one at a time). Results: bench/results/async.json
(async-vectors.json with ``--vectors``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bench.common import CACHE, machine, print_table
from bench.data import write_result

THRESHOLD = 100  # bucket < 100: 10% of the rows
APPLICATION = "semdb-bench-async"  # the server backends whose CPU time is counted
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def backend_cpu(engine: sa.Engine) -> dict[int, float]:
    """CPU seconds of each server backend of this bench's connections (by application_name)."""
    with engine.connect() as connection:
        pids = connection.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": APPLICATION},
        ).scalars()
        found = {}
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
        return found


class StepLog(logging.Handler):
    """Collects how long each loop step ran: asyncio's debug mode logs every step (a task's run
    up to its next await, or a callback) longer than ``loop.slow_callback_duration``."""

    def __init__(self, steps: list[float]) -> None:
        super().__init__(logging.WARNING)
        self.steps = steps

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"took ([0-9.]+) seconds", record.getMessage())
        if found:
            self.steps.append(float(found.group(1)))


class Counting:
    """The embedder, counting its calls and texts (how large the async batches were)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = self.texts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Any, **options: Any) -> Any:
        self.calls += 1
        self.texts += len(texts)
        return self.inner.embed(texts, **options)


class Meter:
    """Wall time, this process's CPU and the bench backends' CPU over one mode."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.wall = time.perf_counter()
        self.client = process_cpu()
        self.server = backend_cpu(engine)

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        client = process_cpu() - self.client
        server = sum(
            cpu - self.server.get(pid, 0.0) for pid, cpu in backend_cpu(self.engine).items()
        )
        return {"wall": wall, "client_cpu": client, "server_cpu": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--vectors", action="store_true", help="queries as vectors: no embedding")
    parser.add_argument("--embed-threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-batch", type=int, help="QueryBatcher: texts per ONNX Runtime call")
    parser.add_argument("--max-concurrent", type=int, help="QueryBatcher: embeddings at once")
    args = parser.parse_args()
    os.environ.setdefault("SEMDB_HOME", str(CACHE / "semdb-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import semdb
    import semdb.aio
    from bench.search import _model, embedder, load_data
    from semdb.embed import Embedder

    embedder()  # exports the bundle if it is missing
    embed = Embedder.load(
        CACHE / "minilm-bundle", provider="cpu", precision="fp32", threads=args.embed_threads
    )
    resolved = semdb.create_engine()  # SEMDB_DATABASE_URL, else the embedded server
    url = resolved.url.update_query_dict({"application_name": APPLICATION})
    resolved.dispose()
    engine = semdb.create_engine(url)
    table = _model().__table__
    with engine.connect() as connection:
        if connection.execute(sa.text("SELECT to_regclass('bench_docs')")).scalar() is None:
            raise SystemExit("run python -m bench.search first: it loads the table")
    texts, _ = load_data(None)
    rng = np.random.default_rng(3)
    texts_used = [texts[i][2] for i in rng.choice(len(texts), size=args.queries, replace=False)]
    queries: list[Any] = texts_used
    if args.vectors:
        queries = list(embed.embed(texts_used, kind="query"))
    where = table.c.bucket < THRESHOLD
    statement = sa.select(table.c.id)
    batcher_options = {
        key: value
        for key, value in (("max_batch", args.max_batch), ("max_concurrent", args.max_concurrent))
        if value is not None
    }

    def sync_search(session: Session, query: Any) -> list[int]:
        hits = semdb.search(
            session,
            table.c.embedding,
            query,
            embedder=embed,
            k=10,
            where=where,
            statement=statement,
        )
        session.rollback()
        return [hit.row[0] for hit in hits]

    for query in queries[:8]:  # warm up
        with Session(engine) as session:
            sync_search(session, query)

    def run_sequential(batch: list[Any]) -> tuple[dict[str, float], list[list[int]]]:
        meter = Meter(engine)
        with Session(engine) as session:
            found = [sync_search(session, query) for query in batch]
        return meter.stop(), found

    def run_threads(batch: list[Any]) -> dict[str, float]:
        def worker(chunk: list[Any]) -> None:
            with Session(engine) as session:
                for query in chunk:
                    sync_search(session, query)

        threads = [
            threading.Thread(target=worker, args=(batch[i :: args.threads],))
            for i in range(args.threads)
        ]
        meter = Meter(engine)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return meter.stop()

    async def ticker(lags: list[float], cpu: list[float] | None = None) -> None:
        """How late a 1 ms sleep wakes; with ``cpu``, also the CPU the loop's thread spent
        meanwhile (the other tasks' steps that ran first): the lag on a core of its own."""
        while True:
            before, before_cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)
            if cpu is not None:
                cpu.append(time.thread_time() - before_cpu)

    async def idle_lag(seconds: float) -> list[float]:
        """The ticker on a loop with nothing else to do: the machine's own share of the lag."""
        lags: list[float] = []
        tick = asyncio.create_task(ticker(lags))
        await asyncio.sleep(seconds)
        tick.cancel()
        return lags

    async def run_async(
        batch: list[Any], steps: list[float] | None = None
    ) -> tuple[dict[str, float], list[list[int]], list[float], list[float]]:
        if steps is not None:  # asyncio's debug mode times every step of every task
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = 0.001
            logging.getLogger("asyncio").addHandler(StepLog(steps))
        async_engine = semdb.aio.create_async_engine(engine.url, pool_size=args.clients)
        counting = Counting(embed)
        semdb.aio.batcher(counting, **batcher_options)
        lags: list[float] = []
        cpu_lags: list[float] = []
        results: list[list[int]] = [[] for _ in batch]
        next_query = iter(range(len(batch)))

        async def client() -> None:
            async with AsyncSession(async_engine) as session:
                for i in next_query:
                    hits = await semdb.aio.search(
                        session,
                        table.c.embedding,
                        batch[i],
                        embedder=counting,
                        k=10,
                        where=where,
                        statement=statement,
                    )
                    await session.rollback()
                    results[i] = [hit.row[0] for hit in hits]

        async def warm() -> None:
            async with AsyncSession(async_engine) as session:
                await semdb.aio.search(session, table.c.embedding, batch[0], embedder=embed, k=10)

        await asyncio.gather(*(warm() for _ in range(args.clients)))
        tick = asyncio.create_task(ticker(lags, cpu_lags))
        meter = Meter(engine)
        counting.calls = counting.texts = 0
        on_loop = time.thread_time()  # this thread's CPU: everything that ran on the loop
        await asyncio.gather(*(client() for _ in range(args.clients)))
        on_loop = time.thread_time() - on_loop
        measured = meter.stop()  # before dispose: the backends are still there to be read
        measured["loop_cpu"] = on_loop
        measured["texts_per_call"] = counting.texts / max(counting.calls, 1)
        tick.cancel()
        await async_engine.dispose()
        return measured, results, lags, cpu_lags

    def embed_alone(batch: list[str]) -> dict[str, float]:
        meter = Meter(engine)
        for text in batch:
            embed.embed([text], kind="query")
        return meter.stop()

    # Rounds: each mode runs each round's queries, the modes in turn, so that a burst of
    # load from other jobs falls on all of them; figures are medians over rounds.
    modes = ["sequential", "threads", "async"] + ([] if args.vectors else ["embed"])
    measured: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    expected: list[list[int]] = []
    found: list[list[int]] = []
    lags: list[float] = []
    cpu_lags: list[float] = []
    idle: list[float] = []
    loads: list[float] = []
    per_round = len(queries) // args.rounds
    for r in range(args.rounds):
        batch = queries[r * per_round : (r + 1) * per_round]
        loads.append(os.getloadavg()[0])
        figures, want = run_sequential(batch)
        measured["sequential"].append(figures)
        expected.extend(want)
        measured["threads"].append(run_threads(batch))
        figures, got, lag, cpu_lag = asyncio.run(run_async(batch))
        measured["async"].append(figures)
        found.extend(got)
        lags.extend(lag)
        cpu_lags.extend(cpu_lag)
        idle.extend(asyncio.run(idle_lag(1.0)))
        if not args.vectors:
            measured["embed"].append(embed_alone(texts_used[r * per_round : (r + 1) * per_round]))
    # One more pass of the async clients in asyncio's debug mode (slower: not timed): the
    # longest single steps on the loop, i.e. how long semdb's code held the loop at a stretch;
    # the ticker's lag also counts every other ready task's step queued before it.
    steps: list[float] = []
    asyncio.run(run_async(queries[:per_round], steps))
    logging.getLogger("asyncio").handlers.clear()
    cores = os.cpu_count() or 1

    def summary(mode: str) -> dict[str, float]:
        rounds = measured[mode]

        def per_query(key: str) -> float:
            return float(np.median([m[key] / per_round for m in rounds])) * 1000

        wall = per_query("wall")
        client, server = per_query("client_cpu"), per_query("server_cpu")
        return {
            "qps": 1000 / wall,
            "wall_ms": wall,
            "client_cpu_ms": client,
            "server_cpu_ms": server,
            "cores_busy": (client + server) / wall,
        }

    stats = {mode: summary(mode) for mode in modes}
    stats["async"]["loop_cpu_ms"] = float(
        np.median([m["loop_cpu"] / per_round for m in measured["async"]]) * 1000
    )
    stats["async"]["texts_per_call"] = float(
        np.median([m["texts_per_call"] for m in measured["async"]])
    )
    sequential, threaded, concurrent = (stats[m]["qps"] for m in ("sequential", "threads", "async"))
    same = sum(a == b for a, b in zip(found, expected, strict=True))
    lag_ms, idle_ms = np.array(lags) * 1000, np.array(idle) * 1000
    kind = "vector" if args.vectors else "text"
    row = {
        "queries": len(queries),
        "kind": kind,
        "embed_threads": args.embed_threads,
        "batcher": batcher_options,
        "sequential_qps": sequential,
        "threads_qps": threaded,
        "async_qps": concurrent,
        "async_vs_sequential": concurrent / sequential,
        "async_vs_threads": concurrent / threaded,
        "loop_lag_p99_ms": float(np.percentile(lag_ms, 99)),
        "loop_lag_max_ms": float(lag_ms.max()),
        "loop_cpu_lag_p99_ms": float(np.percentile(cpu_lags, 99) * 1000),
        "loop_cpu_lag_max_ms": float(max(cpu_lags) * 1000),
        "idle_loop_lag_p99_ms": float(np.percentile(idle_ms, 99)),
        "idle_loop_lag_max_ms": float(idle_ms.max()),
        "loop_step_p99_ms": float(np.percentile(steps, 99) * 1000) if steps else 0.0,
        "loop_step_max_ms": float(max(steps) * 1000) if steps else 0.0,
        "loop_steps_over_1ms": len(steps),
        "same_rows": same,
        "modes": stats,
        "rounds": measured,
        "load_average": loads,
    }
    label = {"sequential": "sequential", "threads": f"{args.threads} threads"}
    label |= {"async": f"async, {args.clients} clients", "embed": "embedding alone"}
    print_table(
        f"{kind} searches (10% filter, k=10) over bench_docs, {len(queries)} queries, "
        f"load {min(loads):.1f}-{max(loads):.1f} on {cores} cores",
        ["", "queries/s", "vs sequential", "wall ms", "CPU ms here", "CPU ms server", "cores"],
        [
            [
                label[mode],
                stats[mode]["qps"],
                f"{stats[mode]['qps'] / sequential:.2f}x" if mode != "embed" else "",
                stats[mode]["wall_ms"],
                stats[mode]["client_cpu_ms"],
                stats[mode]["server_cpu_ms"],
                stats[mode]["cores_busy"],
            ]
            for mode in modes
        ],
    )
    print(
        f"async vs {args.threads} threads: {concurrent / threaded:.2f}x; event loop lag p99 "
        f"{row['loop_lag_p99_ms']:.1f} ms, max {row['loop_lag_max_ms']:.1f} ms (idle loop: "
        f"p99 {row['idle_loop_lag_p99_ms']:.1f}, max {row['idle_loop_lag_max_ms']:.1f}); "
        f"loop's CPU between ticks p99 {row['loop_cpu_lag_p99_ms']:.1f} ms, max "
        f"{row['loop_cpu_lag_max_ms']:.1f} ms; longest single loop steps (debug pass, "
        f"{len(steps)} over 1 ms): p99 "
        f"{row['loop_step_p99_ms']:.1f} ms, max {row['loop_step_max_ms']:.1f} ms; "
        f"{same}/{len(found)} results identical to the sync API's; on the loop's thread "
        f"{stats['async']['loop_cpu_ms']:.2f} ms CPU a query; "
        f"{stats['async']['texts_per_call']:.1f} texts an embedding call"
    )
    flags = " --vectors" if args.vectors else ""
    for name, value in (
        ("--embed-threads", args.embed_threads),
        ("--max-batch", args.max_batch),
        ("--max-concurrent", args.max_concurrent),
    ):
        flags += f" {name} {value}" if value is not None else ""
    name = "async" + flags.replace(" --", "-").replace(" ", "")
    path = write_result(
        name,
        {
            **row,
            "clients": args.clients,
            "threads": args.threads,
            "machine": machine(),
            "command": f"python -m bench.async --queries {args.queries} "
            f"--clients {args.clients}{flags}",
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
