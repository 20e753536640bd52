"""Switching a vector column to another model: shadow column, workers, atomic switch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
import semdb.alembic
from semdb import embedding_column
from semdb.bundles import Bundle
from semdb.bundles.registry import register_bundle
from semdb.errors import DimensionMismatchError, SearchError, SyncError
from semdb.sync import Worker
from semdb.sync.activation import (
    ActivationError,
    NotReady,
    activate,
    activation_progress,
    cancel_activation,
    finish_activation,
    list_activations,
    start_activation,
)

from .embedders import Recording

TABLE = "act_docs"
COLUMN = "act_docs.embedding"


class Base(DeclarativeBase):
    pass


class Doc(Base):
    """The application's declaration before the switch."""

    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=32, sync="queued"
    )


class WideBase(DeclarativeBase):
    pass


class WideDoc(WideBase):
    """The declaration after switching to wide@1 (48 dimensions)."""

    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="wide", dimension=48, sync="queued"
    )


rows_table = sa.table(TABLE, sa.column("id"), sa.column("body"))


@pytest.fixture(scope="module")
def models(engine: sa.Engine, tiny_bundle: Path, other_bundles: dict[str, Path]) -> dict[str, Any]:
    """The three models, registered, and their embedders."""
    from semdb.embed import Embedder

    embedders = {}
    for tag, folder in {"tiny@1": tiny_bundle, **other_bundles}.items():
        register_bundle(engine, Bundle.load(folder))
        embedders[tag] = Embedder.load(folder, provider="cpu")
    return embedders


