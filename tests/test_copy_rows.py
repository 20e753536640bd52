"""copy_rows: binary COPY into mapped tables, vectors as float32, companions filled in."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb.alembic  # noqa: F401  (op.create_embedding_sync)
from semdb import copy_rows, embedding_column
from semdb.errors import (
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


@pytest.mark.parametrize(
    ("data", "error", "culprit"),
    [
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
    ],
)
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
