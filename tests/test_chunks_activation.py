"""``semdb model activate`` on a chunked column: shadow chunks filled while searches read the
old model's chunks, then one switch that leaves only the new model's chunks."""

from __future__ import annotations

import shutil
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
from semdb import Chunks, embedding_column
from semdb.bundles import Bundle
from semdb.bundles.registry import register_bundle
from semdb.sync import Worker, backfill
from semdb.sync.activation import (
    NotReady,
    cancel_activation,
    finish_activation,
    list_activations,
    start_activation,
)

TABLE = "chunk_act"
CHUNKS = "chunk_act_embedding_chunks"
SHADOW_CHUNKS = "chunk_act_embedding__next_chunks"
COLUMN = "chunk_act.embedding"
CHUNKING = Chunks(max_tokens=40, overlap=4)
TOPICS = [
    "The river floods the valley. Farmers move their cattle.",
    "Compilers translate code. The processor runs it.",
    "The orchestra tuned violins. The symphony began.",
    "Volcanoes throw ash high. The planet cools.",
    "Bakers knead the dough. Bread rises at night.",
    "Astronomers measured a galaxy. Stars vary.",
]


def body(i: int) -> str:
    """Three paragraphs (several chunks of 40 tokens), topic i % 6 in the middle one."""
    return "\n\n".join(" ".join([TOPICS[t % 6]] * 3) for t in (i + 1, i, i + 3))


class Base(DeclarativeBase):
    pass


class Doc(Base):
    """The application's declaration before the switch."""

    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    lang: Mapped[str]
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=32, sync="queued", chunking=CHUNKING
    )


class WideBase(DeclarativeBase):
    pass


class WideDoc(WideBase):
    """The declaration after switching to wide@1 (48 dimensions)."""

    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    lang: Mapped[str]
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="wide", dimension=48, sync="queued", chunking=CHUNKING
    )


rows = sa.table(TABLE, sa.column("id"), sa.column("lang"), sa.column("body"))


@pytest.fixture(scope="module")
def models(engine: sa.Engine, tiny_bundle: Path, other_bundles: dict[str, Path]) -> dict[str, Any]:
    from semdb.embed import Embedder

    embedders = {}
    for tag, folder in {"tiny@1": tiny_bundle, "wide@1": other_bundles["wide@1"]}.items():
        register_bundle(engine, Bundle.load(folder))
        embedders[tag] = Embedder.load(folder, provider="cpu")
    return embedders


@pytest.fixture()
def docs(engine: sa.Engine, models: dict[str, Any]) -> Iterator[sa.Engine]:
    """chunk_act: 24 long documents, chunked and embedded by tiny@1 through the queue."""
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            TABLE,
            "embedding",
            sources=["body"],
            model="tiny",
            dimension=32,
            chunking=CHUNKING.as_dict(),
        )
        connection.execute(
            sa.insert(rows),
            [{"id": i, "lang": "en" if i % 2 else "fr", "body": body(i)} for i in range(24)],
        )
    Worker(engine, models["tiny@1"]).run(until_empty=True)
    yield engine
    for activation in list_activations(engine, COLUMN):
        if activation.status == "filling":
            cancel_activation(engine, COLUMN)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        connection.execute(sa.text("DELETE FROM semdb.errors"))
        connection.execute(sa.text("DELETE FROM semdb.activations"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(TABLE, "embedding")
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {SHADOW_CHUNKS}"))
        connection.execute(sa.text(f"DROP TABLE {CHUNKS}"))
        connection.execute(sa.text(f"DROP TABLE {TABLE}"))


def chunks_of(engine: sa.Engine, table: str = CHUNKS) -> list[Any]:
    """Every chunk row: parent, number, offsets, model, vector."""
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    f"SELECT parent_id, chunk, char_start, char_end, model, embedding::text "
                    f"FROM {table} ORDER BY parent_id, chunk"
                )
            )
        )


def tables(engine: sa.Engine) -> set[str]:
    return {name for name in sa.inspect(engine).get_table_names() if name.startswith(TABLE)}