@pytest.fixture()
def docs(engine: sa.Engine, models: dict[str, Any]) -> Iterator[sa.Engine]:
    """act_docs with 40 rows embedded by tiny@1 through the queue."""
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            TABLE, "embedding", sources=["body"], model="tiny", dimension=32
        )
        connection.execute(
            sa.insert(rows_table), [{"id": i, "body": f"document number {i}"} for i in range(40)]
        )
    Worker(engine, models["tiny@1"]).run(until_empty=True)
    yield engine
    with engine.begin() as connection:
        for activation in list_activations(engine, COLUMN):
            if activation.status == "filling":
                cancel_activation(engine, COLUMN)
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        connection.execute(sa.text("DELETE FROM semdb.errors"))
        connection.execute(sa.text("DELETE FROM semdb.activations"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(TABLE, "embedding")
        connection.execute(sa.text(f"DROP TABLE {TABLE}"))


def nearest(engine: sa.Engine, column: Any, text: str, embedder: Any, k: int = 3) -> list[int]:
    """Ids of the k rows nearest to ``text`` (the session is closed again: it holds the table
    until then)."""
    with Session(engine) as session:
        return [hit.row.id for hit in semdb.search(session, column, text, embedder=embedder, k=k)]


def stored(engine: sa.Engine) -> dict[int, tuple[str, str | None, np.ndarray | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(f"SELECT id, body, embedding_model, embedding::text FROM {TABLE} ORDER BY id")
        ).all()
    return {
        r[0]: (r[1], r[2], None if r[3] is None else np.array(eval(r[3]), dtype=np.float32))
        for r in rows
    }


def assert_all_made_by(engine: sa.Engine, embedder: Any) -> None:
    rows = stored(engine)
    ids = sorted(rows)
    expected = embedder.embed([rows[i][0] for i in ids])
    tag = f"{embedder.model_name}@{embedder.model_version}"
    for position, i in enumerate(ids):
        body, model, vector = rows[i]
        assert model == tag, (i, model)
        assert vector is not None and vector.shape == (embedder.dimension,), i
        assert np.allclose(vector, expected[position], atol=1e-5), i


def columns_of(engine: sa.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(TABLE)}


def registry(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [
            dict(r._mapping)
            for r in connection.execute(
                sa.text(
                    "SELECT id, column_name, model, model_version, dimension, shadow_of "
                    "FROM semdb.vector_columns WHERE table_name = :t ORDER BY id"
                ),
                {"t": TABLE},
            )
        ]


def queued(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT column_id, count(*) FROM semdb.queue GROUP BY column_id")
        ).all()
    return {r[0]: r[1] for r in rows}


def test_switch_to_a_model_of_another_dimension_end_to_end(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    tiny, wide = models["tiny@1"], models["wide@1"]
    assert nearest(docs, Doc.embedding, "document number 3", tiny)[0] == 3

    activation = start_activation(docs, COLUMN, "wide")  # the only version of wide
    assert activation.to_model == "wide@1" and activation.dimension == 48
    assert activation.from_model == "tiny@1"  # pinned from the stored vectors
    assert {"embedding__next", "embedding__next_model", "embedding__next_hash"} <= columns_of(docs)
    live, shadow = registry(docs)
    assert live["model_version"] == "1" and shadow["shadow_of"] == live["id"]
    assert queued(docs) == {shadow["id"]: 40}
    assert activation_progress(docs, activation).done == 0

    # The application goes on writing: new and changed rows are queued for both columns.
    with docs.begin() as connection:
        connection.execute(
            sa.insert(rows_table), [{"id": i, "body": f"late document {i}"} for i in range(40, 45)]
        )
        connection.execute(
            sa.update(rows_table).where(rows_table.c.id < 3).values(body="rewritten text")
        )
    assert queued(docs) == {live["id"]: 8, shadow["id"]: 45}
    with pytest.raises(NotReady):
        finish_activation(docs, activation)

    # The old model's worker keeps the live column fresh, and never touches the shadow.
    Worker(docs, tiny).run(until_empty=True)
    assert queued(docs) == {shadow["id"]: 45}
    assert_all_made_by(docs, tiny)
    assert nearest(docs, Doc.embedding, "late document 41", tiny)[0] == 41

    # The new model's worker fills the shadow only.
    stats = Worker(docs, wide, batch_size=16).run(until_empty=True)
    assert stats.embedded == 45 and queued(docs) == {}
    assert_all_made_by(docs, tiny)
    assert activation_progress(docs, activation).done == 45

    switched = finish_activation(docs, activation)
    assert switched.status == "switched" and switched.finished_at is not None
    assert columns_of(docs) == {"id", "body", "embedding", "embedding_model", "embedding_hash"}
    assert_all_made_by(docs, wide)
    (row,) = registry(docs)
    assert (row["model"], row["model_version"], row["dimension"]) == ("wide", "1", 48)
    with docs.connect() as connection:
        index = connection.execute(
            sa.text(
                "SELECT pg_get_indexdef(x.indexrelid), x.indisvalid FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid WHERE i.relname = :n"
            ),
            {"n": "ix_act_docs_embedding_hnsw"},
        ).one()
        active = connection.execute(
            sa.text("SELECT version FROM semdb.models WHERE name = 'wide' AND active")
        ).scalar()
        triggers = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'act_docs'::regclass "
                "AND NOT tgisinternal"
            )
        ).scalar()
    assert "hnsw (embedding vector_cosine_ops)" in index[0] and index[1]
    assert active == "1" and triggers == 2

    # Queries: the old declaration or the old model are refused, never compared.
    with pytest.raises(SearchError, match="update the declaration"):
        nearest(docs, Doc.embedding, "late document 41", tiny)
    with pytest.raises(DimensionMismatchError):
        nearest(docs, WideDoc.embedding, "late document 41", tiny)
    assert nearest(docs, WideDoc.embedding, "late document 41", wide)[0] == 41

    # Writes after the switch are the new model's work.
    with docs.begin() as connection:
        connection.execute(sa.insert(rows_table), [{"id": 99, "body": "after the switch"}])
    assert Worker(docs, tiny).run(until_empty=True).embedded == 0
    assert Worker(docs, wide).run(until_empty=True).embedded == 1
    assert_all_made_by(docs, wide)


def test_a_new_version_of_the_same_model_never_mixes_with_the_old(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    old, new = models["tiny@1"], models["tiny@2"]
    activation = start_activation(docs, COLUMN, "tiny@2")
    # The new version's worker fills the shadow and leaves the live column alone.
    before = stored(docs)
    with docs.begin() as connection:
        connection.execute(sa.update(rows_table).where(rows_table.c.id == 5).values(body="new"))
    Worker(docs, new).run(until_empty=True)
    after = stored(docs)
    assert {model for _, model, _ in after.values()} == {"tiny@1"}
    assert all(np.array_equal(after[i][2], before[i][2]) for i in before)
    assert queued(docs) == {registry(docs)[0]["id"]: 1}

    # A worker of the old version is writing a batch while the switch comes: the switch
    # waits for it, and its next batch sees the switch and stops.
    slow = Recording(old, delay=1.5)
    worker = Worker(docs, slow)
    runner = threading.Thread(target=worker.run, kwargs={"until_empty": True})
    runner.start()
    while slow.calls == 0:
        time.sleep(0.02)
    # It is embedding the row of id 5 now: the shadow has it (made by tiny@2) already.
    switched = finish_activation(docs, activation)
    runner.join(timeout=30)
    assert switched.status == "switched"
    assert slow.texts == ["new"]  # written into the old column, before the switch
    assert_all_made_by(docs, new)
    # A worker of the old version started now is refused: the column holds tiny@2 only.
    with pytest.raises(SyncError, match="holds vectors of tiny@2"):
        Worker(docs, old).run(until_empty=True)

    with pytest.raises(SearchError, match="tiny@2"):
        nearest(docs, Doc.embedding, "document number 7", old)
    assert nearest(docs, Doc.embedding, "document number 7", new)[0] == 7


def test_queries_during_the_switch_see_one_model(docs: sa.Engine, models: dict[str, Any]) -> None:
    activation = start_activation(docs, COLUMN, "wide@1")
    Worker(docs, models["wide@1"]).run(until_empty=True)
    seen: list[set[tuple[str, int]]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def query() -> None:
        try:
            with docs.connect() as connection:
                while not stop.is_set():
                    rows = connection.execute(
                        sa.text(
                            f"SELECT DISTINCT embedding_model, vector_dims(embedding) FROM {TABLE}"
                        )
                    ).all()
                    connection.commit()
                    seen.append({(r[0], r[1]) for r in rows})
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    thread = threading.Thread(target=query)
    thread.start()
    time.sleep(0.3)
    finish_activation(docs, activation)
    time.sleep(0.3)
    stop.set()
    thread.join()
    assert not failures
    assert all(len(models_seen) == 1 for models_seen in seen)
    assert {("tiny@1", 32)} in seen and {("wide@1", 48)} in seen


def test_bad_input_is_refused_and_nothing_is_lost(docs: sa.Engine, models: dict[str, Any]) -> None:
    before = stored(docs)
    with pytest.raises(ActivationError, match="not in the database's model registry"):
        start_activation(docs, COLUMN, "nosuch")
    with pytest.raises(ActivationError, match="no version 9"):
        start_activation(docs, COLUMN, "wide@9")
    with pytest.raises(SyncError, match="no registered vector column"):
        start_activation(docs, "act_docs.nothing", "wide@1")
    with pytest.raises(DimensionMismatchError, match="48-dimensional"):
        start_activation(docs, COLUMN, "wide@1", dimension=32)
    start_activation(docs, COLUMN, "tiny@2")
    with pytest.raises(ActivationError, match="already being switched to tiny@2"):
        start_activation(docs, COLUMN, "wide@1")
    cancel_activation(docs, COLUMN)
    with pytest.raises(ActivationError, match="already holds"):
        start_activation(docs, COLUMN, "tiny@1")  # pinned to version 1 by the first start
    assert registry(docs)[0]["model_version"] == "1" and len(registry(docs)) == 1
    assert columns_of(docs) == {"id", "body", "embedding", "embedding_model", "embedding_hash"}
    after = stored(docs)
    assert after.keys() == before.keys()
    for key, (body, model, vector) in before.items():
        assert after[key][:2] == (body, model)
        assert np.array_equal(after[key][2], vector)


def test_inline_columns_cannot_be_switched(engine: sa.Engine, models: dict[str, Any]) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE act_inline (id int primary key, body text)"))
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "act_inline", "embedding", sources=["body"], model="tiny", dimension=32, mode="inline"
        )
    try:
        with pytest.raises(ActivationError, match="queued"):
            start_activation(engine, "act_inline.embedding", "wide@1")
    finally:
        with engine.begin() as connection:
            Operations(MigrationContext.configure(connection)).drop_embedding_sync(
                "act_inline", "embedding"
            )
            connection.execute(sa.text("DROP TABLE act_inline"))


def test_an_interrupted_activation_resumes(docs: sa.Engine, models: dict[str, Any]) -> None:
    wide = models["wide@1"]
    first = start_activation(docs, COLUMN, "wide@1")
    Worker(docs, wide, batch_size=8).run(max_batches=2)  # then the worker "dies"
    assert activation_progress(docs, first).done == 16
    # Someone wipes part of the shadow's work: running activate again re-queues it.
    with docs.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
    progress: list[int] = []
    done = activate(
        docs, COLUMN, "wide@1", embedder=wide, on_progress=lambda a, p: progress.append(p.done)
    )
    assert done.id == first.id and done.status == "switched"
    assert progress and progress[-1] == 40
    assert_all_made_by(docs, wide)


def test_cancel_leaves_the_column_as_it_was(docs: sa.Engine, models: dict[str, Any]) -> None:
    before = stored(docs)
    start_activation(docs, COLUMN, "wide@1")
    Worker(docs, models["wide@1"]).run(max_batches=1)
    cancelled = cancel_activation(docs, COLUMN)
    assert cancelled.status == "cancelled"
    assert columns_of(docs) == {"id", "body", "embedding", "embedding_model", "embedding_hash"}
    assert len(registry(docs)) == 1 and queued(docs) == {}
    assert stored(docs).keys() == before.keys()
    assert_all_made_by(docs, models["tiny@1"])
    with pytest.raises(ActivationError, match="no activation"):
        cancel_activation(docs, COLUMN)
    # A new activation can start after a cancelled one.
    assert start_activation(docs, COLUMN, "wide@1").status == "filling"


def test_search_on_a_session_checks_the_model_too(docs: sa.Engine, models: dict[str, Any]) -> None:
    start_activation(docs, COLUMN, "wide@1")  # pins the column to tiny@1
    cancel_activation(docs, COLUMN)
    with Session(docs) as session:
        hits = semdb.search(session, Doc.embedding, "document number 2", embedder=models["tiny@1"])
        assert hits[0].row.id == 2
        with pytest.raises(SearchError, match="not comparable"):
            semdb.search(session, Doc.embedding, "document number 2", embedder=models["tiny@2"])


def test_a_text_search_checks_the_model_in_its_own_statement(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    """No round trip of its own: the search statement reads the registry row, and a mismatch
    (the column is bound to tiny@1 by its first worker) still gets the error naming the
    column and the fix, the session usable afterwards."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    nearest(docs, Doc.embedding, "document number 2", models["tiny@1"])  # per-engine lookups
    sa.event.listen(docs, "before_cursor_execute", record)
    try:
        with Session(docs) as session:
            hits = semdb.search(
                session, Doc.embedding, "document number 2", embedder=models["tiny@1"]
            )
            assert hits[0].row.id == 2
            assert len(statements) == 1 and "semdb.vector_columns" in statements[0]
            with pytest.raises(SearchError) as caught:
                semdb.search(session, Doc.embedding, "document number 2", embedder=models["tiny@2"])
            assert COLUMN in caught.value.message and "not comparable" in caught.value.message
            assert caught.value.fix == "load the model tiny@1: semdb.Embedder.load('tiny@1')"
            assert session.execute(sa.select(sa.func.count()).select_from(rows_table)).scalar()
    finally:
        sa.event.remove(docs, "before_cursor_execute", record)


def autogenerate(engine: sa.Engine, metadata: sa.MetaData) -> list[Any]:
    """What Alembic's autogenerate (with semdb.alembic) wants to change on act_docs."""
    from alembic.autogenerate import produce_migrations

    def include_name(name: Any, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name == TABLE

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": include_name, "compare_type": True}
        )
        return list(produce_migrations(context, metadata).upgrade_ops.ops)


def test_alembic_sees_no_drift_during_and_after_an_activation(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    assert autogenerate(docs, Base.metadata) == []
    activation = start_activation(docs, COLUMN, "wide@1")
    Worker(docs, models["wide@1"]).run(until_empty=True)
    from semdb.sync.activation import build_shadow_indexes

    build_shadow_indexes(docs, activation)
    assert autogenerate(docs, Base.metadata) == []  # the shadow is semdb's business
    finish_activation(docs, activation)
    assert autogenerate(docs, WideBase.metadata) == []  # the declaration, updated
    assert autogenerate(docs, Base.metadata) != []  # the old one is drift now


def test_the_command_line_activates_shows_status_and_explains_errors(
    docs: sa.Engine, models: dict[str, Any], other_bundles: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from .conftest import run_semdb

    home = tmp_path / "home"
    shutil.copytree(other_bundles["wide@1"], home / "models" / "wide" / "1")
    env = {"SEMDB_HOME": str(home)}

    unknown = run_semdb("model", "activate", "nosuch", "--column", COLUMN, env=env)
    assert unknown.returncode == 1 and "Fix:" in unknown.stderr and "nosuch" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    started = run_semdb("model", "activate", "wide", "--column", COLUMN, "--no-wait", env=env)
    assert started.returncode == 0, started.stderr
    assert "semdb worker --model wide@1" in started.stdout
    status = run_semdb("model", "status", "--column", COLUMN, env=env)
    assert status.returncode == 0, status.stderr
    assert "filling" in status.stdout and "0/40" in status.stdout

    done = run_semdb("model", "activate", "wide@1", "--column", COLUMN, "--embed", env=env)
    assert done.returncode == 0, done.stderr
    assert "public.act_docs.embedding now holds vectors of wide@1" in done.stdout
    assert_all_made_by(docs, models["wide@1"])

    # semdb sql embeds with the model the column holds now.
    query = run_semdb(
        "sql",
        f"SELECT id FROM {TABLE} ORDER BY embedding <=> :q LIMIT 1",
        "--embed",
        "q=document number 12",
        env=env,
    )
    assert query.returncode == 0, query.stderr
    assert " 12 " in query.stdout

    cancelled = run_semdb("model", "cancel", "--column", COLUMN, env=env)
    assert cancelled.returncode == 1 and "no activation" in cancelled.stderr


def test_backfill_fills_the_shadow_too(docs: sa.Engine, models: dict[str, Any]) -> None:
    from semdb.sync import backfill

    activation = start_activation(docs, COLUMN, "tiny@2")
    assert activation.shadow is not None
    with pytest.raises(SyncError, match="tiny@2"):  # the old version cannot write there
        backfill(docs, activation.shadow, models["tiny@1"])
    stats = backfill(docs, activation.shadow, models["tiny@2"], batch_size=16)
    assert stats.stale_at_start == 40 and stats.embedded == 40
    Worker(docs, models["tiny@2"]).run(until_empty=True)  # the queue: all fresh, skipped
    finish_activation(docs, activation)
    assert_all_made_by(docs, models["tiny@2"])


def test_an_activation_whose_filling_session_is_killed_still_switches(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    """``activate(embedder=...)`` (``semdb model activate --embed``) fills the shadow with a
    worker: the server ends that worker's session mid-fill, it reconnects, nothing is lost,
    and the switch happens."""
    killed = threading.Event()

    class KillOnce(Recording):
        def embed(self, texts: Any, *, kind: str = "document") -> np.ndarray:
            if not killed.is_set():
                killed.set()
                with docs.connect() as admin:
                    admin.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'semdb worker%'"
                        )
                    )
                    admin.commit()
            return super().embed(texts, kind=kind)

    wide = models["wide@1"]
    done = activate(docs, COLUMN, "wide@1", embedder=KillOnce(wide), batch_size=8)
    assert killed.is_set() and done.status == "switched"
    assert_all_made_by(docs, wide)


def test_an_activation_whose_shadow_write_fails_for_one_row_says_so(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    """A trigger of the application's refuses one row's shadow vector: the other rows are
    filled, the failing one is recorded and retried, then the activation stops with an error
    naming semdb.errors; the column keeps its old model, and once the cause is gone
    activating again switches."""
    with docs.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE FUNCTION act_refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.id = 13 AND NEW.body IS NOT DISTINCT FROM OLD.body THEN "
                "RAISE EXCEPTION 'row 13 refused'; END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            sa.text(
                f"CREATE TRIGGER act_refuse_13 BEFORE UPDATE ON {TABLE} "
                "FOR EACH ROW EXECUTE FUNCTION act_refuse_13()"
            )
        )
    wide = models["wide@1"]
    try:
        started = time.monotonic()
        with pytest.raises(SyncError, match="1 row.*cannot be embedded.*semdb.errors"):
            activate(docs, COLUMN, "wide@1", embedder=wide, poll_seconds=0.1, backoff_seconds=0.05)
        assert time.monotonic() - started < 60
        assert_all_made_by(docs, models["tiny@1"])  # not switched
        with docs.connect() as connection:
            errors = connection.execute(
                sa.text("SELECT DISTINCT key->>'id', error FROM semdb.errors")
            ).all()
        assert len(errors) == 1 and errors[0][0] == "13" and "row 13 refused" in errors[0][1]
    finally:
        with docs.begin() as connection:
            connection.execute(sa.text(f"DROP TRIGGER act_refuse_13 ON {TABLE}"))
            connection.execute(sa.text("DROP FUNCTION act_refuse_13()"))
    assert activate(docs, COLUMN, "wide@1", embedder=wide).status == "switched"
    assert_all_made_by(docs, wide)
