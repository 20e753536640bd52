"""Chunked embedding columns: splitting, the chunk table, sync (inline, queued, backfill),
and searches that return parent rows ranked by their best chunk."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
from semdb.errors import ChunkLimitError, DeclarationError, SemdbError
from semdb.sync import SyncTarget, Worker, backfill
from semdb.sync.chunking import Splitter

from .embedders import Recording

DIM = 32
WINDOW = 40
TOPICS = [
    "The river floods the valley. Farmers move their cattle.",
    "Compilers translate code. The processor runs it.",
    "The orchestra tuned violins. The symphony began.",
    "Volcanoes throw ash high. The planet cools.",
    "Bakers knead the dough. Bread rises at night.",
    "Astronomers measured a galaxy. Stars vary.",
]


def long_text(*topics: int, repeat: int = 3) -> str:
    """Paragraphs, one per topic, each a few sentences (several chunks of WINDOW tokens)."""
    return "\n\n".join(" ".join([TOPICS[t]] * repeat) for t in topics)


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "chunked_articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    lang: Mapped[str] = mapped_column(default="en")
    body: Mapped[str | None]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body",
        model="tiny",
        dimension=DIM,
        sync="inline",
        chunking=Chunks(max_tokens=WINDOW, overlap=4),
    )


class Queued(Base):
    __tablename__ = "chunked_queued"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str | None]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body",
        model="tiny",
        dimension=DIM,
        sync="queued",
        chunking=Chunks(max_tokens=WINDOW, overlap=4, max_chunks=10),
    )


ARTICLE_CHUNKS = Base.metadata.tables["chunked_articles_embedding_chunks"]
QUEUED_CHUNKS = Base.metadata.tables["chunked_queued_embedding_chunks"]


@pytest.fixture(scope="module")
def splitter(tiny_embedder: Any) -> Splitter:
    return Splitter.for_embedder(tiny_embedder, Chunks(max_tokens=WINDOW, overlap=4))


# -- declaration and splitting -------------------------------------------------------------------


def test_invalid_chunking_names_the_value() -> None:
    with pytest.raises(DeclarationError, match=r"overlap \(32\).*max_tokens \(32\)"):
        Chunks(max_tokens=32, overlap=32)
    with pytest.raises(DeclarationError, match="max_chunks.*0"):
        Chunks(max_chunks=0)
    with pytest.raises(DeclarationError, match="-1"):
        Chunks(overlap=-1)


def test_window_above_the_models_maximum_is_refused(tiny_embedder: Any) -> None:
    with pytest.raises(DeclarationError, match=r"max_tokens \(500\).*64 tokens"):
        Splitter.for_embedder(tiny_embedder, Chunks(max_tokens=500, overlap=4))


def test_chunk_table_is_declared_with_a_cascading_key() -> None:
    fk = next(iter(ARTICLE_CHUNKS.foreign_key_constraints))
    assert fk.ondelete == "CASCADE"
    assert [c.name for c in ARTICLE_CHUNKS.primary_key.columns] == ["parent_id", "chunk"]
    assert {"char_start", "char_end", "embedding", "model", "content_hash"} <= set(
        ARTICLE_CHUNKS.c.keys()
    )


def test_a_text_that_fits_is_one_chunk(splitter: Splitter) -> None:
    chunks = splitter.split("A short text.")
    assert [(c.number, c.start, c.end) for c in chunks] == [(0, 0, 13)]
    assert splitter.split("") == [] and splitter.split(" \n\t ") == []


def test_long_text_windows_fit_and_cut_at_sentences(splitter: Splitter, tiny_embedder: Any) -> None:
    text = long_text(0, 1, 2, 3)
    chunks = splitter.split(text)
    assert len(chunks) > 3
    tokenizer = tiny_embedder.tokenizer.tokenizer
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert len(tokenizer.encode(chunk.text, add_special_tokens=False).ids) <= WINDOW
    for chunk in chunks[:-1]:  # cut right after a sentence or paragraph
        assert text[chunk.end - 1].isspace() and text[: chunk.end].rstrip()[-1] in ".!?"
    # the chunks cover the text, in order, overlapping a little
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.start < after.start <= before.end


def test_nul_characters_and_the_chunk_cap(splitter: Splitter) -> None:
    text = "first\x00 part. " * 40
    chunks = splitter.split(text)
    assert chunks and chunks[-1].end == len(text)
    capped = Splitter(splitter.tokenizer, window=WINDOW, overlap=4, max_chunks=3, label="t.c")
    with pytest.raises(ChunkLimitError, match="max_chunks=3") as raised:
        capped.split(long_text(0, 1, 2, 3, 4, 5))
    assert isinstance(raised.value, SemdbError)
    assert (
        raised.value.fix is not None
        and "t.c with Chunks(max_chunks=...) above 3" in raised.value.fix
    )


# -- inline sync -----------------------------------------------------------------------------------


@pytest.fixture()
def tables(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        connection.execute(sa.text("DELETE FROM semdb.errors"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            Queued.__tablename__, "embedding"
        )
    Base.metadata.drop_all(engine)


def chunk_rows(engine: sa.Engine, table: sa.Table, parent: int) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(
                    table.c.chunk,
                    table.c.char_start,
                    table.c.char_end,
                    table.c.embedding,
                    table.c.content_hash,
                )
                .where(table.c.parent_id == parent)
                .order_by(table.c.chunk)
            )
        )


def test_inline_chunks_new_changed_shortened_and_deleted_rows(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    recording = Recording(tiny_embedder)
    factory = sa.orm.sessionmaker(tables)
    semdb.embed_on_flush(factory, recording)
    text = long_text(0, 1, 2)
    with factory.begin() as session:
        session.add_all([Article(id=1, body=text), Article(id=2, body="Short one.")])
    first = chunk_rows(tables, ARTICLE_CHUNKS, 1)
    assert len(first) > 2 and [r.chunk for r in first] == list(range(len(first)))
    assert [r.char_start for r in first][0] == 0 and first[-1].char_end == len(text)
    assert len(chunk_rows(tables, ARTICLE_CHUNKS, 2)) == 1
    with tables.connect() as connection:  # the parent holds its first chunk's vector
        parent = connection.execute(sa.select(Article.embedding).where(Article.id == 1)).scalar()
    assert np.allclose(parent, first[0].embedding, atol=1e-6)
    assert np.allclose(
        first[1].embedding, tiny_embedder.embed([text[first[1].char_start : first[1].char_end]])[0]
    )

    # an edit at the end: only the chunks whose text changed are embedded again
    recording.texts.clear()
    edited = text + " Then the pumps failed."
    with factory.begin() as session:
        session.get(Article, 1).body = edited
    after = chunk_rows(tables, ARTICLE_CHUNKS, 1)
    assert after[-1].char_end == len(edited)
    unchanged = [b for b in after if any(a.content_hash == b.content_hash for a in first)]
    assert len(recording.texts) == len(after) - len(unchanged) <= 2
    changed = [r for r in after if r not in unchanged]
    assert sorted(recording.texts) == sorted(edited[r.char_start : r.char_end] for r in changed)
    assert changed[-1] == after[-1]

    # shortened: no orphan chunk; emptied: no chunk at all; deleted: nothing left
    with factory.begin() as session:
        session.get(Article, 1).body = "Now it is short."
    assert len(chunk_rows(tables, ARTICLE_CHUNKS, 1)) == 1
    with factory.begin() as session:
        session.get(Article, 1).body = "   "
    assert chunk_rows(tables, ARTICLE_CHUNKS, 1) == []
    with factory.begin() as session:
        session.delete(session.get(Article, 2))
    assert chunk_rows(tables, ARTICLE_CHUNKS, 2) == []


def test_an_inline_flush_of_a_text_over_the_cap_raises_chunk_limit_error(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    """A 5 MB text on an inline column: the flush fails with semdb.errors.ChunkLimitError,
    naming the column, the size and the fix (refused before it is tokenised)."""
    factory = sa.orm.sessionmaker(tables)
    semdb.embed_on_flush(factory, tiny_embedder)
    with factory() as session:
        session.add(Article(id=1, body="word " * 1_000_000))
        with pytest.raises(ChunkLimitError) as raised:
            session.flush()
    message = str(raised.value)
    assert "chunked_articles.embedding" in message and "5000000 characters" in message
    assert "max_chunks=512" in message and "Fix: declare" in message


# -- queued sync and backfill ----------------------------------------------------------------------


def register(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        target = SyncTarget.from_column(Queued.embedding)
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            Queued.__tablename__,
            "embedding",
            sources=["body"],
            model="tiny",
            dimension=DIM,
            chunking=target.chunking,
        )


def test_worker_embeds_the_changed_chunk_only_and_records_a_text_over_the_cap(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    register(tables)
    text = long_text(0, 1, 2)
    with tables.begin() as connection:
        connection.execute(
            sa.insert(Queued),
            [
                {"id": 1, "body": text},
                {"id": 2, "body": long_text(0, 1, 2, 3, 4, 5, repeat=6)},  # over max_chunks
                {"id": 3, "body": ""},
            ],
        )
    recording = Recording(tiny_embedder)
    stats = Worker(tables, recording, batch_size=10).run(until_empty=True)
    assert stats.embedded == 2 and stats.given_up == 1
    first = chunk_rows(tables, QUEUED_CHUNKS, 1)
    assert len(first) > 2
    assert chunk_rows(tables, QUEUED_CHUNKS, 2) == [] and chunk_rows(tables, QUEUED_CHUNKS, 3) == []
    with tables.connect() as connection:
        error = connection.execute(sa.text("SELECT key, error, gave_up FROM semdb.errors")).one()
        assert error.key == {"id": 2} and "max_chunks=10" in error.error and error.gave_up
        assert error.error.startswith("ChunkLimitError: ") and "Fix: declare " in error.error
        assert connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar() == 0

    recording.texts.clear()
    with tables.begin() as connection:
        connection.execute(
            sa.update(Queued).where(Queued.id == 1).values(body=text[:-6] + "ended.")
        )
    again = Worker(tables, recording, batch_size=10).run(until_empty=True)
    assert again.embedded == 1, again
    after = chunk_rows(tables, QUEUED_CHUNKS, 1)
    kept = [a for a in after if any(a.content_hash == b.content_hash for b in first)]
    assert len(after) == len(first) and len(kept) == len(first) - 1
    assert recording.texts == [text[after[-1].char_start : -6] + "ended."]
    for a in kept:  # an unchanged chunk keeps its very vector
        b = next(b for b in first if b.content_hash == a.content_hash)
        assert np.array_equal(a.embedding, b.embedding)


@contextmanager
def refusing_parent_13(engine: sa.Engine, table: str) -> Iterator[None]:
    """A trigger of the user's on ``table`` (the parent or its chunk table) that refuses
    any write for parent 13."""
    key = "id" if table == Queued.__tablename__ else "parent_id"
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE FUNCTION refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                f" IF NEW.{key} = 13 THEN RAISE EXCEPTION 'parent 13 refused'; END IF;"
                " RETURN NEW; END $$"
            )
        )
        connection.execute(
            sa.text(
                f"CREATE TRIGGER refuse_13 BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_13()"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TRIGGER refuse_13 ON {table}"))
            connection.execute(sa.text("DROP FUNCTION refuse_13()"))


@pytest.mark.parametrize("table", [Queued.__tablename__, QUEUED_CHUNKS.name])
def test_a_chunked_row_whose_write_fails_does_not_stop_the_queue(
    tables: sa.Engine, tiny_embedder: Any, table: str
) -> None:
    """Writing one parent (or one of its chunks) fails: that row alone is recorded in
    semdb.errors, retried with backoff and given up; the rest of the queue drains, in the
    same batches (the writes are isolated row by row, as an unchunked column's are)."""
    register(tables)
    with tables.begin() as connection:
        connection.execute(
            sa.insert(Queued), [{"id": i, "body": long_text(i % 6, (i + 2) % 6)} for i in range(20)]
        )
    with refusing_parent_13(tables, table):
        worker = Worker(tables, tiny_embedder, batch_size=8, backoff_seconds=0.0, max_attempts=2)
        stats = worker.run(until_empty=True)
        assert stats.embedded == 19 and stats.given_up == 1 and stats.failed == 2
        assert chunk_rows(tables, QUEUED_CHUNKS, 13) == []
        assert all(len(chunk_rows(tables, QUEUED_CHUNKS, i)) > 1 for i in range(20) if i != 13)
        with tables.connect() as connection:
            errors = connection.execute(
                sa.text("SELECT key, attempt, gave_up, error FROM semdb.errors ORDER BY id")
            ).all()
            assert [(e.key, e.attempt, e.gave_up) for e in errors] == [
                ({"id": 13}, 1, False),
                ({"id": 13}, 2, True),
            ]
            assert "parent 13 refused" in errors[0].error
            assert connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar() == 0
            connection.execute(sa.text("DELETE FROM semdb.errors"))
            connection.commit()
        # backfill goes through the same isolation: every row but 13 is written
        with tables.begin() as connection:
            connection.execute(sa.text("DELETE FROM semdb.queue"))
            connection.execute(
                sa.insert(Queued), [{"id": 100 + i, "body": long_text(i % 6)} for i in range(5)]
            )
            connection.execute(sa.text("DELETE FROM semdb.queue"))
        filled = backfill(tables, Queued.embedding, tiny_embedder, batch_size=4)
        assert filled.embedded == 5 and filled.failed == 1, filled
        assert all(chunk_rows(tables, QUEUED_CHUNKS, 100 + i) for i in range(5))
        with tables.connect() as connection:
            (error,) = connection.execute(sa.text("SELECT key, gave_up FROM semdb.errors")).all()
            assert error.key == {"id": 13} and error.gave_up


def test_backfill_chunks_rows_that_have_none(tables: sa.Engine, tiny_embedder: Any) -> None:
    register(tables)
    with tables.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))  # as if queued sync was off
        connection.execute(
            sa.insert(Queued), [{"id": i, "body": long_text(i % 6, (i + 1) % 6)} for i in range(5)]
        )
    stats = backfill(tables, Queued.embedding, tiny_embedder, batch_size=2)
    assert stats.stale_at_start == 5 and stats.embedded == 5
    assert all(len(chunk_rows(tables, QUEUED_CHUNKS, i)) > 1 for i in range(5))
    assert backfill(tables, Queued.embedding, tiny_embedder).stale_at_start == 0


