"""Property-based tests of what crosses the search API (Hypothesis, against the real server):
query vectors, arbitrary objects given as a query, filter values, hybrid query texts. Each
input either gives a well-formed result or a clear semdb error, and the session stays usable
with nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
from semdb.errors import SearchError
from semdb.sync.registry import register, unregister_statement
from semdb.sync.target import SyncTarget

N, DIM, K = 300, 8, 5
PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Base(DeclarativeBase):
    pass


class Card(Base):
    __tablename__ = "property_cards"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    group: Mapped[int] = mapped_column(index=True)
    embedding: Mapped[np.ndarray | None] = semdb.embedding_column(
        "body", model="tiny", dimension=DIM, index=semdb.HNSW(), sync="manual", fulltext="english"
    )


@pytest.fixture(scope="module")
def cards(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    vectors = np.random.default_rng(5).normal(size=(N, DIM)).astype(np.float32)
    words = ["red", "blue", "green", "car", "boat", "plane", "fast", "slow"]
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Card),
            [
                {
                    "id": i,
                    "body": f"{words[i % 8]} {words[(i // 8) % 8]} card {i}",
                    "group": i % 7,
                    "embedding": vectors[i],
                }
                for i in range(N)
            ],
        )
        connection.execute(sa.text("ANALYZE property_cards"))
        register(connection, SyncTarget.from_column(Card.embedding))
        semdb.install_keyword_stats(connection, Card.embedding)  # hybrid's BM25 leg
    yield engine
    with engine.begin() as connection:
        semdb.uninstall_keyword_stats(connection, Card.embedding)
        connection.execute(unregister_statement(SyncTarget.from_column(Card.embedding)))
    Base.metadata.drop_all(engine)


def unchanged(session: Session) -> None:
    """The session still answers, and no row was written or lost."""
    session.rollback()
    assert session.execute(sa.select(sa.func.count()).select_from(Card)).scalar() == N


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@PROPERTY
@given(vector=arrays(np.float32, DIM, elements=finite), group=st.integers(-2, 8))
def test_any_finite_vector_gives_k_rows_nearest_first(
    cards: sa.Engine, vector: np.ndarray, group: int
) -> None:
    with Session(cards) as session:
        if not vector.any():
            with pytest.raises(semdb.SemdbError, match="zero vector"):
                semdb.search(session, Card.embedding, vector, k=K)
            return
        hits = semdb.search(session, Card.embedding, vector, k=K, where=Card.group == group)
        passing = N // 7 + (1 if 0 <= group < N % 7 else 0) if 0 <= group < 7 else 0
        assert len(hits) == min(K, passing)
        assert all(hit.row.group == group for hit in hits)
        distances = [hit.distance for hit in hits]
        assert distances == sorted(distances) and all(np.isfinite(distances))


not_a_vector = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.complex_numbers(),
    st.dictionaries(st.text(max_size=3), st.floats(), max_size=3),
    st.lists(st.text(max_size=5), min_size=DIM, max_size=DIM),
    st.lists(st.booleans(), min_size=DIM, max_size=DIM),
    st.lists(st.floats(allow_nan=False), max_size=DIM * 2).filter(lambda v: len(v) != DIM),
    st.binary(max_size=40),
    st.text(max_size=20),  # text without an embedder
)


@PROPERTY
@given(query=not_a_vector)
def test_anything_else_as_a_query_is_a_clear_error(cards: sa.Engine, query: Any) -> None:
    with Session(cards) as session:
        with pytest.raises(semdb.SemdbError) as raised:
            semdb.search(session, Card.embedding, query, k=K)
        assert isinstance(raised.value, (TypeError, ValueError, SearchError))
        assert "query" in str(raised.value) or "embedder" in str(raised.value)
        unchanged(session)


@PROPERTY
@given(value=st.text(max_size=40))
def test_filter_values_are_only_values(cards: sa.Engine, value: str) -> None:
    vector = np.ones(DIM, np.float32)
    with Session(cards) as session:
        if "\x00" in value:  # PostgreSQL text cannot hold NUL: an error naming the filter
            with pytest.raises(SearchError, match="filter.*NUL"):
                semdb.search(session, Card.embedding, vector, k=K, where=Card.body == value)
            unchanged(session)
            return
        hits = semdb.search(session, Card.embedding, vector, k=K, where=Card.body == value)
        assert all(hit.row.body == value for hit in hits)
        try:  # a LIKE pattern may be invalid (a trailing escape): an error, never more
            semdb.search(session, Card.embedding, vector, k=K, where=Card.body.like(value))
        except sa.exc.DBAPIError as error:
            assert "LIKE" in str(error.orig) or "escape" in str(error.orig)
        unchanged(session)


@PROPERTY
@given(text=st.text(max_size=60))
def test_any_hybrid_query_text_runs_or_is_refused_clearly(cards: sa.Engine, text: str) -> None:
    vector = np.ones(DIM, np.float32)
    with Session(cards) as session:
        if not text.strip():
            with pytest.raises(SearchError, match="non-empty"):
                semdb.hybrid_search(session, Card.embedding, text, vector=vector, k=K)
        elif "\x00" in text:
            with pytest.raises(SearchError, match="NUL"):
                semdb.hybrid_search(session, Card.embedding, text, vector=vector, k=K)
        else:
            hits = semdb.hybrid_search(session, Card.embedding, text, vector=vector, k=K)
            assert len(hits) == K  # the vector leg alone finds K
        unchanged(session)


@PROPERTY
@given(text=st.text(max_size=60))
def test_any_keyword_query_text_runs_or_is_refused_clearly(cards: sa.Engine, text: str) -> None:
    with Session(cards) as session:
        if "\x00" in text:
            with pytest.raises(SearchError, match="NUL"):
                semdb.keyword_search(session, Card.embedding, text, k=K)
        else:
            hits = semdb.keyword_search(session, Card.embedding, text, k=K)
            assert len(hits) <= K
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        unchanged(session)
