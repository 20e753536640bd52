"""Embedding columns on declaratively partitioned tables (LIST by tenant, RANGE by time):
vector indexes per partition, queued sync through the partitioned table, partition pruning
of filtered searches (EXPLAIN), k rows across partitions, Alembic, model activation."""

from __future__ import annotations

import datetime as dt
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
from semdb.errors import DeclarationError
from semdb.orm import HNSW, embedding_column
from semdb.retrieval.explain import plan_nodes
from semdb.sync import Worker
from semdb.sync.activation import activate

from .vector_data import clustered_vectors

DIM = 32
TENANTS = 5
PER_TENANT = 300


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    """LIST partitions by tenant; the partition key is part of the primary key."""

    __tablename__ = "part_tickets"
    __table_args__ = {"postgresql_partition_by": "LIST (tenant)"}
    tenant: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=DIM, sync="queued", index=HNSW()
    )


class Event(Base):
    """RANGE partitions by month."""

    __tablename__ = "part_events"
    __table_args__ = {"postgresql_partition_by": "RANGE (at)"}
    at: Mapped[dt.datetime] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=DIM, sync="manual", index=HNSW()
    )


class WideBase(DeclarativeBase):
    pass


class WideTicket(WideBase):
    """part_tickets after switching to wide@1 (48 dimensions)."""

    __tablename__ = "part_tickets"
    __table_args__ = {"postgresql_partition_by": "LIST (tenant)"}
    tenant: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="wide", dimension=48, sync="queued", index=HNSW()
    )


MONTHS = [dt.datetime(2026, m, 1) for m in range(1, 5)]


def explain(session: Session, *args: Any, **kwargs: Any) -> list[str]:
    _, plan = semdb.explain_search(session, *args, **kwargs)
    return [node.get("Relation Name", "") for node in plan_nodes(plan)]


@pytest.fixture(scope="module")
def tables(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        for tenant in range(TENANTS):
            connection.exec_driver_sql(
                f"CREATE TABLE part_tickets_{tenant} PARTITION OF part_tickets "
                f"FOR VALUES IN ({tenant})"
            )
        for start, end in zip(MONTHS, [*MONTHS[1:], dt.datetime(2026, 5, 1)], strict=True):
            connection.exec_driver_sql(
                f"CREATE TABLE part_events_{start.month} PARTITION OF part_events "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "part_tickets",
            "embedding",
            sources=["body"],
            model="tiny",
            dimension=DIM,
            key=["tenant", "id"],
        )
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "part_events",
            "embedding",
            sources=["body"],
            model="tiny",
            dimension=DIM,
            key=["at", "id"],
            mode="manual",
        )
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        for table in ("part_tickets", "part_events"):
            Operations(MigrationContext.configure(connection)).drop_embedding_sync(
                table, "embedding"
            )
    Base.metadata.drop_all(engine)


def add_tickets(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.add_all(
            Ticket(tenant=t, id=i, body=f"ticket {i} of tenant {t} about topic {i % 7}")
            for t in range(TENANTS)
            for i in range(PER_TENANT)
        )
        session.commit()


@pytest.fixture()
def filled(tables: sa.Engine, tiny_embedder: Any) -> sa.Engine:
    """part_tickets with its rows embedded (when a test runs alone)."""
    with tables.connect() as connection:
        present = connection.execute(sa.text("SELECT count(*) FROM part_tickets")).scalar()
    if not present:
        add_tickets(tables)
        Worker(tables, tiny_embedder, batch_size=200).run(until_empty=True)
        with tables.begin() as connection:
            connection.exec_driver_sql("ANALYZE part_tickets")
    return tables


def test_queued_sync_through_the_partitioned_table(tables: sa.Engine, tiny_embedder: Any) -> None:
    add_tickets(tables)
    with tables.connect() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar()
    assert queued == TENANTS * PER_TENANT
    stats = Worker(tables, tiny_embedder, batch_size=200).run(until_empty=True)
    assert stats.embedded == TENANTS * PER_TENANT
    with tables.begin() as connection:
        missing = connection.execute(
            sa.text("SELECT count(*) FROM part_tickets WHERE embedding IS NULL")
        ).scalar()
        assert missing == 0
        # an update of the source through the parent queues the row again
        connection.execute(
            sa.text("UPDATE part_tickets SET body = 'changed' WHERE tenant = 2 AND id = 5")
        )
        keys = connection.execute(sa.text("SELECT key FROM semdb.queue")).scalars().all()
        assert keys == [{"tenant": 2, "id": 5}]
        connection.exec_driver_sql("ANALYZE part_tickets")
    Worker(tables, tiny_embedder).run(until_empty=True)


def test_vector_indexes_exist_on_every_partition(tables: sa.Engine) -> None:
    with tables.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT tablename, indexdef FROM pg_indexes "
                "WHERE tablename LIKE 'part_tickets_%' AND indexdef LIKE '%USING hnsw%'"
            )
        ).all()
    assert sorted(r[0] for r in rows) == [f"part_tickets_{t}" for t in range(TENANTS)]