def catalog(engine: sa.Engine, table: str) -> tuple[set[str], set[str]]:
    """The names of a table's constraints and of its indexes."""
    with engine.connect() as connection:
        constraints = connection.execute(
            sa.text("SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass)"),
            {"t": table},
        ).scalars()
        indexes = connection.execute(
            sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :t"), {"t": table}
        ).scalars()
        return set(constraints), set(indexes)


def assert_chunks_made_by(engine: sa.Engine, embedder: Any, table: str = CHUNKS) -> int:
    """Every parent has chunks covering its text, all of them embedded by ``embedder``;
    returns how many chunks there are."""
    found = chunks_of(engine, table)
    tag = f"{embedder.model_name}@{embedder.model_version}"
    with engine.connect() as connection:
        texts = {r.id: r.body for r in connection.execute(sa.select(rows.c.id, rows.c.body))}
    assert {row.parent_id for row in found} == set(texts)  # no orphan, no parent without
    expected = embedder.embed(
        [texts[row.parent_id][row.char_start : row.char_end] for row in found]
    )
    for row, vector in zip(found, expected, strict=True):
        assert row.model == tag, row
        stored = np.array(eval(row.embedding), dtype=np.float32)
        assert stored.shape == (embedder.dimension,)
        assert np.allclose(stored, vector, atol=1e-5), (row.parent_id, row.chunk)
    for parent in texts:
        mine = [row for row in found if row.parent_id == parent]
        assert mine[0].char_start == 0 and mine[-1].char_end == len(texts[parent])
    return len(found)


def search(engine: sa.Engine, column: Any, text: str, embedder: Any, **kwargs: Any) -> list[Any]:
    with Session(engine) as session:
        return list(semdb.search(session, column, text, embedder=embedder, k=3, **kwargs))


