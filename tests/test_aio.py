"""semdb.aio on a real server: the async twins give the sync API's rows, plans and errors;
concurrent query texts are embedded in one call; a cancelled search leaves things usable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
import semdb.aio
from semdb.errors import BindTypeError, NonFiniteVectorError, SearchError, VectorTypeError
from semdb.sync.registry import register, unregister_statement
from semdb.sync.target import SyncTarget

from .embedders import Recording

N, DIM = 600, 32


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "aio_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    tenth: Mapped[int] = mapped_column(index=True)
    embedding: Mapped[np.ndarray | None] = semdb.embedding_column(
        "body", model="tiny", dimension=DIM, index=semdb.HNSW(), sync="manual", fulltext="english"
    )


WORDS = ["river", "mountain", "castle", "forest", "harbour", "desert", "valley", "island"]


@pytest.fixture(scope="module")
def notes(engine: sa.Engine, tiny_embedder: Any) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    bodies = [f"note {i} about a {WORDS[i % 8]} and a {WORDS[(i * 3) % 8]}" for i in range(N)]
    vectors = tiny_embedder.embed(bodies)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Note),
            [
                {"id": i, "body": body, "tenth": i % 10, "embedding": vectors[i]}
                for i, body in enumerate(bodies)
            ],
        )
        connection.execute(sa.text("ANALYZE aio_notes"))
        register(connection, SyncTarget.from_column(Note.embedding))
        semdb.install_keyword_stats(connection, Note.embedding)  # hybrid's BM25 leg
    yield engine
    with engine.begin() as connection:
        semdb.uninstall_keyword_stats(connection, Note.embedding)
        connection.execute(unregister_statement(SyncTarget.from_column(Note.embedding)))
    Base.metadata.drop_all(engine)


def async_engine(engine: sa.Engine) -> Any:
    return semdb.aio.create_async_engine(engine.url)


def test_async_searches_return_the_sync_apis_rows_and_plans(
    notes: sa.Engine, tiny_embedder: Any
) -> None:
    texts = ["a castle by the river", "desert island", "forest valley harbour"]
    with Session(notes) as session:
        want = [
            semdb.search(session, Note.embedding, t, embedder=tiny_embedder, k=5, where=w)
            for t in texts
            for w in (None, Note.tenth == 3, Note.tenth < 8)
        ]
        want_hybrid = semdb.hybrid_search(
            session, Note.embedding, texts[0], embedder=tiny_embedder, k=5
        )
        want_like = semdb.more_like_this(session, Note.embedding, 7, k=4)

    async def main() -> tuple[list[Any], Any, Any, Any]:
        engine = async_engine(notes)
        async with AsyncSession(engine) as session:
            got = [
                await semdb.aio.search(
                    session, Note.embedding, t, embedder=tiny_embedder, k=5, where=w
                )
                for t in texts
                for w in (None, Note.tenth == 3, Note.tenth < 8)
            ]
            hybrid = await semdb.aio.hybrid_search(
                session, Note.embedding, texts[0], embedder=tiny_embedder, k=5
            )
            like = await semdb.aio.more_like_this(session, Note.embedding, 7, k=4)
        async with engine.connect() as connection:  # Core rows on an AsyncConnection
            core = await semdb.aio.search(
                connection, Note.__table__.c.embedding, texts[1], embedder=tiny_embedder, k=5
            )
        await engine.dispose()
        return got, hybrid, like, core

    got, hybrid, like, core = asyncio.run(main())
    for mine, theirs in zip(got, want, strict=True):
        assert [h.row.id for h in mine] == [h.row.id for h in theirs] and len(mine) == 5
        assert [h.distance for h in mine] == pytest.approx([h.distance for h in theirs], abs=1e-5)
        assert mine.plan.path == theirs.plan.path
    assert [h.row.id for h in hybrid] == [h.row.id for h in want_hybrid]
    assert [h.row.id for h in like] == [h.row.id for h in want_like]
    assert [h.row.id for h in core] == [h.row.id for h in got[3]]


def test_a_prepared_search_runs_on_an_async_session(notes: sa.Engine, tiny_embedder: Any) -> None:
    nearest = semdb.PreparedSearch(Note.embedding, k=4, where=Note.tenth == sa.bindparam("t"))
    with Session(notes) as session:
        want = [nearest(session, "harbour", embedder=tiny_embedder, t=t) for t in (1, 2)]

    async def main() -> list[Any]:
        engine = async_engine(notes)
        async with AsyncSession(engine) as session:
            got = [
                await semdb.aio.run_prepared(
                    nearest, session, "harbour", embedder=tiny_embedder, t=t
                )
                for t in (1, 2)
            ]
        await engine.dispose()
        return got

    for mine, theirs in zip(asyncio.run(main()), want, strict=True):
        assert [h.row.id for h in mine] == [h.row.id for h in theirs]
        assert {h.row.tenth for h in mine} <= {1, 2}


def test_concurrent_query_texts_are_embedded_together(notes: sa.Engine, tiny_embedder: Any) -> None:
    recording = Recording(tiny_embedder)
    texts = [f"{WORDS[i % 8]} number {i}" for i in range(24)]

    async def main() -> list[Any]:
        engine = async_engine(notes)
        semdb.aio.batcher(recording, max_batch=32)  # on a CPU the default embeds one by one

        async def one(text: str) -> Any:
            async with AsyncSession(engine) as session:
                return await semdb.aio.search(
                    session, Note.embedding, text, embedder=recording, k=3, where=Note.tenth < 5
                )

        results = await asyncio.gather(*(one(text) for text in texts))
        await engine.dispose()
        return list(results)

    results = asyncio.run(main())
    assert all(len(hits) == 3 for hits in results)
    assert sorted(recording.texts) == sorted(texts)
    assert recording.calls < len(texts) / 2  # batched: far fewer ONNX Runtime calls than texts
    with Session(notes) as session:  # and the same rows as one by one
        for text, hits in zip(texts, results, strict=True):
            want = semdb.search(
                session, Note.embedding, text, embedder=tiny_embedder, k=3, where=Note.tenth < 5
            )
            assert [h.row.id for h in hits] == [h.row.id for h in want]


def test_texts_queued_behind_a_busy_embedder_go_together_grouped_by_length(
    tiny_embedder: Any,
) -> None:
    """One slot, a slow embedder: the first text goes alone, at once; the texts that queue
    meanwhile leave together, short with short and long with long (padding bounded)."""
    slow = Recording(tiny_embedder, delay=0.2)
    short = [f"{word} {i}" for i, word in enumerate(WORDS)]  # 7-10 characters
    long = [
        f"a long description of the {word} seen from far away, number {i}"
        for i, word in enumerate(WORDS)
    ]

    async def main() -> list[np.ndarray]:
        queue = semdb.aio.batcher(slow, max_batch=32, max_concurrent=1)
        first = asyncio.create_task(queue.embed_query("first"))
        await asyncio.sleep(0.05)  # the first call is running
        rest = [asyncio.create_task(queue.embed_query(t)) for t in [*short, *long]]
        return [await first, *[await task for task in rest]]

    vectors = asyncio.run(main())
    assert slow.batches[0] == ["first"]
    assert sorted(map(sorted, slow.batches[1:])) == sorted([sorted(long), sorted(short)])
    want = tiny_embedder.embed(["first", *short, *long], kind="query")
    assert np.allclose(np.stack(vectors), want, atol=1e-5)  # each text got its own vector


def test_the_event_loop_keeps_running_while_texts_are_embedded(
    notes: sa.Engine, tiny_embedder: Any
) -> None:
    slow = Recording(tiny_embedder, delay=0.3)  # an embedder that takes 300 ms a batch

    async def main() -> float:
        engine = async_engine(notes)
        lags: list[float] = []

        async def ticker() -> None:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - started - 0.005)

        tick = asyncio.create_task(ticker())
        async with AsyncSession(engine) as session:
            await semdb.aio.search(session, Note.embedding, "castle", embedder=slow, k=3)
        tick.cancel()
        await engine.dispose()
        return max(lags)

    assert asyncio.run(main()) < 0.1  # the 300 ms embedding ran off the loop


def test_a_cancelled_search_is_cancelled_on_the_server_and_leaves_the_session_usable(
    notes: sa.Engine,
) -> None:
    slow_filter = sa.literal_column("pg_sleep(0.01) IS NOT NULL")  # 600 rows: about 6 s
    vector = np.ones(DIM, np.float32)

    async def main() -> tuple[int, int]:
        engine = async_engine(notes)
        async with AsyncSession(engine) as session:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    semdb.aio.search(
                        session, Note.embedding, vector, k=3, where=slow_filter, plan="exact"
                    ),
                    timeout=0.5,
                )
            await session.rollback()
            hits = await semdb.aio.search(session, Note.embedding, vector, k=3)
        async with engine.connect() as connection:
            running = (
                await connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE query LIKE '%pg_sleep(0.01)%' AND state = 'active' "
                        "AND pid <> pg_backend_pid()"
                    )
                )
            ).scalar_one()
        await engine.dispose()
        return len(hits), running

    started = time.perf_counter()
    found, running = asyncio.run(main())
    assert found == 3 and running == 0
    assert time.perf_counter() - started < 4  # not the 6 s the statement would have run


def test_async_filtered_searches_are_never_prepared(notes: sa.Engine) -> None:
    """As in the sync API: a filtered search is planned for its values (psycopg's prepared
    statements, generic plans, are kept for unfiltered ones), and the savepoint around it
    leaves the caller's prepared statements alone."""
    caller = sa.text("SELECT count(*) FROM aio_notes WHERE tenth = :value")
    prepared = sa.text("SELECT statement FROM pg_prepared_statements")

    async def main() -> tuple[list[str], list[str]]:
        engine = async_engine(notes)
        async with engine.connect() as connection:
            for value in range(6):  # psycopg prepares a statement on its fifth run
                await connection.execute(caller, {"value": value})
            for i in range(8):
                vector = np.full(DIM, i + 1, np.float32)
                await semdb.aio.search(connection, Note.embedding, vector, k=7)
                await semdb.aio.search(
                    connection, Note.embedding, vector, k=7, where=Note.tenth == i
                )
            statements = list((await connection.execute(prepared)).scalars())
        await engine.dispose()
        return [s for s in statements if "LIMIT" in s], [s for s in statements if "tenth = $1" in s]

    searches, callers = asyncio.run(main())
    assert len(searches) == 1 and "WHERE" not in searches[0]
    assert len(callers) == 1  # the caller's statement survived the searches' savepoints