def test_a_search_with_the_tenant_is_pruned_to_its_partition(
    filled: sa.Engine, tiny_embedder: Any
) -> None:
    with Session(filled) as session:
        relations = explain(
            session,
            Ticket.embedding,
            "topic 3",
            embedder=tiny_embedder,
            k=5,
            where=Ticket.tenant == 3,
        )
        assert {r for r in relations if r} == {"part_tickets_3"}
        hits = semdb.search(
            session,
            Ticket.embedding,
            "topic 3",
            embedder=tiny_embedder,
            k=5,
            where=Ticket.tenant == 3,
        )
        assert len(hits) == 5 and {hit.row.tenant for hit in hits} == {3}


def test_without_the_tenant_k_rows_come_from_all_partitions(
    filled: sa.Engine, tiny_embedder: Any
) -> None:
    with Session(filled) as session:
        relations = explain(session, Ticket.embedding, "topic 3", embedder=tiny_embedder, k=20)
        assert {r for r in relations if r} == {f"part_tickets_{t}" for t in range(TENANTS)}
        for plan in ("auto", "exact"):
            hits = semdb.search(
                session, Ticket.embedding, "topic 3", embedder=tiny_embedder, k=20, plan=plan
            )
            assert len(hits) == 20
        exact = semdb.search(
            session, Ticket.embedding, "topic 3", embedder=tiny_embedder, k=20, plan="exact"
        )
        index = semdb.search(session, Ticket.embedding, "topic 3", embedder=tiny_embedder, k=20)
        assert (
            len(
                {(h.row.tenant, h.row.id) for h in exact}
                & {(h.row.tenant, h.row.id) for h in index}
            )
            >= 16
        )


def test_range_partitions_by_time(tables: sa.Engine) -> None:
    vectors = clustered_vectors(400, DIM, seed=9)
    with tables.begin() as connection:
        connection.execute(
            sa.insert(Event.__table__),
            [
                {
                    "at": MONTHS[i % 4] + dt.timedelta(hours=i),
                    "id": i,
                    "body": "e",
                    "embedding": vectors[i],
                }
                for i in range(400)
            ],
        )
        connection.exec_driver_sql("ANALYZE part_events")
    window = Event.at.between(dt.datetime(2026, 2, 1), dt.datetime(2026, 2, 28))
    with Session(tables) as session:
        relations = explain(session, Event.embedding, vectors[1], k=5, where=window)
        assert {r for r in relations if r} == {"part_events_2"}
        hits = semdb.search(session, Event.embedding, vectors[1], k=5, where=window)
        assert hits[0].row.id == 1 and all(h.row.at.month == 2 for h in hits)
        assert len(semdb.search(session, Event.embedding, vectors[1], k=30)) == 30