def test_a_chunked_column_switches_models_with_its_chunks(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    tiny, wide = models["tiny@1"], models["wide@1"]
    before = assert_chunks_made_by(docs, tiny)
    assert before > 24 * 2  # several chunks a document
    constraints, indexes = catalog(docs, CHUNKS)
    assert any("hnsw" in name for name in indexes)
    with docs.begin() as connection:  # an application role that reads the chunks
        connection.execute(sa.text("DROP ROLE IF EXISTS chunk_act_reader"))
        connection.execute(sa.text("CREATE ROLE chunk_act_reader"))
        connection.execute(sa.text(f"GRANT SELECT ON {CHUNKS} TO chunk_act_reader"))

    activation = start_activation(docs, COLUMN, "wide@1")
    assert activation.shadow is not None and activation.dimension == 48
    assert tables(docs) == {TABLE, CHUNKS, SHADOW_CHUNKS}
    assert chunks_of(docs, SHADOW_CHUNKS) == []

    # backfill (the new model) fills the shadow column and the shadow chunks
    stats = backfill(docs, activation.shadow, wide, batch_size=8)
    assert stats.stale_at_start == 24 and stats.embedded == 24
    assert assert_chunks_made_by(docs, wide, SHADOW_CHUNKS) > 24 * 2

    # Meanwhile searches read the old model's chunks, filters and all.
    hits = search(docs, Doc.embedding, TOPICS[4], tiny, where=Doc.lang == "fr")
    assert [hit.row.id % 6 for hit in hits][0] == 4 and all(h.row.lang == "fr" for h in hits)
    assert hits[0].row.body[hits[0].chunk.start : hits[0].chunk.end].count(TOPICS[4]) >= 1
    assert assert_chunks_made_by(docs, tiny) == before

    # ... and the application writes: an edit and a delete reach both chunk tables.
    with docs.begin() as connection:
        connection.execute(sa.update(rows).where(rows.c.id == 3).values(body=body(5)))
        connection.execute(sa.delete(rows).where(rows.c.id == 23))
    with pytest.raises(NotReady):
        finish_activation(docs, activation)
    Worker(docs, tiny).run(until_empty=True)
    Worker(docs, wide).run(until_empty=True)
    assert assert_chunks_made_by(docs, tiny) == assert_chunks_made_by(docs, wide, SHADOW_CHUNKS)

    switched = finish_activation(docs, activation)
    assert switched.status == "switched"
    assert tables(docs) == {TABLE, CHUNKS}  # the old chunks are gone with their table
    after = assert_chunks_made_by(docs, wide)
    assert 0 < after < before  # one document fewer
    assert catalog(docs, CHUNKS) == (constraints, indexes)  # the same names as before
    with docs.begin() as connection:  # and the same grants
        readable = connection.execute(
            sa.text(f"SELECT has_table_privilege('chunk_act_reader', '{CHUNKS}', 'SELECT')")
        ).scalar()
        connection.execute(sa.text(f"REVOKE ALL ON {CHUNKS} FROM chunk_act_reader"))
        connection.execute(sa.text("DROP ROLE chunk_act_reader"))
    assert readable

    # Searches with the new declaration and model: parents ranked by their best chunk.
    hits = search(docs, WideDoc.embedding, TOPICS[4], wide, where=WideDoc.lang == "fr")
    assert hits and all(h.row.lang == "fr" for h in hits)
    query = wide.embed([TOPICS[4]], kind="query")[0]
    for hit in hits:
        best = min(
            1
            - float(np.dot(query, np.array(eval(row.embedding), dtype=np.float32)))
            / float(np.linalg.norm(query) * np.linalg.norm(np.array(eval(row.embedding))))
            for row in chunks_of(docs)
            if row.parent_id == hit.row.id
        )
        assert hit.distance == pytest.approx(best, abs=1e-4)
    with pytest.raises(semdb.errors.SemdbError):
        search(docs, Doc.embedding, TOPICS[4], tiny)  # the old declaration: refused

    # Writes after the switch are chunked and embedded by the new model.
    with docs.begin() as connection:
        connection.execute(sa.insert(rows), [{"id": 99, "lang": "en", "body": body(2)}])
    assert Worker(docs, wide).run(until_empty=True).embedded == 1
    assert assert_chunks_made_by(docs, wide) > after


def autogenerate(engine: sa.Engine, metadata: sa.MetaData) -> list[Any]:
    from alembic.autogenerate import produce_migrations

    def include_name(name: Any, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or str(name).startswith(TABLE)

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": include_name, "compare_type": True}
        )
        return list(produce_migrations(context, metadata).upgrade_ops.ops)


def test_alembic_sees_no_drift_and_cancel_drops_the_shadow_chunks(
    docs: sa.Engine, models: dict[str, Any]
) -> None:
    from semdb.sync.activation import build_shadow_indexes

    assert autogenerate(docs, Base.metadata) == []
    activation = start_activation(docs, COLUMN, "wide@1")
    Worker(docs, models["wide@1"]).run(until_empty=True)
    built = build_shadow_indexes(docs, activation)
    assert any(CHUNKS in name for name in built)  # the chunk table's index
    assert autogenerate(docs, Base.metadata) == []  # the shadow chunks are semdb's business
    cancel_activation(docs, COLUMN)
    assert tables(docs) == {TABLE, CHUNKS}
    assert autogenerate(docs, Base.metadata) == []


def test_the_command_line_switches_a_chunked_column(
    docs: sa.Engine, models: dict[str, Any], other_bundles: dict[str, Path], tmp_path: Path
) -> None:
    from .conftest import run_semdb

    home = tmp_path / "home"
    shutil.copytree(other_bundles["wide@1"], home / "models" / "wide" / "1")
    before = len(chunks_of(docs))
    done = run_semdb(
        "model", "activate", "wide@1", "--column", COLUMN, "--embed", env={"SEMDB_HOME": str(home)}
    )
    assert done.returncode == 0, done.stderr
    assert "public.chunk_act.embedding now holds vectors of wide@1" in done.stdout
    assert tables(docs) == {TABLE, CHUNKS}
    assert assert_chunks_made_by(docs, models["wide@1"]) == before  # same tokenizer, same cuts
    assert autogenerate(docs, WideBase.metadata) == []
