"""Deferred BM25 upkeep on a real server: writers only record changed keys, a fold brings
statistics and postings to exactly what a full count gives, searches fold before reading,
a read-only transaction reads stale without failing, and the fold runs from the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
import semdb.alembic  # op.create_embedding_sync
from semdb.orm import HNSW, embedding_column
from semdb.sync.keyword_stats import postings_name
from semdb.sync.registry import register, unregister_statement
from semdb.sync.target import SyncTarget

DIM = 8
WORDS = "red green blue violet amber circle square star fast slow quiet loud engine".split()


class Base(DeclarativeBase):
    pass


class Memo(Base):
    __tablename__ = "deferred_memos"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=DIM, index=HNSW(), sync="manual", fulltext="english"
    )


def _rows(ids: range, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": i,
            "body": " ".join(rng.choice(WORDS, size=int(rng.integers(2, 8)))),
            "embedding": rng.normal(size=DIM).astype(np.float32),
        }
        for i in ids
    ]


@pytest.fixture
def memos(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(sa.insert(Memo), _rows(range(60), 1))
        register(connection, SyncTarget.from_column(Memo.embedding))
        semdb.install_keyword_stats(connection, Memo.embedding, deferred=True)
    yield engine
    with engine.begin() as connection:
        semdb.uninstall_keyword_stats(connection, Memo.embedding)
        connection.execute(unregister_statement(SyncTarget.from_column(Memo.embedding)))
    Base.metadata.drop_all(engine)


def state(connection: sa.Connection) -> tuple[Any, ...]:
    """The column's statistics, nonzero term counts and postings."""
    postings = postings_name(SyncTarget.from_column(Memo.embedding))
    totals = connection.execute(
        sa.text(
            "SELECT s.documents, s.total_length FROM semdb.bm25_stats s "
            "JOIN semdb.vector_columns v ON v.id = s.column_id "
            "WHERE v.table_name = 'deferred_memos'"
        )
    ).one()
    terms = connection.execute(
        sa.text(
            "SELECT t.term, t.documents FROM semdb.bm25_terms t "
            "JOIN semdb.vector_columns v ON v.id = t.column_id "
            "WHERE v.table_name = 'deferred_memos' AND t.documents <> 0 ORDER BY 1"
        )
    ).all()
    rows = connection.execute(
        sa.select(sa.text("*"))
        .select_from(sa.table(postings, schema="semdb"))
        .order_by(sa.text("term, key_1"))
    ).all()
    return tuple(totals), terms, rows


def pending(connection: sa.Connection) -> int:
    name = postings_name(SyncTarget.from_column(Memo.embedding)).replace("bm25p_", "bm25q_")
    return connection.execute(
        sa.select(sa.func.count()).select_from(sa.table(name, schema="semdb"))
    ).scalar_one()


def counted_afresh(connection: sa.Connection) -> tuple[Any, ...]:
    """The state a full count gives: installed again (in a savepoint, rolled back)."""
    with connection.begin_nested() as nested:
        semdb.install_keyword_stats(connection, Memo.embedding, deferred=True)
        fresh = state(connection)
        nested.rollback()
    return fresh


def test_writers_record_keys_and_a_fold_counts_exactly(memos: sa.Engine) -> None:
    with memos.begin() as connection:
        before = state(connection)
        connection.execute(sa.insert(Memo), _rows(range(100, 130), 2))
        connection.execute(
            sa.update(Memo).where(Memo.id < 10).values(body=Memo.body + " violet violet")
        )
        connection.execute(  # a worker's write: no text changes, nothing recorded
            sa.update(Memo).where(Memo.id >= 50).values(embedding=Memo.embedding)
        )
        connection.execute(  # the same text set again: the trigger's WHEN says no
            sa.update(Memo).where(Memo.id >= 55).values(body=Memo.body)
        )
        connection.execute(sa.delete(Memo).where(Memo.id.between(20, 29)))
        connection.execute(sa.update(Memo).where(Memo.id == 30).values(id=3000))  # a key
        connection.execute(sa.insert(Memo), _rows(range(200, 205), 3))
        connection.execute(sa.delete(Memo).where(Memo.id.between(200, 204)))  # gone again
        # inserted 30, text changed 10, deleted 10, key changed 2 (old and new), 5 inserted
        # and deleted again; the vector writes: none (they set no source, no key)
        assert pending(connection) == 30 + 10 + 10 + 2 + 5 + 5
        assert state(connection) == before  # nothing counted in the writers' statements
        assert semdb.refresh_keyword_stats(connection, Memo.embedding) is True
        assert pending(connection) == 0
        after = state(connection)
        assert after == counted_afresh(connection) and after != before
        assert semdb.refresh_keyword_stats(connection, Memo.embedding) is False  # nothing left