# -- search ----------------------------------------------------------------------------------------


@pytest.fixture()
def articles(tables: sa.Engine, tiny_embedder: Any) -> sa.Engine:
    factory = sa.orm.sessionmaker(tables)
    semdb.embed_on_flush(factory, tiny_embedder)
    with factory.begin() as session:
        for i in range(30):
            # each article: filler topics, and topic i % 6 in the middle
            topics = ((i + 2) % 6, i % 6, (i + 3) % 6) if i % 2 else ((i + 1) % 6, i % 6)
            session.add(Article(id=i, lang="en" if i % 3 else "fr", body=long_text(*topics)))
    return tables


def brute_force(engine: sa.Engine, query: np.ndarray, lang: str | None) -> list[tuple[int, float]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(ARTICLE_CHUNKS.c.parent_id, ARTICLE_CHUNKS.c.embedding, Article.lang).join(
                Article, Article.id == ARTICLE_CHUNKS.c.parent_id
            )
        ).all()
    best: dict[int, float] = {}
    q = query / np.linalg.norm(query)
    for parent, vector, row_lang in rows:
        if lang is not None and row_lang != lang:
            continue
        d = 1 - float(np.dot(q, vector / np.linalg.norm(vector)))
        best[parent] = min(best.get(parent, 2.0), d)
    return sorted(best.items(), key=lambda item: item[1])