def partition_indexes(engine: sa.Engine, parent_index: str) -> dict[str, bool]:
    """The partitions' indexes attached to ``parent_index`` (name -> valid), and the parent's."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT c.relname, x.indisvalid FROM pg_partition_tree(to_regclass(:name)) AS t "
                "JOIN pg_class c ON c.oid = t.relid JOIN pg_index x ON x.indexrelid = c.oid"
            ),
            {"name": parent_index},
        ).all()
    return {name: valid for name, valid in rows}


def test_a_vector_index_built_concurrently_partition_by_partition(tables: sa.Engine) -> None:
    with tables.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        operations = Operations(MigrationContext.configure(connection))
        operations.create_vector_index(
            "ix_part_tickets_half",
            "part_tickets",
            "embedding",
            dimension=DIM,
            halfvec=True,
            m=8,
            ef_construction=32,
            concurrently=True,
        )
        connection.commit()
    built = partition_indexes(tables, "ix_part_tickets_half")
    assert len(built) == TENANTS + 1 and all(built.values())  # the parent's is valid too
    with tables.connect() as connection:
        definitions = connection.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_part_tickets_half'")
        ).scalar_one()
    assert "halfvec_cosine_ops" in definitions and "ONLY" in definitions
    # a partition created later gets the index (PostgreSQL clones a valid partitioned index)
    with tables.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE part_tickets_99 PARTITION OF part_tickets FOR VALUES IN (99)"
        )
    assert len(partition_indexes(tables, "ix_part_tickets_half")) == TENANTS + 2
    with tables.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        operations = Operations(MigrationContext.configure(connection))
        operations.drop_vector_index("ix_part_tickets_half", "part_tickets", concurrently=True)
        connection.commit()
        connection.exec_driver_sql("DROP TABLE part_tickets_99")
        connection.commit()
    assert partition_indexes(tables, "ix_part_tickets_half") == {}


def test_autogenerate_sees_no_drift_on_a_partitioned_table(tables: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata

    with tables.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": lambda name, type_, parents: type_ != "schema" or name != "semdb",
                # the other tests' tables share the database
                "include_object": lambda obj, name, type_, reflected, compare_to: (
                    type_ != "table" or not reflected or name.startswith("part_")
                ),
            },
        )
        diffs = compare_metadata(context, Base.metadata)
    assert diffs == []


def test_the_sync_key_must_hold_the_partition_key(tables: sa.Engine) -> None:
    with tables.begin() as connection:
        with pytest.raises(DeclarationError, match="partition key.*tenant") as error:
            Operations(MigrationContext.configure(connection)).create_embedding_sync(
                "part_tickets",
                "embedding",
                sources=["body"],
                model="tiny",
                dimension=DIM,
                key=["id"],
            )
        assert "key=" in (error.value.fix or "")


def test_model_activation_on_a_partitioned_table(
    filled: sa.Engine, tiny_embedder: Any, other_bundles: dict[str, Path]
) -> None:
    from semdb.bundles import Bundle
    from semdb.bundles.registry import register_bundle
    from semdb.embed import Embedder

    register_bundle(filled, Bundle.load(other_bundles["wide@1"]))
    wide = Embedder.load(other_bundles["wide@1"], provider="cpu")
    steps: list[str] = []
    done = activate(filled, "part_tickets.embedding", "wide", embedder=wide, on_step=steps.append)
    assert done.status == "switched"
    with filled.connect() as connection:
        models, dims = connection.execute(
            sa.text(
                "SELECT array_agg(DISTINCT embedding_model), "
                "array_agg(DISTINCT vector_dims(embedding)) FROM part_tickets"
            )
        ).one()
    assert models == ["wide@1"] and dims == [48]
    built = partition_indexes(filled, "ix_part_tickets_embedding_hnsw")
    assert len(built) == TENANTS + 1 and all(built.values())
    # the partitions' indexes carry the live name too (a later activation needs the names)
    assert sorted(built) == sorted(
        ["ix_part_tickets_embedding_hnsw"]
        + [f"part_tickets_{t}_ix_part_tickets_embedding_hnsw" for t in range(TENANTS)]
    )
    with Session(filled) as session:
        hits = semdb.search(
            session,
            WideTicket.embedding,
            "topic 3",
            embedder=wide,
            k=5,
            where=WideTicket.tenant == 1,
        )
        assert len(hits) == 5 and {hit.row.tenant for hit in hits} == {1}