def test_async_errors_are_the_sync_apis(notes: sa.Engine, tiny_embedder: Any) -> None:
    async def main() -> None:
        engine = async_engine(notes)
        async with AsyncSession(engine) as session:
            with pytest.raises(VectorTypeError, match="query must be text or a vector"):
                await semdb.aio.search(session, Note.embedding, None, k=3)
            with pytest.raises(NonFiniteVectorError):
                await semdb.aio.search(session, Note.embedding, np.full(DIM, np.nan), k=3)
            with pytest.raises(SearchError, match="k must be"):
                await semdb.aio.search(session, Note.embedding, np.ones(DIM), k=0)
            with pytest.raises(SearchError, match="needs an embedder"):
                await semdb.aio.search(session, Note.embedding, "text", k=3)
            with pytest.raises(BindTypeError, match="semdb.aio.search"):
                semdb.search(session, Note.embedding, np.ones(DIM), k=3)  # type: ignore[arg-type]
            assert len(await semdb.aio.search(session, Note.embedding, np.ones(DIM), k=3)) == 3
        await engine.dispose()

    asyncio.run(main())
    with Session(notes) as session, pytest.raises(TypeError, match="without await"):
        asyncio.run(semdb.aio.search(session, Note.embedding, np.ones(DIM), k=3))  # type: ignore[arg-type]
