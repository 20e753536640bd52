"""semdb monitor against a real server: the faults it must notice, bad input, metrics.

Every fault is made for real: an index dropped, vectors rewritten as another model's, a
queue that grows while no worker runs, rows of another domain embedded after the drift
snapshot, an HNSW index too sparse for its ef_search. Reports are read through the public
API (``semdb.monitor.monitor``) and the command line (``semdb monitor --json``).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semdb
import semdb.alembic  # op.create_embedding_sync
from semdb import HNSW, embedding_column
from semdb.errors import MonitorError, SchemaNotReadyError
from semdb.monitor import monitor, snapshot
from semdb.monitor.metrics import WorkerMetrics, report_text
from semdb.sync import Worker

from .conftest import run_semdb

DIM = 32
NAME = "public.monitor_notes.embedding"

WORDS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "we cooked pasta with tomato sauce",
    "the weather was sunny and warm",
    "she read a book about history",
    "they played football after school",
    "fresh bread from the bakery",
    "a quiet walk along the river",
]


def in_domain(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} and {WORDS[(i * 7 + 3) % len(WORDS)]}, day {i % 30}"


def other_domain(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(f"{rng.integers(0, 16**6):06x}{rng.integers(0, 999)}" for _ in range(8))


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "monitor_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=DIM, sync="queued", index=HNSW()
    )


TABLE = Note.__table__


@pytest.fixture()
def notes(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "monitor_notes", "embedding", sources=["body"], model="tiny", dimension=DIM
        )
    yield engine
    semdb.query_log.disable(engine)
    with engine.begin() as connection:
        for table in ("queue", "errors", "sync_activity", "query_log", "query_feedback"):
            connection.execute(sa.text(f"DELETE FROM semdb.{table}"))
        connection.execute(sa.text("DELETE FROM semdb.drift_snapshots"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            "monitor_notes", "embedding"
        )
    Base.metadata.drop_all(engine)


def add(engine: sa.Engine, ids: range, text: Any = in_domain) -> None:
    with engine.begin() as connection:
        connection.execute(sa.insert(TABLE), [{"id": i, "body": text(i)} for i in ids])


def embed(engine: sa.Engine, embedder: Any, **options: Any) -> Any:
    worker = Worker(engine, embedder, columns=["monitor_notes.embedding"], batch_size=256)
    for observer in options.pop("observers", []):
        worker.observers.append(observer)
    return worker.run(until_empty=True)


def column(engine: sa.Engine, **options: Any) -> Any:
    report = monitor(engine, columns=[NAME], **options)
    assert [c.name for c in report.columns] == [NAME]
    return report.columns[0]


def test_a_healthy_column_reports_its_figures_and_no_problem(
    notes: sa.Engine, tiny_embedder: Any
) -> None:
    add(notes, range(400))
    embed(notes, tiny_embedder)
    with notes.begin() as connection:
        connection.execute(sa.text("ANALYZE monitor_notes"))
    report = column(notes, recall_queries=20)
    cov = report.coverage
    assert (cov.rows, cov.with_vector, cov.missing, cov.stale, cov.other_model) == (
        400,
        400,
        0,
        0,
        0,
    )
    assert not cov.estimated
    assert report.queue.depth == 0 and report.queue.embedded_recently == 400
    assert report.queue.rate == pytest.approx(400 / 300)
    assert report.index.method == "hnsw" and report.index.usable and report.index.planner_uses
    assert report.recall.queries == 20 and report.recall.source == "stored rows"
    assert report.recall.recall >= 0.95
    assert report.drift is None and "monitor --snapshot" in report.drift_note
    assert report.problems == []

    result = run_semdb("monitor", "--json", "--column", NAME, "--recall", "10")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["columns"][0]["coverage"]["with_vector"] == 400
    assert printed["columns"][0]["index"]["usable"] is True
    assert printed["columns"][0]["recall"]["queries"] == 10
    table = run_semdb("monitor", "--column", NAME)
    assert table.returncode == 0 and "with a vector" in table.stdout, table.stderr


def test_stale_rows_and_vectors_of_another_model_are_counted(
    notes: sa.Engine, tiny_embedder: Any
) -> None:
    add(notes, range(100))
    embed(notes, tiny_embedder)
    with notes.begin() as connection:
        # another model's vectors, as a worker of that model (or a script) would leave them
        connection.execute(sa.update(TABLE).where(TABLE.c.id < 7).values(embedding_model="other@3"))
        # text changed while the triggers were off (a bulk load with triggers disabled)
        connection.execute(sa.text("ALTER TABLE monitor_notes DISABLE TRIGGER USER"))
        connection.execute(
            sa.update(TABLE).where(TABLE.c.id >= 90).values(body=TABLE.c.body + " (edited)")
        )
        connection.execute(sa.text("ALTER TABLE monitor_notes ENABLE TRIGGER USER"))
    report = column(notes)
    assert report.coverage.other_model == 7 and report.coverage.stale == 10
    assert any("7 vectors were made by another model" in p for p in report.problems)
    assert any("10 vectors are stale" in p for p in report.problems)


def test_a_dropped_index_is_reported(notes: sa.Engine, tiny_embedder: Any) -> None:
    add(notes, range(50))
    embed(notes, tiny_embedder)
    assert column(notes).index is not None
    with notes.begin() as connection:
        connection.execute(sa.text("DROP INDEX ix_monitor_notes_embedding_hnsw"))
    report = column(notes)
    assert report.index is None
    assert any(p.startswith("no vector index") for p in report.problems)
    assert 'semdb_index_present{column="public.monitor_notes.embedding"} 0.0' in report_text(
        monitor(notes, columns=[NAME])
    )


def test_an_invalid_index_is_reported(notes: sa.Engine, tiny_embedder: Any) -> None:
    add(notes, range(50))
    embed(notes, tiny_embedder)
    with notes.begin() as connection:  # what a failed CREATE INDEX CONCURRENTLY leaves
        connection.execute(
            sa.text(
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'ix_monitor_notes_embedding_hnsw'::regclass"
            )
        )
    report = column(notes)
    assert report.index is not None and not report.index.usable
    assert any("is not valid" in p for p in report.problems)


def test_a_stopped_worker_with_a_growing_queue_is_reported(
    notes: sa.Engine, tiny_embedder: Any
) -> None:
    add(notes, range(30))
    first = column(notes).queue
    add(notes, range(30, 80))
    second = column(notes).queue
    assert (first.depth, second.depth) == (30, 80)
    assert not any("is a worker running" in p for p in column(notes).problems)  # young queue
    with notes.begin() as connection:  # ten minutes pass with no worker
        connection.execute(
            sa.text("UPDATE semdb.queue SET enqueued_at = enqueued_at - interval '10 minutes'")
        )
    report = column(notes)
    assert report.queue.oldest_seconds >= 600 and report.queue.embedded_recently == 0
    assert any("80 rows queued" in p and "is a worker running" in p for p in report.problems)
    prometheus = report_text(monitor(notes, columns=[NAME]))
    assert 'semdb_queue_depth{column="public.monitor_notes.embedding"} 80.0' in prometheus

    embed(notes, tiny_embedder)  # a worker comes back
    report = column(notes)
    assert report.queue.depth == 0 and report.queue.embedded_recently == 80
    assert not any("is a worker running" in p for p in report.problems)


def test_rows_of_another_domain_after_the_snapshot_suggest_retraining(
    notes: sa.Engine, tiny_embedder: Any
) -> None:
    add(notes, range(1200))
    embed(notes, tiny_embedder)
    taken = snapshot(notes, columns=[NAME])
    assert list(taken) == [NAME]
    add(notes, range(1200, 1500))  # more of the same
    embed(notes, tiny_embedder)
    same = column(notes).drift
    assert same.rows.probes == 300 and same.rows.psi is not None
    assert not same.retrain_suggested, same
    add(notes, range(1500, 1900), other_domain)  # then something else entirely
    embed(notes, tiny_embedder)
    report = column(notes)
    assert report.drift.rows.psi > 0.25, report.drift
    assert report.drift.retrain_suggested
    message = next(p for p in report.problems if p.startswith("retrain suggested"))
    assert "semdb train" in message and "semdb eval" in message
    assert "semdb model activate" in message and f"PSI {report.drift.rows.psi:.2f}" in message
    printed = run_semdb("monitor", "--column", NAME)
    assert "retrain suggested" in " ".join(printed.stdout.split())


def test_an_index_too_sparse_for_its_ef_search_is_reported(engine: sa.Engine) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3000, DIM)).astype(np.float32)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE monitor_sparse (id int PRIMARY KEY, body text, "
                "embedding vector(32), embedding_model text, embedding_hash bytea)"
            )
        )
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "monitor_sparse",
            "embedding",
            sources=["body"],
            model="tiny",
            dimension=DIM,
        )
        connection.execute(
            sa.text(
                "INSERT INTO monitor_sparse (id, body, embedding, embedding_model) "
                "SELECT i, 'row ' || i, CAST(v AS vector), 'tiny@1' "
                "FROM unnest(CAST(:ids AS int[]), CAST(:vs AS text[])) AS u(i, v)"
            ),
            {
                "ids": list(range(3000)),
                "vs": ["[" + ",".join(f"{x:.6f}" for x in v) + "]" for v in vectors],
            },
        )
        connection.execute(
            sa.text(
                "CREATE INDEX monitor_sparse_hnsw ON monitor_sparse USING hnsw "
                "(embedding vector_cosine_ops) WITH (m = 2, ef_construction = 4)"
            )
        )
    try:
        report = monitor(
            engine, columns=["monitor_sparse.embedding"], recall_queries=30, ef_search=10
        ).columns[0]
        r = report.recall
        assert r.ef_search == 10 and r.recall < 0.95, r
        assert max(r.by_ef) > 10 and r.by_ef[max(r.by_ef)] > r.recall
        assert any(p.startswith("recall@10 of the index is") for p in report.problems)
    finally:
        with engine.begin() as connection:
            Operations(MigrationContext.configure(connection)).drop_embedding_sync(
                "monitor_sparse", "embedding"
            )
            connection.execute(sa.text("DROP TABLE monitor_sparse"))


def test_a_registered_column_whose_table_was_dropped(notes: sa.Engine) -> None:
    with notes.begin() as connection:
        connection.execute(sa.text("ALTER TABLE monitor_notes RENAME TO monitor_notes_moved"))
    try:
        report = column(notes)
        assert not report.table_exists and report.coverage is None
        assert any("its table is gone" in p for p in report.problems)
        result = run_semdb("monitor", "--column", NAME)
        assert result.returncode == 0 and "dropped" in result.stdout, result.stderr
    finally:
        with notes.begin() as connection:
            connection.execute(sa.text("ALTER TABLE monitor_notes_moved RENAME TO monitor_notes"))


def test_no_columns_and_no_schema_give_clear_messages(
    engine: sa.Engine, empty_database_url: URL
) -> None:
    env = {"SEMDB_DATABASE_URL": semdb.db.libpq_uri(empty_database_url)}
    unmigrated = run_semdb("monitor", env=env)
    assert unmigrated.returncode == 1 and "run: semdb db upgrade" in unmigrated.stderr
    bare = semdb.create_engine(empty_database_url)
    try:
        with pytest.raises(SchemaNotReadyError, match="semdb db upgrade"):
            monitor(bare)
        from semdb.db.migrate import upgrade

        upgrade(bare)
        report = monitor(bare)
        assert report.columns == [] and "no vector column is registered" in report.message
        with pytest.raises(MonitorError, match="no vector column is registered"):
            snapshot(bare)
    finally:
        bare.dispose()
    fresh = run_semdb("monitor", env={"SEMDB_DATABASE_URL": semdb.db.libpq_uri(empty_database_url)})
    assert fresh.returncode == 0 and "no vector column is registered" in fresh.stdout


def test_the_monitor_never_writes(notes: sa.Engine, tiny_embedder: Any, database_url: URL) -> None:
    add(notes, range(150))
    embed(notes, tiny_embedder)
    snapshot(notes, columns=[NAME])
    add(notes, range(150, 160))
    # every session of this engine is read only: a single write would fail the report
    read_only = semdb.create_engine(
        database_url, connect_args={"options": "-c default_transaction_read_only=on"}
    )
    try:
        report = monitor(read_only, columns=[NAME], recall_queries=5)
        assert report.columns[0].coverage.rows == 160 and report.columns[0].recall is not None
    finally:
        read_only.dispose()


def test_worker_metrics_are_served_for_prometheus(notes: sa.Engine, tiny_embedder: Any) -> None:
    add(notes, range(300))
    metrics = WorkerMetrics(notes)
    server, _thread = metrics.serve(0, address="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        before = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'semdb_queue_depth{column="public.monitor_notes.embedding"} 300.0' in before
        embed(notes, tiny_embedder, observers=[metrics])
        after = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        server.shutdown()
    assert (
        'semdb_worker_embedded_rows_total{column="public.monitor_notes.embedding"} 300.0' in after
    )
    assert 'semdb_queue_depth{column="public.monitor_notes.embedding"} 0.0' in after
    assert 'semdb_worker_batch_seconds_count{column="public.monitor_notes.embedding"} 2.0' in after


# -- the query log --------------------------------------------------------------------------


def logged(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT id, column_id, column_name, query, filter, plan, k, rows, results, "
                "latency_ms FROM semdb.query_log ORDER BY seq"
            )
        ).all()


def test_sampled_searches_are_logged_with_feedback_and_production_ndcg(
    notes: sa.Engine, tiny_embedder: Any
) -> None:
    from sqlalchemy.orm import Session

    add(notes, range(200))
    embed(notes, tiny_embedder)
    semdb.query_log.enable(notes, sample=1.0, capacity=1000)
    query = tiny_embedder.embed_query(in_domain(3))
    with Session(notes) as session:
        hits = semdb.search(session, Note.embedding, query, k=5, where=Note.id < 100)
    semdb.query_log.flush(notes)
    (entry,) = logged(notes)
    assert entry.id == hits.query_id and entry.column_name == NAME and entry.column_id
    assert np.allclose(np.frombuffer(entry.query, np.float32), query)
    assert "monitor_notes.id <" in entry.filter and entry.k == 5 and entry.rows == 5
    assert entry.plan == hits.plan.path and entry.latency_ms > 0
    assert entry.results == [[hit.row.id] for hit in hits]

    # the user clicked the third hit: nDCG@10 = 1/log2(4) = 0.5
    assert semdb.query_log.feedback(notes, hits.query_id, clicked=[hits[2].row.id]) == 1
    quality = semdb.query_log.production_ndcg(notes, k=10)
    assert quality.judged == 1 and quality.ndcg == pytest.approx(0.5)
    report = column(notes, recall_queries=1)
    assert report.production_ndcg == pytest.approx(0.5) and report.production_judged == 1
    assert report.recall.source == "query log"  # the logged query, not stored rows
    assert semdb.query_log.feedback(notes, 12345, clicked=[1]) == 0  # unknown search

    # monitor's own searches (recall) are not logged
    semdb.query_log.flush(notes)
    assert len(logged(notes)) == 1


def test_the_query_log_is_a_bounded_ring_and_samples(notes: sa.Engine, tiny_embedder: Any) -> None:
    add(notes, range(50))
    embed(notes, tiny_embedder)
    semdb.query_log.enable(notes, sample=1.0, capacity=5)
    vectors = tiny_embedder.embed([in_domain(i) for i in range(12)])
    ids = []
    with notes.connect() as connection:
        for vector in vectors:
            ids.append(semdb.search(connection, TABLE.c.embedding, vector, k=3).query_id)
    semdb.query_log.flush(notes)
    entries = logged(notes)
    assert [e.id for e in entries] == ids[-5:]  # the latest five, the oldest overwritten

    semdb.query_log.enable(notes, sample=0.0, capacity=5)
    with notes.connect() as connection:
        result = semdb.search(connection, TABLE.c.embedding, vectors[0], k=3)
    semdb.query_log.flush(notes)
    assert result.query_id is None and [e.id for e in logged(notes)] == ids[-5:]
    semdb.query_log.disable(notes)
    with notes.connect() as connection:
        assert semdb.search(connection, TABLE.c.embedding, vectors[0], k=3).query_id is None


def test_the_query_log_stays_off_on_a_read_only_server(
    notes: sa.Engine, tiny_embedder: Any, database_url: URL
) -> None:
    add(notes, range(50))
    embed(notes, tiny_embedder)
    standby = semdb.create_engine(
        database_url, connect_args={"options": "-c default_transaction_read_only=on"}
    )
    try:
        semdb.query_log.enable(standby, sample=1.0)
        vector = tiny_embedder.embed_query("a dog")
        for _ in range(3):
            with standby.connect() as connection:
                hits = semdb.search(connection, TABLE.c.embedding, vector, k=3)
                assert len(hits) == 3  # searches go on
        semdb.query_log.flush(standby)
        assert not semdb.query_log.enabled(standby)
    finally:
        semdb.query_log.disable(standby)
        standby.dispose()
    assert logged(notes) == []