@pytest.mark.parametrize("plan", ["index", "exact", "auto"])
def test_search_returns_k_distinct_parents_by_best_chunk(
    articles: sa.Engine, tiny_embedder: Any, plan: str
) -> None:
    query = tiny_embedder.embed_query(TOPICS[3])
    expected = brute_force(articles, query, "en")
    with Session(articles) as session:
        hits = semdb.search(
            session, Article.embedding, query, k=8, where=Article.lang == "en", plan=plan
        )
        ids = [hit.row.id for hit in hits]
        assert len(ids) == 8 == len(set(ids))
        assert all(hit.row.lang == "en" for hit in hits)
        best = dict(expected)  # each parent at its best chunk's distance (texts repeat: ties)
        assert all(abs(best[hit.row.id] - hit.distance) < 1e-4 for hit in hits)
        assert [round(h.distance, 4) for h in hits] == [round(d, 4) for _, d in expected[:8]]
        for hit in hits:  # the chunk that matched, and its passage
            passage = hit.row.body[hit.chunk.start : hit.chunk.end]
            assert passage and hit.chunk.number >= 0
            row, distance = hit
            assert row is hit.row and distance == hit.distance


def test_search_with_a_join_and_prepared(articles: sa.Engine, tiny_embedder: Any) -> None:
    query = tiny_embedder.embed_query(TOPICS[1])
    with articles.connect() as connection:
        hits = semdb.search(
            connection,
            Article.embedding,
            query,
            k=3,
            statement=sa.select(Article.id, Article.lang),
            where=Article.id < 10,
        )
        assert len({hit.row.id for hit in hits}) == 3 and all(hit.row.id < 10 for hit in hits)
        assert hits[0].row._mapping["semdb_chunk"] == hits[0].chunk.number
    nearest = semdb.PreparedSearch(Article.embedding, k=5, where=Article.lang == sa.bindparam("l"))
    with Session(articles) as session:
        for lang in ("en", "fr"):
            hits = nearest(session, TOPICS[2], embedder=tiny_embedder, l=lang)
            expected = brute_force(articles, tiny_embedder.embed_query(TOPICS[2]), lang)
            assert [round(h.distance, 4) for h in hits] == [round(d, 4) for _, d in expected[:5]]


