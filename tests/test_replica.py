"""Searches on a real hot standby: a streaming replica of the test server made with
pg_basebackup -R (semdb.db.servers.LocalServer), read-your-writes, bad read URLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
from semdb.db.servers import LocalServer
from semdb.errors import ConfigurationError, ExtensionMissingError, ReplicaLagError
from semdb.orm import HNSW, embedding_column

from .vector_data import clustered_vectors

N, DIM = 2000, 32


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "replica_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[int] = mapped_column(index=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=DIM, index=HNSW(), sync="manual"
    )


@pytest.fixture(scope="module")
def notes(engine: sa.Engine) -> Iterator[np.ndarray]:
    vectors = clustered_vectors(N, DIM, seed=3)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Note.__table__),
            [
                {"id": i, "tenant": i % 10, "body": f"note {i}", "embedding": vectors[i]}
                for i in range(N)
            ],
        )
        connection.exec_driver_sql("ANALYZE replica_notes")
    yield vectors
    Base.metadata.drop_all(engine)


@pytest.fixture(scope="module")
def replica(
    server_url: sa.URL, notes: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    host = server_url.query.get("host")
    if not isinstance(host, str) or not Path(host).is_dir():
        pytest.skip("the replica is made of the embedded server (SEMDB_DATABASE_URL is set)")
    server = LocalServer(tmp_path_factory.mktemp("replica"))
    server.basebackup(host)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def read_engine(replica: LocalServer, engine: sa.Engine) -> Iterator[sa.Engine]:
    read = semdb.create_read_engine(replica.url(engine.url.database or ""))
    yield read
    read.dispose()


def caught_up(engine: sa.Engine, read_engine: sa.Engine) -> None:
    lsn = semdb.commit_lsn(engine)
    with read_engine.connect() as connection:
        semdb.wait_for_replay(connection, lsn, timeout=30)


def test_the_replica_is_a_standby(read_engine: sa.Engine) -> None:
    with read_engine.connect() as connection:
        assert connection.execute(sa.text("SELECT pg_is_in_recovery()")).scalar() is True
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            connection.execute(sa.text("CREATE TABLE nope (id int)"))


@pytest.mark.parametrize(
    ("where", "plan"),
    [(None, "auto"), (Note.tenant == 3, "auto"), (Note.tenant < 8, "auto"), (None, "exact")],
)
def test_the_replica_returns_the_primary_s_rows(
    engine: sa.Engine, read_engine: sa.Engine, notes: np.ndarray, where: object, plan: str
) -> None:
    caught_up(engine, read_engine)
    for q in range(5):
        query = notes[q * 97]
        with Session(engine) as session:
            on_primary = semdb.search(session, Note.embedding, query, k=10, where=where, plan=plan)  # type: ignore[arg-type]
            primary_ids = [hit.row.id for hit in on_primary]
        with Session(read_engine) as session:
            on_replica = semdb.search(session, Note.embedding, query, k=10, where=where, plan=plan)  # type: ignore[arg-type]
            replica_ids = [hit.row.id for hit in on_replica]
            # the search's settings were its own: nothing is left on the session's connection
            assert session.execute(sa.text("SHOW hnsw.iterative_scan")).scalar() == "off"
        assert replica_ids == primary_ids
        assert len(replica_ids) == 10
        assert on_replica.plan.path == on_primary.plan.path


def test_read_your_writes(engine: sa.Engine, read_engine: sa.Engine) -> None:
    rng = np.random.default_rng(11)
    missed = []
    with Session(engine) as writer, Session(read_engine) as reader:
        for attempt in range(100):
            vector = rng.normal(size=DIM).astype(np.float32)
            key = 100_000 + attempt
            writer.add(Note(id=key, tenant=attempt % 10, body="fresh", embedding=vector))
            writer.commit()
            lsn = semdb.commit_lsn(writer)
            semdb.wait_for_replay(reader, lsn, timeout=10)
            hits = semdb.search(
                reader, Note.embedding, vector, k=1, where=Note.tenant == attempt % 10
            )
            if [hit.row.id for hit in hits] != [key]:
                missed.append(attempt)
            reader.rollback()  # the reader's next statement sees what was replayed since
    assert missed == []


def test_a_paused_replica_times_out_with_a_clear_error(
    engine: sa.Engine, read_engine: sa.Engine
) -> None:
    vector = np.random.default_rng(5).normal(size=DIM).astype(np.float32)
    with read_engine.connect() as admin:
        admin.execute(sa.text("SELECT pg_wal_replay_pause()"))
        admin.commit()
    try:
        with Session(engine) as writer:
            writer.add(Note(id=200_000, tenant=1, body="late", embedding=vector))
            writer.commit()
            lsn = semdb.commit_lsn(writer)
        with Session(read_engine) as reader:
            with pytest.raises(ReplicaLagError, match=f"not yet to {lsn}") as error:
                semdb.wait_for_replay(reader, lsn, timeout=0.3)
            assert "pg_stat_replication" in (error.value.fix or "")
            hits = semdb.search(reader, Note.embedding, vector, k=1, plan="exact")
            assert [hit.row.id for hit in hits] != [200_000]  # not there yet: the wait mattered
    finally:
        with read_engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_wal_replay_resume()"))
            admin.commit()
    with Session(read_engine) as reader:
        semdb.wait_for_replay(reader, lsn, timeout=10)
        hits = semdb.search(reader, Note.embedding, vector, k=1, plan="exact")
        assert [hit.row.id for hit in hits] == [200_000]


def test_the_query_log_on_a_standby_never_fails_a_search(
    engine: sa.Engine, read_engine: sa.Engine, notes: np.ndarray
) -> None:
    semdb.query_log.enable(read_engine, sample=1.0)
    try:
        with Session(read_engine) as session:
            for q in range(3):
                hits = semdb.search(session, Note.embedding, notes[q], k=5)
                assert len(hits) == 5
        semdb.query_log.flush(read_engine)
    finally:
        semdb.query_log.disable(read_engine)


def test_a_read_url_on_a_primary_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(ConfigurationError, match="points at a primary server"):
        semdb.create_read_engine(engine.url)
    allowed = semdb.create_read_engine(engine.url, allow_primary=True)
    with allowed.connect() as connection:  # on a primary the wait returns at once
        assert semdb.wait_for_replay(connection, semdb.commit_lsn(connection)) < 1.0
    allowed.dispose()


def test_a_read_url_without_pgvector_is_refused(replica: LocalServer) -> None:
    with pytest.raises(ExtensionMissingError, match="has no pgvector in database 'postgres'"):
        semdb.create_read_engine(replica.url("postgres"))


def test_no_read_url_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMDB_READ_URL", raising=False)
    with pytest.raises(ConfigurationError, match="SEMDB_READ_URL is unset"):
        semdb.create_read_engine()
    monkeypatch.setenv("SEMDB_READ_URL", "mysql://x@y/z")
    with pytest.raises(ConfigurationError, match="SEMDB_READ_URL uses the scheme"):
        semdb.create_read_engine()
