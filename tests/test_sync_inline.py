"""Inline sync: vectors made at flush, in one batch, in the writer's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from semdb import embedding_column, search
from semdb.errors import DimensionMismatchError, SyncError
from semdb.orm.document import content_hash
from semdb.sync import embed_on_flush

from .embedders import Recording

DIM = 32


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "inline_articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str | None]
    views: Mapped[int] = mapped_column(default=0)
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "title", "body", model="tiny", dimension=DIM, sync="inline"
    )


class Other(Base):
    __tablename__ = "inline_others"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "text", model="other-model", dimension=DIM, sync="inline"
    )


@pytest.fixture()
def tables(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


@pytest.fixture()
def recording(tiny_embedder: Any) -> Recording:
    return Recording(tiny_embedder)


@pytest.fixture()
def factory(tables: sa.Engine, recording: Recording) -> sessionmaker[Session]:
    made = sessionmaker(tables)
    embed_on_flush(made, recording)
    return made


def test_new_rows_are_embedded_in_one_batch_in_the_same_transaction(
    factory: sessionmaker[Session], recording: Recording
) -> None:
    texts = [(f"title {i}", None if i % 4 == 0 else f"body of article {i}") for i in range(20)]
    with factory() as session:
        session.add_all(Article(id=i, title=t, body=b) for i, (t, b) in enumerate(texts))
        session.commit()
    assert recording.calls == 1 and len(recording.texts) == 20
    expected = recording.inner.embed(["\n".join(p for p in pair if p) for pair in texts])
    with factory() as session:
        for i, (title, body) in enumerate(texts):
            article = session.get(Article, i)
            assert article is not None and article.embedding is not None
            assert np.allclose(article.embedding, expected[i], atol=1e-5)
            assert article.embedding_model == "tiny@1"
            assert article.embedding_hash == content_hash("\n".join(p for p in (title, body) if p))


def test_only_changed_text_is_embedded_again(
    factory: sessionmaker[Session], recording: Recording
) -> None:
    with factory() as session:
        session.add_all(Article(id=i, title=f"t{i}", body="b") for i in range(10))
        session.commit()
        recording.texts.clear()
        for i in (1, 2, 3):
            session.get(Article, i).title = f"new title {i}"  # type: ignore[union-attr]
        session.get(Article, 4).views = 99  # type: ignore[union-attr]  (not a source)
        session.get(Article, 5).title = "t5"  # type: ignore[union-attr]  (same text)
        session.commit()
        assert sorted(recording.texts) == ["new title 1\nb", "new title 2\nb", "new title 3\nb"]
        changed = session.get(Article, 2)
        assert changed is not None and np.allclose(
            changed.embedding, recording.inner.embed(["new title 2\nb"])[0], atol=1e-5
        )


def test_a_rolled_back_transaction_leaves_no_vectors(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.add(Article(id=1, title="x"))
        session.flush()
        session.rollback()
    with factory() as session:
        assert session.get(Article, 1) is None


def test_empty_text_gets_no_vector_but_is_recorded(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.add(Article(id=1, title="", body=None))
        session.commit()
        article = session.get(Article, 1)
        assert article is not None and article.embedding is None
        assert article.embedding_hash == content_hash("") and article.embedding_model == "tiny@1"


def test_a_vector_set_by_the_application_is_kept(
    factory: sessionmaker[Session], recording: Recording
) -> None:
    mine = np.ones(DIM, np.float32)
    with factory() as session:
        session.add(Article(id=1, title="x", embedding=mine))
        session.commit()
        assert recording.calls == 0
        assert np.array_equal(session.get(Article, 1).embedding, mine)  # type: ignore[union-attr]


def test_a_model_without_an_embedder_is_a_clear_error(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.add(Other(id=1, text="x"))
        with pytest.raises(SyncError, match="other-model"):
            session.flush()


def test_an_embedder_of_the_wrong_dimension_is_refused(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    class Wide(Recording):
        def embed(self, texts: Any, *, kind: str = "document") -> np.ndarray:
            return np.zeros((len(texts), 64), np.float32)

    wide = Wide(tiny_embedder)
    wide.dimension = 64
    made = sessionmaker(tables)
    embed_on_flush(made, wide)
    with made() as session:
        session.add(Article(id=1, title="x"))
        with pytest.raises(DimensionMismatchError, match="inline_articles.embedding holds 32"):
            session.flush()


def test_a_failing_embedder_fails_the_flush_and_stores_nothing(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    made = sessionmaker(tables)
    embed_on_flush(made, Recording(tiny_embedder, fail_always=True))
    with made() as session:
        session.add(Article(id=1, title="x"))
        with pytest.raises(RuntimeError, match="down"):
            session.commit()
    with made() as session:
        assert session.get(Article, 1) is None


def test_search_by_text_finds_the_row_with_that_text(
    factory: sessionmaker[Session], tiny_embedder: Any
) -> None:
    with factory() as session:
        session.add_all(
            Article(id=i, title=title, body=None)
            for i, title in enumerate(
                ["cheap flights to Lisbon", "a recipe for bread", "learning to sail"]
            )
        )
        session.commit()
        hits = search(session, Article.embedding, "a recipe for bread", embedder=tiny_embedder, k=3)
    assert len(hits) == 3 and hits[0].row.id == 1
