"""Connection poolers in transaction mode (PgBouncer): a server connection serves another
client after every transaction. semdb's searches must leave nothing on it: their planner
settings are SET LOCAL inside a savepoint of the search's own transaction, and with
``prepare_threshold=None`` (needed with PgBouncer < 1.21) no statement is prepared.

One server connection shared by clients in turn stands in for the pooler here: psycopg_pool's
ConnectionPool (max_size=1, prepare_threshold=None) makes it, and SQLAlchemy hands it to one
Session after another, as PgBouncer in transaction mode may.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
from semdb.db import libpq_uri
from semdb.orm import HNSW, embedding_column

from .vector_data import clustered_vectors

psycopg_pool = pytest.importorskip("psycopg_pool")

DIM = 16


class Base(DeclarativeBase):
    pass


class Card(Base):
    __tablename__ = "pool_cards"
    id: Mapped[int] = mapped_column(primary_key=True)
    color: Mapped[int] = mapped_column(index=True)
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "color", model="none", dimension=DIM, index=HNSW(ef_search=80), sync="manual"
    )


@pytest.fixture(scope="module")
def pooled(engine: sa.Engine) -> Iterator[sa.Engine]:
    vectors = clustered_vectors(3000, DIM, seed=4)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        semdb.copy_rows(
            connection,
            Card.__table__,
            [{"id": i, "color": i % 50, "embedding": v} for i, v in enumerate(vectors)],
        )
        connection.exec_driver_sql("ANALYZE pool_cards")
    pool = psycopg_pool.ConnectionPool(
        libpq_uri(engine.url),
        min_size=1,
        max_size=1,
        open=True,
        kwargs={"prepare_threshold": None},
    )
    # SQLAlchemy keeps the one server connection psycopg's pool made and hands it to each
    # session in turn (rolled back between them), as a transaction-mode pooler would
    shared = semdb.create_engine(
        engine.url, creator=pool.getconn, pool_size=1, max_overflow=0, preflight=False
    )
    yield shared
    shared.dispose()
    pool.close()
    Base.metadata.drop_all(engine)


def server_state(engine: sa.Engine) -> tuple[int, str, str, str, int]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT pg_backend_pid(), coalesce(current_setting('hnsw.ef_search', true), '40'), "
                "coalesce(current_setting('hnsw.iterative_scan', true), 'off'), "
                "current_setting('enable_sort'), "
                "(SELECT count(*) FROM pg_prepared_statements)"
            )
        ).one()
        connection.rollback()
    return tuple(row)  # type: ignore[return-value]


def test_searches_leave_nothing_on_a_shared_server_connection(pooled: sa.Engine) -> None:
    before = server_state(pooled)
    assert before[1:] == ("40", "off", "on", 0)
    query = clustered_vectors(1, DIM, seed=99)[0]
    nearest = semdb.PreparedSearch(Card.embedding, k=10, where=Card.color == sa.bindparam("c"))
    for round_ in range(30):
        with Session(pooled) as session:  # one client's transaction
            hits = semdb.search(session, Card.embedding, query, k=10, where=Card.color < 40)
            assert len(hits) == 10 and hits.plan.settings  # it ran under settings
            assert len(nearest(session, query, c=round_ % 50)) == 10
            assert len(semdb.search(session, Card.embedding, query, k=5)) == 5
            session.commit()
        after = server_state(pooled)  # the next client, on the same server connection
        assert after[0] == before[0]
        assert after[1:] == ("40", "off", "on", 0)