def test_index_path_runs_on_the_chunk_tables_hnsw_index(
    articles: sa.Engine, tiny_embedder: Any
) -> None:
    query = tiny_embedder.embed_query(TOPICS[4])
    with Session(articles) as session:
        plan, tree = semdb.explain_search(
            session, Article.embedding, query, k=5, where=Article.lang == "en", plan="index"
        )
    assert plan.path == "index"
    assert "ix_chunked_articles_embedding_chunks_embedding_hnsw" in str(tree)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def test_exact_path_sorts_the_top_chunks_only_and_runs_without_parallel_workers(
    articles: sa.Engine, tiny_embedder: Any
) -> None:
    """The exact path computes every passing chunk's distance but keeps a top-N of them (no
    sort of all chunks by parent), and starts no parallel workers, even where the planner
    is told they are free (their start cost more than the search; bench/chunks_latency.py)."""
    query = tiny_embedder.embed_query(TOPICS[5])
    with Session(articles) as session:
        for name in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
            session.execute(sa.text(f"SET LOCAL {name} = 0"))
        session.execute(sa.text("SET LOCAL max_parallel_workers_per_gather = 2"))
        plan, tree = semdb.explain_search(
            session,
            Article.embedding,
            query,
            k=4,
            where=Article.lang == "en",
            plan="exact",
            analyze=True,
        )
        assert plan.path == "exact"
        nodes = list(plan_nodes(tree))
        assert not [n for n in nodes if n["Node Type"].startswith("Gather")], tree
        with articles.connect() as connection:
            chunks = connection.execute(sa.select(sa.func.count()).select_from(ARTICLE_CHUNKS))
            total = chunks.scalar()
        assert total is not None and total > 40
        top = [
            n
            for n in nodes
            if n["Node Type"] == "Sort" and n.get("Sort Method") == "top-N heapsort"
        ]
        assert top and max(n["Actual Rows"] for n in top) <= 40  # the candidates, not all chunks
        hits = semdb.search(
            session, Article.embedding, query, k=4, where=Article.lang == "en", plan="exact"
        )
        expected = brute_force(articles, query, "en")[:4]
        assert [round(h.distance, 4) for h in hits] == [round(d, 4) for _, d in expected]


