"""Queued sync in one process: triggers, claims, skips, retries, races, backfill."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semdb.alembic  # noqa: F401  (op.create_embedding_sync)
from semdb import embedding_column
from semdb.errors import DimensionMismatchError, SyncError
from semdb.sync import SyncTarget, Worker, backfill

from .embedders import Recording

DIM = 32


class Base(DeclarativeBase):
    pass


class Post(Base):
    __tablename__ = 'queued "posts"; --'
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column("ti:tle")
    body: Mapped[str | None] = mapped_column("bo%dy")
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "ti:tle", "bo%dy", model="tiny", dimension=DIM, sync="queued"
    )


TABLE = sa.table('queued "posts"; --', sa.column("id"), sa.column("ti:tle"), sa.column("bo%dy"))


def sync_op(connection: sa.Connection, **overrides: Any) -> None:
    options: dict[str, Any] = dict(sources=["ti:tle", "bo%dy"], model="tiny", dimension=DIM)
    options.update(overrides)
    Operations(MigrationContext.configure(connection)).create_embedding_sync(
        Post.__tablename__, "embedding", **options
    )


@pytest.fixture()
def posts(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        sync_op(connection)
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        connection.execute(sa.text("DELETE FROM semdb.errors"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            Post.__tablename__, "embedding"
        )
    Base.metadata.drop_all(engine)


def insert(engine: sa.Engine, ids: range, body: str = "body") -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.insert(TABLE),
            [{"id": i, "ti:tle": f"post {i}", "bo%dy": f"{body} {i}"} for i in ids],
        )


def queue_size(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar() or 0)


def stored(engine: sa.Engine) -> dict[int, tuple[np.ndarray | None, str | None, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                Post.id,
                Post.embedding,
                Post.embedding_model,
                Post.title.label("title"),
                Post.body.label("body"),
            )
        ).all()
    return {
        r.id: (r.embedding, r.embedding_model, "\n".join(p for p in (r.title, r.body) if p))
        for r in rows
    }


def assert_all_fresh(engine: sa.Engine, embedder: Any) -> None:
    rows = stored(engine)
    ids = sorted(rows)
    expected = embedder.embed([rows[i][2] for i in ids])
    for position, i in enumerate(ids):
        vector, model, _ = rows[i]
        assert vector is not None, i
        assert np.allclose(vector, expected[position], atol=1e-5), i
        assert model == "tiny@1"


def test_inserted_and_updated_rows_are_embedded_by_the_worker(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    insert(posts, range(300))
    assert queue_size(posts) == 300
    recording = Recording(tiny_embedder)
    stats = Worker(posts, recording, batch_size=64).run(until_empty=True)
    assert stats.embedded == 300 and stats.batches == 5 and queue_size(posts) == 0
    assert sorted(recording.texts) == sorted(row[2] for row in stored(posts).values())
    assert_all_fresh(posts, tiny_embedder)

    with posts.begin() as connection:
        connection.execute(sa.update(TABLE).where(TABLE.c.id < 5).values({"bo%dy": "changed"}))
        connection.execute(
            sa.update(TABLE).where(TABLE.c.id >= 290).values({"ti:tle": TABLE.c["ti:tle"]})
        )
    assert queue_size(posts) == 5  # unchanged text queues nothing
    recording.texts.clear()
    Worker(posts, recording).run(until_empty=True)
    assert sorted(recording.texts) == [f"post {i}\nchanged" for i in range(5)]
    assert_all_fresh(posts, tiny_embedder)


def test_fresh_rows_are_skipped_and_vanished_rows_settled(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    insert(posts, range(10))
    Worker(posts, tiny_embedder).run(until_empty=True)
    with posts.begin() as connection:
        column_id = connection.execute(sa.text("SELECT id FROM semdb.vector_columns")).scalar()
        for key in (1, 2, 12345):
            connection.execute(
                sa.text(
                    "INSERT INTO semdb.queue (column_id, key) "
                    "VALUES (:c, jsonb_build_object('id', :k))"
                ),
                {"c": column_id, "k": key},
            )
    recording = Recording(tiny_embedder)
    stats = Worker(posts, recording).run(until_empty=True)
    assert recording.calls == 0 and stats.skipped == 3 and stats.embedded == 0
    assert queue_size(posts) == 0


def test_a_poisoned_row_is_isolated_retried_and_given_up(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    insert(posts, range(20))
    with posts.begin() as connection:
        connection.execute(sa.update(TABLE).where(TABLE.c.id == 7).values({"bo%dy": "POISON"}))
    failing = Recording(tiny_embedder, fail_on="POISON")
    worker = Worker(posts, failing, backoff_seconds=0.0, max_attempts=3)
    stats = worker.run(until_empty=True)
    assert stats.embedded == 19
    rows = stored(posts)
    assert rows[7][0] is None and all(rows[i][0] is not None for i in rows if i != 7)
    with posts.connect() as connection:
        errors = connection.execute(
            sa.text("SELECT key->>'id', attempt, gave_up, error FROM semdb.errors ORDER BY id")
        ).all()
    assert [(e[0], e[1], e[2]) for e in errors] == [
        ("7", 1, False),
        ("7", 2, False),
        ("7", 3, True),
    ]
    assert "POISON" in errors[0][3]
    assert queue_size(posts) == 0  # given up: out of the queue (a later change retries it)


def test_failures_back_off_before_the_next_attempt(posts: sa.Engine, tiny_embedder: Any) -> None:
    insert(posts, range(3))
    down = Recording(tiny_embedder, fail_always=True)
    stats = Worker(posts, down, backoff_seconds=60).run(until_empty=True)
    assert stats.failed == 3 and stats.given_up == 0
    with posts.connect() as connection:
        waiting = connection.execute(
            sa.text(
                "SELECT count(*) FROM semdb.queue "
                "WHERE attempts = 1 AND not_before > now() + interval '50 seconds'"
            )
        ).scalar()
    assert waiting == 3
    again = Recording(tiny_embedder)
    assert Worker(posts, again).run(until_empty=True).embedded == 0  # not due yet


def test_writes_never_wait_for_a_worker_holding_claims(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    """A worker whose embedder hangs holds its claims; the application keeps writing the
    very same rows (lock_timeout 1 s would fail them if they waited), and the text written
    meanwhile is the one that ends up embedded."""
    insert(posts, range(5))
    slow = Recording(tiny_embedder, delay=4.0)
    worker = Worker(posts, slow, batch_size=10)
    thread = threading.Thread(target=lambda: worker.run(max_batches=1))
    thread.start()
    deadline = time.monotonic() + 20
    while slow.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow.calls == 1  # the batch is claimed and being embedded
    started = time.monotonic()
    with posts.begin() as connection:
        connection.execute(sa.text("SET LOCAL lock_timeout = '1s'"))
        connection.execute(
            sa.update(TABLE).where(TABLE.c.id < 3).values({"bo%dy": "written meanwhile"})
        )
        connection.execute(sa.insert(TABLE).values({"id": 100, "ti:tle": "new"}))
    assert time.monotonic() - started < 1.0
    thread.join(30)
    assert worker.stats.embedded == 2 and worker.stats.requeued == 3
    Worker(posts, tiny_embedder).run(until_empty=True)
    assert_all_fresh(posts, tiny_embedder)
    assert stored(posts)[0][2] == "post 0\nwritten meanwhile"


def test_two_workers_racing_embed_every_row_exactly_once(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    insert(posts, range(600))
    first, second = Recording(tiny_embedder), Recording(tiny_embedder)
    workers = [Worker(posts, first, batch_size=25), Worker(posts, second, batch_size=25)]
    threads = [threading.Thread(target=w.run, kwargs={"until_empty": True}) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert first.texts and second.texts  # both took part
    everything = first.texts + second.texts
    assert len(everything) == len(set(everything)) == 600
    assert queue_size(posts) == 0
    assert_all_fresh(posts, tiny_embedder)


def test_backfill_embeds_missing_and_stale_rows_once(engine: sa.Engine, tiny_embedder: Any) -> None:
    Base.metadata.create_all(engine)
    try:
        insert(engine, range(250))  # no triggers: nothing queued, nothing embedded
        totals: list[int] = []
        progress: list[int] = []
        recording = Recording(tiny_embedder)
        stats = backfill(
            engine,
            Post.embedding,
            recording,
            batch_size=100,
            on_total=totals.append,
            on_progress=progress.append,
        )
        assert totals == [250] and sum(progress) == 250 and stats.embedded == 250
        assert_all_fresh(engine, tiny_embedder)
        assert backfill(engine, Post.embedding, recording).stale_at_start == 0

        class NewVersion(Recording):
            model_version = "2"

        newer = NewVersion(tiny_embedder)
        newer.model_version = "2"
        assert backfill(engine, Post.embedding, newer).embedded == 250
        assert {row[1] for row in stored(engine).values()} == {"tiny@2"}
    finally:
        Base.metadata.drop_all(engine)


def test_a_worker_refuses_a_column_of_another_dimension(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    with posts.begin() as connection:
        sync_op(connection, dimension=16)
    with pytest.raises(DimensionMismatchError, match="16-dimensional"):
        Worker(posts, tiny_embedder).run(until_empty=True)
    with pytest.raises(SyncError, match="no registered vector column"):
        Worker(posts, tiny_embedder, columns=["nope.nothing"]).run(until_empty=True)
    target = SyncTarget.from_column(Post.embedding)
    assert target.model_column == "embedding_model" and target.sources == ("ti:tle", "bo%dy")


def test_a_registered_column_whose_table_is_gone_does_not_stop_the_worker(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    from semdb.sync.registry import register, unregister_statement

    ghost = SyncTarget("public", "gone_table", "embedding", ("id",), ("body",), "tiny", DIM)
    with posts.begin() as connection:
        register(connection, ghost)
    try:
        insert(posts, range(5))
        assert Worker(posts, tiny_embedder).run(until_empty=True).embedded == 5
    finally:
        with posts.begin() as connection:
            connection.execute(unregister_statement(ghost))


def test_a_worker_whose_session_is_killed_reconnects_and_loses_nothing(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    """The server ends the worker's session mid-batch (an administrator, or
    idle_in_transaction_session_timeout): the claims come back and the worker goes on."""
    insert(posts, range(30))
    killed = threading.Event()

    class KillOnce(Recording):
        def embed(self, texts: Any, *, kind: str = "document") -> np.ndarray:
            if not killed.is_set():
                killed.set()
                with posts.connect() as admin:
                    admin.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'semdb worker%'"
                        )
                    )
                    admin.commit()
            return super().embed(texts, kind=kind)

    worker = Worker(posts, KillOnce(tiny_embedder), batch_size=10, poll_seconds=0.1)
    stats = worker.run(until_empty=True)
    assert killed.is_set() and stats.embedded == 30 and queue_size(posts) == 0
    assert_all_fresh(posts, tiny_embedder)


@contextmanager
def refusing_row_13(engine: sa.Engine, refusal: str) -> Iterator[None]:
    """Make writing a vector into row 13 fail: a trigger of the user's that raises (with
    lock_not_available for "lock", as a lock timeout does: an OperationalError for psycopg,
    like a lost connection, that must not be taken for one), or a check constraint."""
    with engine.begin() as connection:
        table = connection.dialect.identifier_preparer.quote(Post.__tablename__)
        if refusal == "check":
            connection.execute(
                sa.text(
                    f"ALTER TABLE {table} ADD CONSTRAINT no_vector_for_13 "
                    "CHECK (id <> 13 OR embedding IS NULL) NOT VALID"
                )
            )
        else:
            errcode = "lock_not_available" if refusal == "lock" else "raise_exception"
            connection.execute(
                sa.text(
                    "CREATE FUNCTION refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$"
                    " BEGIN IF NEW.id = 13 AND NEW.embedding IS NOT NULL THEN"
                    f" RAISE EXCEPTION 'row 13 refused' USING ERRCODE = '{errcode}'; END IF;"
                    " RETURN NEW; END $$"
                )
            )
            connection.execute(
                sa.text(
                    f"CREATE TRIGGER refuse_13 BEFORE UPDATE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_13()"
                )
            )
    try:
        yield
    finally:
        with engine.begin() as connection:
            if refusal == "check":
                connection.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT no_vector_for_13"))
            else:
                connection.execute(sa.text(f"DROP TRIGGER refuse_13 ON {table}"))
                connection.execute(sa.text("DROP FUNCTION refuse_13()"))


def recorded_errors(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT key->>'id', attempt, gave_up, error, worker FROM semdb.errors "
                    "ORDER BY id"
                )
            ).all()
        )


@pytest.mark.parametrize("refusal", ["trigger", "lock", "check"])
def test_a_row_whose_vector_cannot_be_written_does_not_stop_the_queue(
    posts: sa.Engine, tiny_embedder: Any, refusal: str
) -> None:
    """Writing one row's vector fails: that row alone is recorded in semdb.errors, retried
    with backoff and given up; every other row is embedded and the worker keeps running."""
    import semdb

    insert(posts, range(40))
    with refusing_row_13(posts, refusal):
        worker = semdb.Worker(
            posts, tiny_embedder, batch_size=16, backoff_seconds=0.0, max_attempts=3
        )
        stats = worker.run(until_empty=True)
        rows = stored(posts)
        assert rows[13][0] is None
        assert all(rows[i][0] is not None for i in rows if i != 13)
        assert stats.embedded == 39 and stats.given_up == 1
        assert queue_size(posts) == 0
        errors = recorded_errors(posts)
        assert [(e[0], e[1], e[2]) for e in errors] == [
            ("13", 1, False),
            ("13", 2, False),
            ("13", 3, True),
        ]
        expected = "no_vector_for_13" if refusal == "check" else "row 13 refused"
        assert expected in errors[0][3] and "writing the vector failed" in errors[0][3]
        # The worker still runs: later rows are embedded.
        insert(posts, range(100, 103))
        assert semdb.Worker(posts, tiny_embedder).run(until_empty=True).embedded == 3


def test_backfill_writes_every_row_but_the_one_whose_write_fails(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    import semdb

    insert(posts, range(30))
    with refusing_row_13(posts, "trigger"):
        stats = semdb.backfill(posts, Post.embedding, tiny_embedder, batch_size=8)
        assert stats.embedded == 29 and stats.failed == 1 and stats.skipped == 0
        rows = stored(posts)
        assert rows[13][0] is None and all(rows[i][0] is not None for i in rows if i != 13)
        errors = recorded_errors(posts)
        assert [(e[0], e[1], e[2]) for e in errors] == [("13", 1, True)]
        assert "row 13 refused" in errors[0][3] and errors[0][4].startswith("backfill ")
    # Once the cause is gone, the next backfill writes it.
    assert semdb.backfill(posts, Post.embedding, tiny_embedder).embedded == 1


def test_a_backfill_whose_session_is_killed_says_so_and_resumes(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    """The server ends backfill's session mid-run: a clear error (no half-written batch),
    and the next run embeds the rest."""
    import semdb

    insert(posts, range(40))
    calls = 0

    class KillOnSecondBatch(Recording):
        def embed(self, texts: Any, *, kind: str = "document") -> np.ndarray:
            nonlocal calls
            calls += 1
            if calls == 2:
                with posts.connect() as admin:
                    admin.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'semdb backfill%'"
                        )
                    )
                    admin.commit()
            return super().embed(texts, kind=kind)

    with pytest.raises(SyncError, match="run it again") as lost:
        semdb.backfill(posts, Post.embedding, KillOnSecondBatch(tiny_embedder), batch_size=10)
    assert "connection" in lost.value.one_line()
    assert sum(vector is not None for vector, _, _ in stored(posts).values()) == 10
    assert semdb.backfill(posts, Post.embedding, tiny_embedder).embedded == 30
    assert_all_fresh(posts, tiny_embedder)


def test_a_row_the_application_keeps_locked_does_not_hold_the_worker(
    posts: sa.Engine, tiny_embedder: Any
) -> None:
    """The application holds a lock on one row for longer than the worker's lock_timeout:
    that row's write fails alone (recorded, retried later), the others are written, and the
    worker does not wait for the application's transaction."""
    import semdb

    insert(posts, range(20))
    with posts.connect() as application:
        application.execute(sa.select(TABLE.c.id).where(TABLE.c.id == 13).with_for_update())
        started = time.monotonic()
        worker = semdb.Worker(posts, tiny_embedder, lock_timeout_seconds=0.3, backoff_seconds=60)
        stats = worker.run(until_empty=True)
        assert time.monotonic() - started < 20
        application.rollback()
    assert stats.embedded == 19 and stats.failed == 1 and stats.given_up == 0
    errors = recorded_errors(posts)
    assert [(e[0], e[1], e[2]) for e in errors] == [("13", 1, False)]
    assert "LockNotAvailable" in errors[0][3]
    assert queue_size(posts) == 1  # retried after its backoff
