"""The README's SQL runs as written (as psql would run it) on the table the README declares."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semdb
import semdb.alembic
from semdb.db import libpq_uri

README = Path(__file__).resolve().parent.parent / "README.md"


def sql_blocks() -> list[str]:
    section = README.read_text().split("## Vector columns", 1)[1]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


class Base(DeclarativeBase):
    pass


class Doc(Base):  # the README's model, with the dimension given (no bundle in the tests)
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str | None]
    lang: Mapped[str] = mapped_column(default="en", index=True)
    embedding: Mapped[np.ndarray | None] = semdb.embedding_column(
        "title",
        "body",
        model="all-MiniLM-L6-v2",
        dimension=384,
        distance="cosine",
        index=semdb.HNSW(m=16, ef_construction=64),
        storage="vector",
        sync="queued",
        fulltext="english",
    )


@pytest.fixture()
def docs(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "docs",
            "embedding",
            sources=["title", "body"],
            model="all-MiniLM-L6-v2",
            dimension=384,
            fulltext="english",
            keyword=True,  # BM25 statistics for semdb.keyword_search / hybrid_search
        )
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(30, 384)).astype(np.float32)
    titles = [
        f"cheap flights to city {i}" if i % 3 == 0 else f"bread recipe {i}" for i in range(30)
    ]
    semdb.copy_rows(
        engine,
        Doc,
        {
            "id": list(range(1, 31)),
            "title": titles,
            "lang": ["en" if i % 2 else "fr" for i in range(30)],
            "embedding": vectors,
        },
        model="all-MiniLM-L6-v2@1",
    )
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            "docs", "embedding", keyword=True
        )
    Base.metadata.drop_all(engine)


def test_the_readme_has_sql_examples() -> None:
    assert len(sql_blocks()) >= 4


@pytest.mark.parametrize("index", range(4))
def test_each_sql_example_runs_as_written(docs: sa.Engine, index: int) -> None:
    block = sql_blocks()[index]
    with psycopg.connect(libpq_uri(docs.url), autocommit=True) as connection:
        cursor = connection.execute(block)  # the whole block, as psql sends it
        rows = []
        while True:
            if cursor.description:
                rows += cursor.fetchall()
            if not cursor.nextset():
                break
    assert rows, block
