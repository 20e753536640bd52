"""copy_rows: binary COPY into mapped tables, vectors as float32, companions filled in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb.aio
import semdb.alembic  # op.create_embedding_sync
from semdb import copy_rows, embedding_column
from semdb.errors import (
    BindTypeError,
    DeclarationError,
    DimensionMismatchError,
    NonFiniteVectorError,
    VectorTypeError,
)
from semdb.orm.document import content_hash, document_text

from .vector_data import clustered_vectors


class Base(DeclarativeBase):
    pass


class Paper(Base):
    __tablename__ = "copy_papers"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column("ti tle")
    abstract: Mapped[str | None]
    year: Mapped[int | None]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "ti tle", "abstract", model="tiny", dimension=16, sync="queued"
    )


@pytest.fixture()
def papers(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.connect() as connection:
        operations = Operations(MigrationContext.configure(connection))
        operations.create_embedding_sync(
            "copy_papers",
            "embedding",
            sources=["ti tle", "abstract"],
            model="tiny",
            dimension=16,
            mode="queued",
        )
        connection.commit()
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            "copy_papers", "embedding"
        )
    Base.metadata.drop_all(engine)


def queued(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar() or 0)


def test_columnar_load_with_vectors_fills_companions_and_queues_nothing(papers: sa.Engine) -> None:
    n = 3000
    vectors = clustered_vectors(n, 16, seed=3)
    titles = [f"paper {i} ünïcode" for i in range(n)]
    abstracts = [None if i % 3 == 0 else f"abstract {i}" for i in range(n)]
    with Session(papers) as session:
        count = copy_rows(
            session,
            Paper,
            {
                "id": np.arange(n).tolist(),
                "title": titles,
                "abstract": abstracts,
                "year": [2000 + i % 20 for i in range(n)],
                "embedding": vectors,
            },
            model="tiny@1",
        )
        session.commit()
    assert count == n
    with Session(papers) as session:
        stored = session.get(Paper, 17)
        assert stored is not None and np.array_equal(stored.embedding, vectors[17])
        assert stored.embedding_model == "tiny@1"
        assert stored.embedding_hash == content_hash(document_text([titles[17], abstracts[17]]))
        stale = session.execute(
            sa.text(
                "SELECT count(*) FROM copy_papers WHERE embedding_hash IS DISTINCT FROM "
                "sha256(convert_to(concat_ws(E'\\n', \"ti tle\", abstract), 'UTF8'))"
            )
        ).scalar()
    assert stale == 0
    assert queued(papers) == 0  # loaded with their vectors: nothing for the worker


def test_rows_without_vectors_are_queued_and_objects_and_dicts_work(papers: sa.Engine) -> None:
    with papers.begin() as connection:
        copy_rows(connection, Paper, [{"id": 1, "title": "a"}, {"id": 2, "title": "b", "year": 3}])
        copy_rows(connection, Paper.__table__, [{"id": 3, "ti tle": "c"}])
    with Session(papers) as session:
        copy_rows(session, Paper, [Paper(id=4, title="d", abstract="x")])
        session.commit()
        assert session.get(Paper, 2).year == 3  # type: ignore[union-attr]
        assert session.get(Paper, 4).abstract == "x"  # type: ignore[union-attr]
    assert queued(papers) == 4


def test_a_rolled_back_transaction_keeps_nothing(papers: sa.Engine) -> None:
    with Session(papers) as session:
        copy_rows(session, Paper, {"id": [1, 2], "title": ["a", "b"]})
        session.rollback()
    with papers.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM copy_papers")).scalar() == 0


BAD_INPUTS: list[tuple[dict[str, Any], type, str]] = [
    (
        {"id": [1], "title": ["a"], "embedding": np.zeros((1, 8), np.float32)},
        DimensionMismatchError,
        "copy_papers.embedding hold 16-dimensional",
    ),
    (
        {
            "id": [1, 2],
            "title": ["a", "b"],
            "embedding": np.stack([np.ones(16), np.full(16, np.nan)]),
        },
        NonFiniteVectorError,
        "copy_papers.embedding: row 1 has NaN",
    ),
    (
        {
            "id": [1, 2, 3],
            "title": ["a", "b", "c"],
            "embedding": [None, np.ones(16), np.r_[np.ones(15), np.inf]],
        },
        NonFiniteVectorError,
        "copy_papers.embedding: row 2 has NaN or infinite",
    ),
    (
        {"id": [1, 2], "title": ["a", "b"], "embedding": [None, np.ones(15)]},
        DimensionMismatchError,
        "copy_papers.embedding, row 1 holds 16-dimensional",
    ),
    (
        {"id": [1, 2], "title": ["a", "b"], "embedding": [None, ["1"] * 16]},
        VectorTypeError,
        "row 1 holds <U1 values, not real numbers",
    ),
    (
        {"id": [1], "title": ["a"], "embedding": [np.ones(16, dtype=complex)]},
        VectorTypeError,
        "complex",
    ),
    ({"id": [1], "title": ["a"], "embedding": ["not a vector"]}, VectorTypeError, "str"),
    ({"id": [1], "colour": ["red"]}, DeclarationError, "no column 'colour'"),
    ({"id": [1, 2], "title": ["a"]}, DeclarationError, "different lengths"),
]


@pytest.mark.parametrize(("data", "error", "culprit"), BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_is_stored(
    papers: sa.Engine, data: dict, error: type, culprit: str
) -> None:
    with papers.begin() as connection, pytest.raises(error, match=culprit):
        copy_rows(connection, Paper, data)
    with papers.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM copy_papers")).scalar() == 0


def test_a_column_mixing_none_and_vectors_loads_none_as_null(papers: sa.Engine) -> None:
    """Rows given None load without a vector and without companions: queued sync embeds
    them; the rows given a vector keep it and are not queued."""
    vectors = clustered_vectors(3, 16, seed=5)
    with papers.begin() as connection:
        count = copy_rows(
            connection,
            Paper,
            {
                "id": [1, 2, 3, 4, 5],
                "title": ["a", "b", "c", "d", "e"],
                "abstract": ["x", None, "y", None, "z"],
                "embedding": [None, vectors[0], [float(x) for x in vectors[1]], None, vectors[2]],
            },
            model="tiny@1",
        )
    assert count == 5
    with papers.connect() as connection:
        rows = connection.execute(
            sa.select(
                Paper.id, Paper.embedding, Paper.embedding_model, Paper.embedding_hash
            ).order_by(Paper.id)
        ).all()
    assert [r.embedding is None for r in rows] == [True, False, False, True, False]
    assert [r.embedding_model for r in rows] == [None, "tiny@1", "tiny@1", None, "tiny@1"]
    assert [r.embedding_hash is None for r in rows] == [True, False, False, True, False]
    assert np.allclose(rows[2].embedding, vectors[1]) and np.allclose(rows[4].embedding, vectors[2])
    assert queued(papers) == 2  # the two rows without a vector


# -- semdb.aio.copy_rows: the same load through psycopg's async connection --------------------


def stored_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(
                    Paper.id,
                    Paper.title,
                    Paper.abstract,
                    Paper.year,
                    Paper.embedding,
                    Paper.embedding_model,
                    Paper.embedding_hash,
                ).order_by(Paper.id)
            )
        )


def test_async_copy_rows_stores_what_sync_copy_rows_stores(papers: sa.Engine) -> None:
    n = 20000  # enough rows that formatting them in one go would hold the loop (~0.2 s)
    vectors = clustered_vectors(n, 16, seed=7)
    data = {
        "id": list(range(n)),
        "title": [f"paper {i} ünïcode" for i in range(n)],
        "abstract": [None if i % 3 == 0 else f"abstract {i}" for i in range(n)],
        "year": [2000 + i % 20 for i in range(n)],
        # None loads as NULL with no companions; lists and arrays as vectors
        "embedding": [
            None if i % 5 == 0 else (vectors[i].tolist() if i % 2 else vectors[i]) for i in range(n)
        ],
    }
    with Session(papers) as session:
        assert copy_rows(session, Paper, data, model="tiny@1") == n
        session.commit()
    want = stored_rows(papers)
    with papers.begin() as connection:
        connection.execute(sa.delete(Paper))
        connection.execute(sa.text("DELETE FROM semdb.queue"))

    async def main() -> tuple[int, float, int]:
        engine = semdb.aio.create_async_engine(papers.url)
        lags: list[float] = []

        async def ticker() -> None:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - started - 0.005)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        async with AsyncSession(engine) as session:
            count = await semdb.aio.copy_rows(session, Paper, data, model="tiny@1")
            await session.commit()
        tick.cancel()
        await engine.dispose()
        return count, max(lags), len(lags)

    count, worst, ticks = asyncio.run(main())
    got = stored_rows(papers)
    assert count == n and len(got) == n
    for mine, theirs in zip(got, want, strict=True):
        assert mine[:4] == theirs[:4] and mine[5:] == theirs[5:]
        assert (mine.embedding is None) == (theirs.embedding is None)
        if mine.embedding is not None:
            assert np.array_equal(mine.embedding, theirs.embedding)
    assert sum(row.embedding is None for row in got) == n // 5
    assert queued(papers) == n // 5  # the rows loaded without a vector, as the sync load
    assert ticks > 2 and worst < 0.1  # the loop kept ticking through the load


def test_async_copy_rows_on_a_connection_and_an_engine_with_dicts_and_objects(
    papers: sa.Engine,
) -> None:
    async def main() -> None:
        engine = semdb.aio.create_async_engine(papers.url)
        async with engine.connect() as connection:
            await semdb.aio.copy_rows(connection, Paper, [{"id": 1, "title": "a"}])
            await semdb.aio.copy_rows(connection, Paper.__table__, [{"id": 2, "ti tle": "b"}])
            await connection.rollback()  # the caller's transaction: nothing kept
            await semdb.aio.copy_rows(connection, Paper, [{"id": 3, "title": "c", "year": 5}])
            await connection.commit()
        await semdb.aio.copy_rows(engine, Paper, [Paper(id=4, title="d", abstract="x")])
        assert await semdb.aio.copy_rows(engine, Paper, []) == 0
        await engine.dispose()

    asyncio.run(main())
    assert [(r.id, r[1], r.year, r.abstract) for r in stored_rows(papers)] == [
        (3, "c", 5, None),
        (4, "d", None, "x"),
    ]


@pytest.mark.parametrize(("data", "error", "culprit"), BAD_INPUTS)
def test_async_copy_rows_refuses_bad_input_as_the_sync_api_does(
    papers: sa.Engine, data: dict, error: type, culprit: str
) -> None:
    async def main() -> None:
        engine = semdb.aio.create_async_engine(papers.url)
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(error, match=culprit):
                    await semdb.aio.copy_rows(session, Paper, data)
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())
    with papers.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM copy_papers")).scalar() == 0


def test_a_sync_bind_given_to_the_async_copy_and_the_reverse_name_the_right_call(
    papers: sa.Engine,
) -> None:
    with Session(papers) as session, pytest.raises(BindTypeError, match="without await"):
        asyncio.run(semdb.aio.copy_rows(session, Paper, {"id": [1], "title": ["a"]}))  # type: ignore[arg-type]

    async def main() -> None:
        engine = semdb.aio.create_async_engine(papers.url)
        async with AsyncSession(engine) as session:
            with pytest.raises(BindTypeError, match="semdb.aio.copy_rows"):
                copy_rows(session, Paper, {"id": [1], "title": ["a"]})  # type: ignore[arg-type]
        await engine.dispose()

    asyncio.run(main())