# -- migrations ------------------------------------------------------------------------------------

CHUNKED_MODELS = """
import numpy as np
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from semdb import Chunks, embedding_column


class Base(DeclarativeBase):
    pass


class Page(Base):
    __tablename__ = "pages"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str | None]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "body", model="tiny", dimension=8, sync="queued",
        chunking=Chunks(max_tokens=48, overlap=8))
"""


def test_autogenerate_creates_the_chunk_table_and_registers_the_chunking(
    tmp_path: Any, empty_database_url: Any
) -> None:
    from alembic import command
    from alembic.config import Config

    from semdb.db import libpq_uri
    from semdb.db.migrate import upgrade

    from .test_alembic_vectors import ENV_PY, ROOT

    engine = semdb.create_engine(empty_database_url)
    try:
        upgrade(engine)
        folder = tmp_path / "migrations"
        (folder / "versions").mkdir(parents=True)
        (folder / "env.py").write_text(ENV_PY)
        (folder / "script.py.mako").write_text((ROOT / "migrations" / "script.py.mako").read_text())
        (folder / "models.py").write_text(CHUNKED_MODELS)
        config = Config()
        config.set_main_option("script_location", str(folder))
        config.set_main_option("sqlalchemy.url", libpq_uri(empty_database_url).replace("%", "%%"))
        command.revision(config, message="pages", autogenerate=True, rev_id="c1")
        script = (folder / "versions" / "c1_pages.py").read_text()
        assert "op.create_table('pages_embedding_chunks'" in script
        assert "ondelete='CASCADE'" in script
        assert "op.create_vector_index('ix_pages_embedding_chunks_embedding_hnsw'" in script
        assert "chunking={'max_tokens': 48, 'overlap': 8, 'max_chunks': 512}" in script
        command.upgrade(config, "head")
        command.check(config)  # no drift
        with engine.connect() as connection:
            chunking = connection.execute(
                sa.text("SELECT chunking FROM semdb.vector_columns WHERE table_name = 'pages'")
            ).scalar()
        assert chunking == {"max_tokens": 48, "overlap": 8, "max_chunks": 512}
        command.downgrade(config, "base")
        command.upgrade(config, "head")
        command.check(config)
    finally:
        engine.dispose()