def test_searches_fold_before_reading(memos: sa.Engine) -> None:
    with Session(memos) as session:
        session.add(Memo(id=500, body="hexagon hexagon hexagon", embedding=np.ones(DIM)))
        session.flush()
        hits = semdb.keyword_search(session, Memo.embedding, "hexagon", k=3)
        assert [h.row.id for h in hits] == [500]
        assert pending(session.connection()) == 0
        session.execute(sa.delete(Memo).where(Memo.id == 500))
        fused = semdb.hybrid_search(
            session, Memo.embedding, "hexagon red", vector=np.ones(DIM, np.float32), k=5
        )
        assert len(fused) == 5 and 500 not in [h.row.id for h in fused]
        assert state(session.connection()) == counted_afresh(session.connection())
        session.commit()


def test_a_read_only_transaction_reads_stale_without_failing(memos: sa.Engine) -> None:
    with memos.begin() as connection:
        connection.execute(sa.insert(Memo), [{"id": 600, "body": "octagon", "embedding": None}])
    with memos.connect() as connection:
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        assert semdb.keyword_search(connection, Memo.embedding, "octagon", k=3) == []
        assert pending(connection) == 1
    with memos.begin() as connection:
        assert [h.row.id for h in semdb.keyword_search(connection, Memo.embedding, "octagon")] == [
            600
        ]


def test_truncate_resets_everything(memos: sa.Engine) -> None:
    with memos.begin() as connection:
        connection.execute(sa.insert(Memo), _rows(range(700, 710), 4))
        connection.execute(sa.text("TRUNCATE deferred_memos"))
        assert pending(connection) == 0
        assert state(connection) == ((0, 0), [], [])
        connection.execute(sa.insert(Memo), _rows(range(800, 805), 5))
        semdb.refresh_keyword_stats(connection, Memo.embedding)
        assert state(connection) == counted_afresh(connection)


def test_semdb_keyword_refresh_folds_from_the_shell(memos: sa.Engine) -> None:
    from click.testing import CliRunner

    from semdb.cli import cli

    with memos.begin() as connection:
        connection.execute(sa.insert(Memo), _rows(range(900, 920), 6))
    result = CliRunner().invoke(cli, ["keyword", "refresh"])  # SEMDB_DATABASE_URL: the tests'

    assert result.exit_code == 0, result.output
    assert "deferred_memos.embedding: folded" in result.output
    with memos.begin() as connection:
        assert pending(connection) == 0
        assert state(connection) == counted_afresh(connection)


class Ticket(Base):
    __tablename__ = "deferred_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "subject", model="tiny", dimension=32, sync="queued"
    )


def test_the_worker_folds_its_columns(engine: sa.Engine, tiny_bundle: Path) -> None:
    """A queued column with deferred upkeep: the worker's vector writes record nothing, and
    the worker folds the rows the application wrote."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from semdb.embed import Embedder
    from semdb.sync import Worker

    Ticket.__table__.create(engine)
    try:
        with engine.begin() as connection:
            Operations(MigrationContext.configure(connection)).create_embedding_sync(
                "deferred_tickets", "embedding", sources=["subject"], model="tiny", dimension=32
            )
            semdb.install_keyword_stats(connection, Ticket.embedding, deferred=True)
            connection.execute(
                sa.insert(Ticket.__table__),
                [{"id": i, "subject": f"ticket {WORDS[i % 13]} {i}"} for i in range(40)],
            )
        stats = Worker(engine, Embedder.load(tiny_bundle, provider="cpu")).run(until_empty=True)
        assert stats.embedded == 40
        with engine.begin() as connection:
            name = postings_name(SyncTarget.from_column(Ticket.embedding))
            left = connection.execute(
                sa.select(sa.func.count()).select_from(
                    sa.table(name.replace("bm25p_", "bm25q_"), schema="semdb")
                )
            ).scalar_one()
            assert left == 0
            documents = connection.execute(
                sa.text(
                    "SELECT s.documents FROM semdb.bm25_stats s JOIN semdb.vector_columns v "
                    "ON v.id = s.column_id WHERE v.table_name = 'deferred_tickets'"
                )
            ).scalar_one()
            assert documents == 40
            hits = semdb.keyword_search(connection, Ticket.embedding, "violet", k=10)
            assert sorted(h.row.id for h in hits) == [i for i in range(40) if i % 13 == 3]
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM semdb.queue"))
            semdb.uninstall_keyword_stats(connection, Ticket.embedding)
            Operations(MigrationContext.configure(connection)).drop_embedding_sync(
                "deferred_tickets", "embedding"
            )
        Ticket.__table__.drop(engine)
