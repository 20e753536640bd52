"""Writes from asyncio applications: inline sync on an AsyncSession flush embeds in a worker
thread (the event loop keeps running) and writes the sync API's vectors; semdb.aio.copy_rows
loads what semdb.copy_rows loads, with its checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import semdb
import semdb.aio
from semdb.errors import SyncError

from .embedders import Recording

DIM = 32


class Base(DeclarativeBase):
    pass


class Post(Base):
    __tablename__ = "aio_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    embedding: Mapped[np.ndarray | None] = semdb.embedding_column(
        "title", model="tiny", dimension=DIM, sync="inline"
    )


class Chunked(Base):
    __tablename__ = "aio_chunked"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = semdb.embedding_column(
        "body", model="tiny", dimension=DIM, sync="inline", chunking=semdb.Chunks(max_tokens=40)
    )


@pytest.fixture()
def tables(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


def stored(engine: sa.Engine) -> dict[int, tuple[np.ndarray | None, str | None]]:
    with Session(engine) as session:
        return {
            post.id: (post.embedding, post.embedding_model)
            for post in session.scalars(sa.select(Post))
        }


async def lag_while(work: Any) -> tuple[float, int]:
    """Run ``work`` (a coroutine) beside a 5 ms ticker: the ticker's worst lag and its ticks."""
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - started - 0.005)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running before the work starts
    await work
    tick.cancel()
    return max(lags), len(lags)


def test_inline_sync_on_an_async_session_embeds_off_the_event_loop(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    slow = Recording(tiny_embedder, delay=0.4)  # 400 ms a batch, the GIL released (as ORT)
    titles = [f"post {i} about the harbour" if i % 2 else f"post {i} on a hill" for i in range(12)]

    async def main() -> tuple[float, int]:
        engine = semdb.aio.create_async_engine(tables.url)
        async with AsyncSession(engine) as session:
            semdb.embed_on_flush(session, slow)
            session.add_all(Post(id=i, title=title) for i, title in enumerate(titles))
            result = await lag_while(session.commit())
        await engine.dispose()
        return result

    worst, ticks = asyncio.run(main())
    assert slow.calls == 1 and slow.texts == titles  # one batch, in the flush
    assert worst < 0.1 and ticks >= 30  # the 400 ms embedding did not hold the loop
    want = tiny_embedder.embed(titles)
    rows = stored(tables)
    assert sorted(rows) == list(range(12))
    for i in range(12):
        vector, model = rows[i]
        assert vector is not None and np.allclose(vector, want[i], atol=1e-5)
        assert model == "tiny@1"


def test_inline_sync_through_an_async_sessionmaker_and_autoflush(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    recording = Recording(tiny_embedder)
    sync_maker = sessionmaker()
    semdb.embed_on_flush(sync_maker, recording)

    async def main() -> list[str]:
        engine = semdb.aio.create_async_engine(tables.url)
        maker = async_sessionmaker(engine, sync_session_class=sync_maker)
        async with maker() as session:
            session.add(Post(id=1, title="a lighthouse"))
            # autoflush before the query: the row is embedded and found by a search
            hits = await semdb.aio.search(
                session, Post.embedding, "a lighthouse", embedder=tiny_embedder, k=1
            )
            found = [hit.row.title for hit in hits]
            post = await session.get(Post, 1)
            assert post is not None
            post.title = "a windmill"  # a changed source: embedded again at commit
            await session.commit()
        await engine.dispose()
        return found

    assert asyncio.run(main()) == ["a lighthouse"]
    assert recording.texts == ["a lighthouse", "a windmill"]
    vector, _ = stored(tables)[1]
    want = tiny_embedder.embed(["a windmill"])[0]
    assert vector is not None and np.allclose(vector, want, atol=1e-5)


def test_an_async_sessionmaker_given_to_embed_on_flush_is_refused_with_the_fix(
    tiny_embedder: Any,
) -> None:
    maker = async_sessionmaker()
    with pytest.raises(SyncError, match="sync_session_class"):
        semdb.embed_on_flush(maker, tiny_embedder)


def test_a_chunked_inline_column_on_an_async_session_is_refused_before_embedding(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    recording = Recording(tiny_embedder)

    async def main() -> None:
        engine = semdb.aio.create_async_engine(tables.url)
        async with AsyncSession(engine) as session:
            semdb.embed_on_flush(session, recording)
            session.add(Chunked(id=1, body="a long text " * 40))
            with pytest.raises(SyncError, match="not synced inline on an AsyncSession") as caught:
                await session.commit()
            assert 'sync="queued"' in str(caught.value.fix)
        await engine.dispose()

    asyncio.run(main())
    assert recording.calls == 0
    with Session(tables) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Chunked)) == 0