def test_more_like_this_ranks_other_parents_by_their_best_chunk(articles: sa.Engine) -> None:
    with Session(articles) as session:
        source = session.get(Article, 4)
        hits = semdb.more_like_this(session, Article.embedding, source, k=5)
        ids = [hit.row.id for hit in hits]
        assert len(ids) == 5 == len(set(ids)) and 4 not in ids
        assert all(hit.chunk.end > hit.chunk.start for hit in hits)
        filtered = semdb.more_like_this(
            session, Article.embedding, source, k=3, where=Article.lang == "fr"
        )
        assert len(filtered) == 3 and all(hit.row.lang == "fr" for hit in filtered)


def test_k_parents_come_back_when_few_parents_hold_the_nearest_chunks(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    factory = sa.orm.sessionmaker(tables)
    semdb.embed_on_flush(factory, tiny_embedder)
    with factory.begin() as session:
        for i in range(3):  # three parents with dozens of chunks, all about the query
            session.add(Article(id=100 + i, body=long_text(*([3] * 15), repeat=4)))
        for i in range(12):
            session.add(Article(id=i, body=long_text(i % 6 if i % 6 != 3 else 0)))
    with tables.connect() as connection:
        per_parent = connection.execute(
            sa.select(sa.func.count()).where(ARTICLE_CHUNKS.c.parent_id == 100)
        ).scalar()
    assert per_parent is not None and per_parent >= 40  # the index's first candidates: 3 parents
    query = tiny_embedder.embed_query(TOPICS[3])
    with Session(tables) as session:
        for plan in ("index", "auto", "exact"):
            hits = semdb.search(session, Article.embedding, query, k=10, plan=plan)
            ids = [hit.row.id for hit in hits]
            assert len(ids) == 10 == len(set(ids)), (plan, ids, hits.plan)
            assert set(ids[:3]) == {100, 101, 102}
            expected = brute_force(tables, query, None)[:10]
            assert [round(h.distance, 4) for h in hits] == [round(d, 4) for _, d in expected]
            if plan == "index":  # eight times the candidates sufficed: no exact fallback
                assert hits.plan.path == "index" and not hits.plan.fell_back_to_exact


def test_hybrid_search_over_a_chunked_column_ranks_parents_by_their_best_chunk(
    tables: sa.Engine, tiny_embedder: Any
) -> None:
    """hybrid_search over a chunked column: the semantic leg is the chunked search's parent
    ranking (each parent once, by its best chunk), the keyword leg scores the parent's whole
    text (a word at the end of a long document finds it)."""
    register(tables)
    with tables.begin() as connection:
        semdb.install_keyword_stats(connection, Queued.embedding)
        connection.execute(
            sa.insert(Queued),
            [{"id": i, "body": long_text(i % 6, (i + 1) % 6, (i + 3) % 6)} for i in range(24)]
            + [{"id": 99, "body": long_text(0, 1, 2) + " Zanzibar cloves."}],
        )
    try:
        Worker(tables, tiny_embedder, batch_size=32).run(until_empty=True)
        assert len(chunk_rows(tables, QUEUED_CHUNKS, 99)) > 2  # the word is in a late chunk
        query = tiny_embedder.embed_query(TOPICS[4])
        with Session(tables) as session:
            chunked = semdb.search(session, Queued.embedding, query, k=30, plan="exact")
            best = {hit.row.id: hit.distance for hit in chunked}
            by_rank = [hit.distance for hit in chunked]
            # candidates=30: every parent's chunks are candidates, so parents whose texts (and
            # so distances) repeat cannot tie at the candidate cutoff, where the HNSW scan's
            # order, not the data, would decide which of them the SQL and Python legs keep
            hits = semdb.hybrid_search(
                session, Queued.embedding, "zanzibar", vector=query, k=8, candidates=30
            )
            ids = [hit.row.id for hit in hits]
            assert len(ids) == 8 == len(set(ids))
            for hit in hits:  # the semantic rank is the parent's place in the chunked search
                if hit.semantic_rank is not None:  # (texts repeat: equal distances tie)
                    assert abs(best[hit.row.id] - by_rank[hit.semantic_rank - 1]) < 1e-6
            assert sum(h.semantic_rank is not None for h in hits) >= 7
            (zanzibar,) = [h for h in hits if h.row.id == 99]
            assert zanzibar.keyword_rank == 1
            # semdb.hybrid_search in SQL: the same rows, scores and ranks
            in_sql = session.execute(
                sa.text(
                    "SELECT (h.item).id, h.score, h.semantic_rank, h.keyword_rank "
                    "FROM semdb.hybrid_search(NULL::chunked_queued, 'embedding', "
                    "CAST(:q AS vector), 'zanzibar', 8, 30) AS h"
                ),
                {"q": str(query.tolist())},
            ).all()
            assert [(r[0], round(r[1], 6), r[2], r[3]) for r in in_sql] == [
                (h.row.id, round(h.score, 6), h.semantic_rank, h.keyword_rank) for h in hits
            ]
    finally:
        with tables.begin() as connection:
            semdb.uninstall_keyword_stats(connection, Queued.embedding)
