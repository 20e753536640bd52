"""One column, one model version.

A column declared with a model name alone (``model="tiny"``) is bound to the exact version
that first embeds it (or that its stored vectors carry); workers, backfill, inline sync and
text searches of another version are refused with the way out (``semdb model activate``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import semdb
import semdb.alembic  # op.create_embedding_sync
from semdb import embedding_column
from semdb.errors import SearchError, SyncError

DIM = 32


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "version_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=DIM, sync="queued"
    )


class Memo(Base):
    __tablename__ = "version_memos"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=DIM, sync="inline"
    )


def operations(connection: sa.Connection) -> Operations:
    return Operations(MigrationContext.configure(connection))


def register(engine: sa.Engine, table: str, mode: str) -> None:
    with engine.begin() as connection:
        operations(connection).create_embedding_sync(
            table, "embedding", sources=["body"], model="tiny", dimension=DIM, mode=mode
        )


@pytest.fixture()
def tables(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        for table in (Note.__tablename__, Memo.__tablename__):
            connection.execute(
                sa.text("DELETE FROM semdb.vector_columns WHERE table_name = :t"), {"t": table}
            )
    Base.metadata.drop_all(engine)


@pytest.fixture(scope="module")
def tiny_v2(other_bundles: dict[str, Path]) -> Any:
    from semdb.embed import Embedder

    return Embedder.load(other_bundles["tiny@2"], provider="cpu")


def bound_version(engine: sa.Engine, table: str) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT model_version FROM semdb.vector_columns WHERE table_name = :t"),
            {"t": table},
        ).scalar()


def add_notes(engine: sa.Engine, ids: range) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Note), [{"id": i, "body": f"note {i} about colours"} for i in ids]
        )


def stored_tags(engine: sa.Engine) -> set[str | None]:
    with engine.connect() as connection:
        return set(connection.execute(sa.select(Note.embedding_model)).scalars())


def test_the_first_worker_binds_the_column_to_its_version(
    tables: sa.Engine, tiny_embedder: Any, tiny_v2: Any
) -> None:
    register(tables, Note.__tablename__, "queued")
    add_notes(tables, range(5))
    assert bound_version(tables, Note.__tablename__) is None
    assert semdb.Worker(tables, tiny_embedder).run(until_empty=True).embedded == 5
    assert bound_version(tables, Note.__tablename__) == "1"

    add_notes(tables, range(5, 10))
    with pytest.raises(SyncError) as refused:
        semdb.Worker(tables, tiny_v2).run(until_empty=True)
    message = refused.value.one_line()
    assert "tiny@1" in message and "tiny@2" in message and "semdb model activate" in message
    with pytest.raises(SyncError, match="tiny@1"):
        semdb.Worker(tables, tiny_v2, columns=["version_notes.embedding"]).run(until_empty=True)
    with pytest.raises(SyncError, match="tiny@1"):
        semdb.backfill(tables, Note.embedding, tiny_v2)
    with Session(tables) as session, pytest.raises(SearchError, match="tiny@1"):
        semdb.search(session, Note.embedding, "colours", embedder=tiny_v2)
    assert stored_tags(tables) == {"tiny@1", None}  # nothing written by tiny@2

    assert semdb.Worker(tables, tiny_embedder).run(until_empty=True).embedded == 5
    assert stored_tags(tables) == {"tiny@1"}
    with Session(tables) as session:
        assert semdb.search(session, Note.embedding, "colours", embedder=tiny_embedder, k=3)


def test_vectors_already_stored_bind_the_column_to_their_version(
    tables: sa.Engine, tiny_embedder: Any, tiny_v2: Any
) -> None:
    """Vectors written before the column was registered (or bound) decide its version."""
    add_notes(tables, range(4))
    assert semdb.backfill(tables, Note.embedding, tiny_embedder).embedded == 4  # unregistered
    register(tables, Note.__tablename__, "queued")
    add_notes(tables, range(4, 6))
    with pytest.raises(SyncError, match="holds vectors of tiny@1"):
        semdb.Worker(tables, tiny_v2).run(until_empty=True)
    assert bound_version(tables, Note.__tablename__) == "1"
    assert stored_tags(tables) == {"tiny@1", None}


def test_backfill_binds_a_column_like_a_worker(
    tables: sa.Engine, tiny_embedder: Any, tiny_v2: Any
) -> None:
    register(tables, Note.__tablename__, "queued")
    add_notes(tables, range(3))
    assert semdb.backfill(tables, Note.embedding, tiny_v2).embedded == 3
    assert bound_version(tables, Note.__tablename__) == "2"
    with pytest.raises(SyncError, match="holds vectors of tiny@2"):
        semdb.Worker(tables, tiny_embedder).run(until_empty=True)


def test_inline_sync_binds_a_registered_column_at_its_first_flush(
    tables: sa.Engine, tiny_embedder: Any, tiny_v2: Any
) -> None:
    register(tables, Memo.__tablename__, "inline")
    first = sessionmaker(tables)
    semdb.embed_on_flush(first, tiny_embedder)
    with first() as session:
        session.add(Memo(id=1, body="first memo"))
        session.commit()
    assert bound_version(tables, Memo.__tablename__) == "1"

    second = sessionmaker(tables)
    semdb.embed_on_flush(second, tiny_v2)
    with second() as session, pytest.raises(SyncError, match="holds vectors of tiny@1"):
        session.add(Memo(id=2, body="second memo"))
        session.commit()
    with tables.connect() as connection:
        tags = connection.execute(sa.select(Memo.id, Memo.embedding_model)).all()
    assert tags == [(1, "tiny@1")]


def test_the_upgrade_binds_columns_that_hold_one_version(empty_database_url: Any) -> None:
    """Columns registered and embedded before this release are bound by the migration to
    the one version their vectors carry; a column mixing two is left unbound."""
    from semdb.db.migrate import upgrade

    engine = semdb.create_engine(empty_database_url)
    try:
        upgrade(engine, "0003_activations")
        with engine.begin() as connection:
            for table, tags in (
                ("one_version", ["tiny@1", "tiny@1", None]),
                ("two", ["tiny@1", "tiny@2"]),
            ):
                connection.execute(
                    sa.text(
                        f"CREATE TABLE {table} (id int PRIMARY KEY, body text, "
                        "embedding vector(32), embedding_model text, embedding_hash bytea)"
                    )
                )
                operations(connection).create_embedding_sync(
                    table, "embedding", sources=["body"], model="tiny", dimension=DIM
                )
                for i, tag in enumerate(tags):
                    connection.execute(
                        sa.text(
                            f"INSERT INTO {table} (id, body, embedding_model) VALUES (:i, 'x', :t)"
                        ),
                        {"i": i, "t": tag},
                    )
        upgrade(engine)
        assert bound_version(engine, "one_version") == "1"
        assert bound_version(engine, "two") is None
    finally:
        engine.dispose()
