"""BM25 keyword search and tuned hybrid fusion on a real server: scores against a BM25
computed here from PostgreSQL's own lexemes, statistics kept exact through every kind of
write, hostile query texts, filters and k rows, the SQL functions against Python, tuning."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import semdb
from semdb.db.migrate import head_revision
from semdb.errors import SearchError
from semdb.orm import HNSW, embedding_column
from semdb.retrieval.tuning import GRID, fuse, leg_rankings, tune_hybrid
from semdb.sync.registry import register, unregister_statement
from semdb.sync.target import SyncTarget

DIM = 16
WORDS = (
    "red green blue violet amber circle square triangle star hexagon fast slow quiet loud "
    "engine library parser network image printer"
).split()


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "keyword_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None]
    body: Mapped[str]
    grp: Mapped[int]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "title",
        "body",
        model="tiny",
        dimension=DIM,
        index=HNSW(),
        sync="manual",
        fulltext="english",
    )


def _texts(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(3, 12)))
        rows.append(
            {
                "id": i,
                "title": None if i % 7 == 0 else f"note {WORDS[i % len(WORDS)]}",
                "body": " ".join(words) + (" the of and" if i % 3 == 0 else ""),
                "grp": i % 4,
                "embedding": rng.normal(size=DIM).astype(np.float32),
            }
        )
    return rows


@pytest.fixture(scope="module")
def notes(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(sa.insert(Note), _texts(300, 1))
        register(connection, SyncTarget.from_column(Note.embedding))
        semdb.install_keyword_stats(connection, Note.embedding)
        connection.execute(sa.text("ANALYZE keyword_notes"))
    yield engine
    with engine.begin() as connection:
        semdb.uninstall_keyword_stats(connection, Note.embedding)
        connection.execute(unregister_statement(SyncTarget.from_column(Note.embedding)))
    Base.metadata.drop_all(engine)


def lexemes(connection: sa.Connection) -> dict[int, Counter[str]]:
    """Each row's terms with their counts, as PostgreSQL's english configuration makes them."""
    rows = connection.execute(
        sa.text(
            "SELECT id, u.lexeme, array_length(u.positions, 1) FROM keyword_notes, "
            "unnest(to_tsvector('english', coalesce(title, '') || ' ' || coalesce(body, ''))) u"
        )
    ).all()
    out: dict[int, Counter[str]] = {
        i: Counter() for i in connection.execute(sa.text("SELECT id FROM keyword_notes")).scalars()
    }
    for id_, lexeme, count in rows:
        out[id_][lexeme] = count
    return out


def reference_bm25(
    docs: dict[int, Counter[str]], terms: list[str], k1: float = 0.9, b: float = 0.4
) -> dict[int, float]:
    n = len(docs)
    average = sum(len(d) for d in docs.values()) / n
    df = Counter(t for d in docs.values() for t in d)
    scores = {}
    for id_, doc in docs.items():
        score = 0.0
        for t in set(terms):
            tf = doc.get(t, 0)
            if tf:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / average))
        if score > 0:
            scores[id_] = score
    return scores


def stats(connection: sa.Connection) -> tuple[Any, dict[str, int]]:
    totals = connection.execute(
        sa.text(
            "SELECT s.documents, s.total_length FROM semdb.bm25_stats s "
            "JOIN semdb.vector_columns v ON v.id = s.column_id "
            "WHERE v.table_name = 'keyword_notes'"
        )
    ).one()
    terms = connection.execute(
        sa.text(
            "SELECT t.term, t.documents FROM semdb.bm25_terms t "
            "JOIN semdb.vector_columns v ON v.id = t.column_id "
            "WHERE v.table_name = 'keyword_notes' AND t.documents <> 0"
        )
    ).all()
    return tuple(totals), dict(terms)


def test_keyword_search_ranks_by_bm25_as_computed_from_postgres_lexemes(notes: sa.Engine) -> None:
    with Session(notes) as session:
        docs = lexemes(session.connection())
        for text, terms in [
            ("violet hexagons", ["violet", "hexagon"]),
            ("quiet printer network", ["quiet", "printer", "network"]),
            ("the loud engines", ["loud", "engin"]),
        ]:
            expected = reference_bm25(docs, terms)
            hits = semdb.keyword_search(session, Note.embedding, text, k=20)
            want = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:20]
            assert [h.row.id for h in hits] == [i for i, _ in want]
            assert [h.score for h in hits] == pytest.approx([s for _, s in want], rel=1e-9)
            # any-term semantics: every row holding one of the terms, and no other
            every = semdb.keyword_search(session, Note.embedding, text, k=1000)
            assert {h.row.id for h in every} == set(expected)
            assert any(not all(t in docs[h.row.id] for t in terms) for h in every)
        tuned = semdb.keyword_search(session, Note.embedding, "violet star", k=5, k1=1.5, b=0.9)
        want = reference_bm25(docs, ["violet", "star"], 1.5, 0.9)
        assert [h.score for h in tuned] == pytest.approx(sorted(want.values(), reverse=True)[:5])


def postings(connection: sa.Connection, table: str = "keyword_notes") -> list[tuple[Any, ...]]:
    """The column's postings (term, key, tf, length), sorted."""
    from psycopg import sql

    name = connection.execute(
        sa.text(
            "SELECT s.postings FROM semdb.bm25_stats s "
            "JOIN semdb.vector_columns v ON v.id = s.column_id WHERE v.table_name = :t"
        ),
        {"t": table},
    ).scalar_one()
    query = sql.SQL("SELECT term, key_1, tf, length FROM {} ORDER BY 1, 2").format(
        sql.Identifier("semdb", name)
    )
    return [tuple(row) for row in connection.exec_driver_sql(query.as_string(None)).all()]


def test_postings_hold_each_rows_term_counts(notes: sa.Engine) -> None:
    with notes.connect() as connection:
        docs = lexemes(connection)
        expected = sorted(
            (term, id_, tf, len(doc)) for id_, doc in docs.items() for term, tf in doc.items()
        )
        assert postings(connection) == expected


def test_the_ranking_reads_the_postings_index_not_the_text(notes: sa.Engine) -> None:
    """EXPLAIN of the statements keyword_search and hybrid_search send (caught on their way
    to the driver): the postings are read through their primary key (term first), and no
    plan node computes a tsvector from the table's text."""
    import json

    sent: list[tuple[str, Any]] = []

    def catch(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "bm25p_" in statement and not statement.startswith("EXPLAIN"):
            sent.append((statement, parameters))

    with notes.connect() as connection:
        sa.event.listen(connection, "before_cursor_execute", catch)
        try:
            with connection.begin():
                connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
                semdb.keyword_search(connection, Note.embedding, "quiet violet engine", k=5)
                semdb.hybrid_search(
                    connection,
                    Note.embedding,
                    "quiet violet engine",
                    vector=np.ones(DIM, np.float32),
                    k=5,
                )
                semdb.keyword_search(
                    connection, Note.embedding, "quiet violet", k=5, where=Note.grp == 1
                )
                assert len(sent) == 3
                for statement, parameters in sent:
                    explained = connection.exec_driver_sql(
                        "EXPLAIN (FORMAT JSON) " + statement, parameters
                    ).scalar_one()
                    text = json.dumps(explained)
                    nodes = list(_nodes(explained[0]["Plan"]))
                    scans = [
                        node["Node Type"]
                        for node in nodes
                        if str(node.get("Relation Name", "")).startswith("bm25p_")
                    ]
                    indexes = {node.get("Index Name") for node in nodes}
                    assert scans and "Seq Scan" not in scans, text
                    assert "bm25p_keyword_notes_embedding_4d45df18_pkey" in indexes, text
                    assert "to_tsvector" not in text
        finally:
            sa.event.remove(connection, "before_cursor_execute", catch)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def test_one_statement_text_serves_every_query_of_a_shape(notes: sa.Engine) -> None:
    """The statements hybrid_search and keyword_search send are the same text for other
    queries, vectors, weights, rrf_k, k1 and b (all bound as parameters, the vector too),
    so they are built once per shape and SQLAlchemy compiles them once."""
    sent: list[tuple[str, Any]] = []

    def catch(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "bm25p_" in statement:
            sent.append((statement, parameters))

    rng = np.random.default_rng(11)
    calls = [
        ("quiet violet engine", (1.0, 1.0), 60, 0.9, 0.4),
        ("amber square printer", (0.3, 0.7), 20, 1.2, 0.75),
    ]
    with notes.connect() as connection:
        sa.event.listen(connection, "before_cursor_execute", catch)
        try:
            for method in ("rrf", "convex"):
                for text, weights, rrf_k, k1, b in calls:
                    vector = rng.normal(size=DIM).astype(np.float32)
                    hits = semdb.hybrid_search(
                        connection,
                        Note.embedding,
                        text,
                        vector=vector,
                        k=5,
                        fusion=method,
                        weights=weights,
                        rrf_k=rrf_k,
                        k1=k1,
                        b=b,
                    )
                    assert len(hits) == 5
            for text, _, _, k1, b in calls:
                semdb.keyword_search(connection, Note.embedding, text, k=5, k1=k1, b=b)
        finally:
            sa.event.remove(connection, "before_cursor_execute", catch)
    texts = [statement for statement, _ in sent]
    assert len(texts) == 6
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[4] == texts[5]
    assert len({texts[0], texts[2], texts[4]}) == 3  # rrf, convex, keyword
    for statement, parameters in sent:
        assert "semdb_terms" in parameters
        assert not re.search(r"\d\.\d", statement), statement  # no number written in
    assert sent[0][1]["semdb_query_vector"] is not None


def test_candidates_come_from_the_gin_index(notes: sa.Engine) -> None:
    with notes.connect() as connection:
        connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = (
            connection.execute(
                sa.text(
                    "EXPLAIN SELECT 1 FROM keyword_notes WHERE to_tsvector('english'::regconfig, "
                    "coalesce(title, '') || ' ' || coalesce(body, '')) @@ 'violet'::tsquery"
                )
            )
            .scalars()
            .all()
        )
    assert any("ix_keyword_notes_embedding_fts" in line for line in plan)


def test_filters_joins_and_k_rows(notes: sa.Engine) -> None:
    with Session(notes) as session:
        docs = lexemes(session.connection())
        matching = {i for i, d in docs.items() if "red" in d or "circl" in d}
        in_group = {i for i in matching if i % 4 == 2}
        hits = semdb.keyword_search(
            session, Note.embedding, "red circle", k=len(in_group) + 5, where=Note.grp == 2
        )
        assert {h.row.id for h in hits} == in_group  # all that pass, no more
        five = semdb.keyword_search(session, Note.embedding, "red circle", k=5, where=Note.grp == 2)
        assert len(five) == 5 and [h.row.id for h in five] == [h.row.id for h in hits[:5]]
        rows = semdb.keyword_search(
            session, Note.embedding, "red", k=3, statement=sa.select(Note.id, Note.body)
        )
        assert len(rows) == 3 and all("red" in r.row.body for r in rows)
    with notes.connect() as connection:  # Core column, Core rows
        core = semdb.keyword_search(connection, Note.__table__.c.embedding, "red", k=3)
        assert [r.row.id for r in core] == [r.row.id for r in rows]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", False),
        ("   ", False),
        ("the of and", False),  # stopwords only
        ("& | ! : * ( ) ' <->", False),
        ("'\\'", False),
        ("\\", False),
        ('"', False),
        ("a:* !!!!", False),
        ("'; DROP TABLE students; --", False),  # words no row holds
        ("red & ! ( circle", True),  # operators around words: the words still count
        ("red' | 'x", True),
        ("red\\' OR 1=1", True),
        # written into SQL sent without parameters (with the settings' round trip)
        ("100% red %(semdb_text)s %s %% {0} {semdb_text}", True),
        ("$1 $$ red $$; SELECT 1", True),
    ],
)
def test_hostile_texts_are_only_words(notes: sa.Engine, text: str, words: bool) -> None:
    with Session(notes) as session:
        hits = semdb.keyword_search(session, Note.embedding, text, k=5)
        if words:
            assert len(hits) == 5 and all("red" in h.row.body for h in hits[:1])
        else:
            assert hits == [] and hits.plan.estimated_rows == 0
        if text.strip():
            fused = semdb.hybrid_search(
                session, Note.embedding, text, vector=np.ones(DIM, np.float32), k=4
            )
            assert len(fused) == 4  # the semantic leg alone at worst
            assert all(h.keyword_rank is None for h in fused) != words
        count = session.execute(
            sa.text(
                "SELECT count(*) FROM semdb.keyword_search(NULL::keyword_notes, 'embedding', :t, 5)"
            ),
            {"t": text},
        ).scalar()
        assert count == len(hits)
        assert session.execute(sa.select(sa.func.count()).select_from(Note)).scalar() == 300


def test_bad_arguments_name_the_culprit(notes: sa.Engine) -> None:
    with Session(notes) as session:
        for kwargs, culprit in [
            ({"k": 0}, "k must be"),
            ({"k1": -1}, "k1 must be"),
            ({"b": 2}, "b must be"),
            ({"where": "1=1"}, "not a string of SQL"),
        ]:
            with pytest.raises(SearchError, match=culprit):
                semdb.keyword_search(session, Note.embedding, "red", **kwargs)
        with pytest.raises(SearchError, match="at most 256"):
            semdb.keyword_search(session, Note.embedding, "red " * 300)
        with pytest.raises(SearchError, match="NUL character"):
            semdb.keyword_search(session, Note.embedding, "red\x00circle")
        with pytest.raises(SearchError, match="must be a string"):
            semdb.keyword_search(session, Note.embedding, None)  # type: ignore[arg-type]
        for kwargs, culprit in [
            ({"fusion": "max"}, "fusion must be one of"),
            ({"weights": (1,)}, "weights must be a pair"),
            ({"weights": (-1, 1)}, "weight must be a number"),
            ({"rrf_k": -1}, "rrf_k"),
            ({"candidates": 0}, "candidates must be"),
        ]:
            with pytest.raises(SearchError, match=culprit):
                semdb.hybrid_search(
                    session, Note.embedding, "red", vector=np.ones(DIM, np.float32), **kwargs
                )


def test_statistics_stay_exact_through_every_write(notes: sa.Engine) -> None:
    """Insert, update (text and non-text), delete, in one transaction and several; after each,
    the statistics equal a count from scratch (the rebuild), then everything is rolled back."""
    from semdb.sync.keyword_stats import rebuild_statements

    target = SyncTarget.from_column(Note.embedding)

    def recount(connection: sa.Connection) -> tuple[Any, ...]:
        with connection.begin_nested() as nested:
            for statement in rebuild_statements(target):
                connection.exec_driver_sql(statement.as_string(None))
            fresh = (*stats(connection), postings(connection))
            nested.rollback()
        return fresh

    def stats_and_postings(connection: sa.Connection) -> tuple[Any, ...]:
        return (*stats(connection), postings(connection))

    with notes.connect() as connection, connection.begin() as transaction:
        before = stats(connection)
        assert stats_and_postings(connection) == recount(connection)
        connection.execute(
            sa.insert(Note), [{**row, "id": 1000 + row["id"]} for row in _texts(40, 2)]
        )
        assert stats(connection)[0][0] == before[0][0] + 40
        assert stats_and_postings(connection) == recount(connection)
        connection.execute(
            sa.update(Note).where(Note.id < 50).values(body=Note.body + " printer printer")
        )
        assert stats_and_postings(connection) == recount(connection)
        connection.execute(  # new words, lost words, the same words: one statement
            sa.update(Note)
            .where(Note.id.between(50, 80))
            .values(body=sa.case((Note.id % 2 == 0, "zebra quiet"), else_=Note.body + " x"))
        )
        assert stats_and_postings(connection) == recount(connection)
        unchanged = stats(connection)
        connection.execute(sa.update(Note).where(Note.id < 200).values(grp=Note.grp + 1))
        connection.execute(sa.update(Note).where(Note.id < 10).values(body=Note.body))
        assert stats(connection) == unchanged  # no text changed: nothing counted
        connection.execute(sa.update(Note).where(Note.id == 3).values(id=5000, title="moved"))
        connection.execute(sa.delete(Note).where(Note.id.between(1000, 1019)))
        connection.execute(sa.delete(Note).where(Note.grp == 1))
        assert stats_and_postings(connection) == recount(connection)
        connection.execute(sa.text("TRUNCATE keyword_notes"))
        assert stats_and_postings(connection) == ((0, 0), {}, [])
        transaction.rollback()
    with notes.connect() as connection:
        assert stats(connection) == before


def test_the_sql_function_gives_the_same_keyword_rows(notes: sa.Engine) -> None:
    with Session(notes) as session:
        hits = semdb.keyword_search(session, Note.embedding, "quiet violet engine", k=15)
        rows = session.execute(
            sa.text(
                "SELECT (h.item).id, h.score FROM semdb.keyword_search("
                "NULL::keyword_notes, 'embedding', 'quiet violet engine', 15) AS h"
            )
        ).all()
    assert [r.id for r in rows] == [h.row.id for h in hits]
    assert [r.score for r in rows] == pytest.approx([h.score for h in hits])


@pytest.mark.parametrize(
    ("options", "sql"),
    [
        ({}, ""),
        (
            {"fusion": "rrf", "weights": (0.3, 0.7), "rrf_k": 5},
            ", fusion => 'rrf', semantic_weight => 0.3, keyword_weight => 0.7, rrf_k => 5",
        ),
        (
            {"fusion": "convex", "weights": (0.6, 0.4)},
            ", fusion => 'convex', semantic_weight => 0.6, keyword_weight => 0.4",
        ),
        ({"fusion": "convex", "candidates": 7}, ", candidates => 7, fusion => 'convex'"),
        (
            {"fusion": "rrf", "weights": (1.0, 0.0)},
            ", fusion => 'rrf', semantic_weight => 1, keyword_weight => 0",
        ),
    ],
)
def test_the_sql_function_gives_the_same_hybrid_rows(
    notes: sa.Engine, options: dict, sql: str
) -> None:
    query = np.random.default_rng(5).normal(size=DIM).astype(np.float32)
    literal = "[" + ",".join(repr(float(x)) for x in query) + "]"
    with Session(notes) as session:
        for text in ("violet star", "network printer quiet", "the of"):
            hits = semdb.hybrid_search(session, Note.embedding, text, vector=query, k=12, **options)
            rows = session.execute(
                sa.text(
                    "SELECT (h.item).id, h.score, h.semantic_rank, h.keyword_rank FROM "
                    "semdb.hybrid_search(NULL::keyword_notes, 'embedding', CAST(:q AS vector), "
                    f":t, 12{sql}) AS h"
                ),
                {"q": literal, "t": text},
            ).all()
            assert [(r.id, r.semantic_rank, r.keyword_rank) for r in rows] == [
                (h.row.id, h.semantic_rank, h.keyword_rank) for h in hits
            ]
            assert [r.score for r in rows] == pytest.approx([h.score for h in hits])
            assert [(r.semantic_rank, r.keyword_rank) for r in rows] == [
                (h.semantic_rank, h.keyword_rank) for h in hits
            ]
            if text == "the of" or options.get("weights") == (1.0, 0.0):  # the semantic leg's order
                assert all(h.keyword_rank is None for h in hits)
                assert [h.semantic_rank for h in hits] == list(range(1, 13))


def test_hybrid_fuses_as_documented_and_filters_both_legs(notes: sa.Engine) -> None:
    query = np.random.default_rng(6).normal(size=DIM).astype(np.float32)
    with Session(notes) as session:
        light = sa.select(Note.id)
        for options in (
            {"fusion": "rrf", "weights": (0.4, 0.6), "rrf_k": 20},
            {"fusion": "convex", "weights": (0.5, 0.5)},
        ):
            hits = semdb.hybrid_search(
                session,
                Note.embedding,
                "amber square",
                vector=query,
                k=10,
                **options,
                where=Note.grp != 3,
            )
            assert hits.fusion.method == options["fusion"] and hits.fusion.source == "given"
            assert len(hits) == 10 and all(h.row.grp != 3 for h in hits)
            semantic = semdb.search(
                session, Note.embedding, query, k=100, statement=light, where=Note.grp != 3
            )
            keyword = semdb.keyword_search(
                session, Note.embedding, "amber square", k=100, statement=light, where=Note.grp != 3
            )
            expected = fuse(
                [(h.row[0], h.distance) for h in semantic],
                [(h.row[0], h.score) for h in keyword],
                hits.fusion,
            )
            assert [h.row.id for h in hits] == expected


def test_tuning_stores_the_best_fusion_and_hybrid_uses_it(notes: sa.Engine) -> None:
    """Judged rows are those holding 'violet': the keyword leg is perfect, vectors are noise,
    so the tuning must give the keyword leg the weight; hybrid_search then ranks like it."""
    rng = np.random.default_rng(7)
    with Session(notes) as session:
        docs = lexemes(session.connection())
        queries = {f"q{i}": f"violet {WORDS[i]}" for i in range(8)}
        qrels = {
            q: {i: 1.0 for i, d in docs.items() if "violet" in d and WORDS[n][:4] in " ".join(d)}
            for n, q in enumerate(queries)
        }
        qrels = {q: r for q, r in qrels.items() if r}
        vectors = {q: rng.normal(size=DIM).astype(np.float32) for q in queries}
        default = semdb.hybrid_search(session, Note.embedding, "violet", vector=vectors["q0"])
        assert default.fusion.source == "default" and default.fusion.method == "rrf"
        result = tune_hybrid(session, Note.embedding, queries, qrels, vectors=vectors)
        assert result.ndcg >= result.keyword_ndcg - 1e-9 >= result.semantic_ndcg
        assert result.ndcg == max(result.scores.values())
        assert len(result.scores) == len(GRID)
        q = next(iter(qrels))
        hits = semdb.hybrid_search(session, Note.embedding, queries[q], vector=vectors[q])
        assert hits.fusion.source == "stored"
        assert (hits.fusion.method, hits.fusion.keyword_weight) == (
            result.fusion.method,
            result.fusion.keyword_weight,
        )
        semantic, keyword = leg_rankings(session, Note.embedding, queries[q], vectors[q])
        assert [h.row.id for h in hits] == fuse(semantic, keyword, hits.fusion)
        session.rollback()  # the stored choice goes with the transaction
        again = semdb.hybrid_search(session, Note.embedding, "violet", vector=vectors["q0"])
        assert again.fusion.source == "default"


def test_a_column_without_statistics_is_refused(engine: sa.Engine) -> None:
    class Other(Base):
        __tablename__ = "keyword_other"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        embedding: Mapped[np.ndarray | None] = embedding_column(
            "body", model="tiny", dimension=DIM, sync="manual"
        )

    Other.__table__.create(engine)
    try:
        with Session(engine) as session, pytest.raises(SearchError, match="no BM25 statistics"):
            session.execute(sa.insert(Other), [{"id": 1, "body": "x"}])
            register(session.connection(), SyncTarget.from_column(Other.embedding))
            semdb.keyword_search(session, Other.embedding, "x")
    finally:
        Other.__table__.drop(engine)


def test_pruned_rankings_stay_exact(notes: sa.Engine) -> None:
    """A word in every row and a word in five: the rows holding only the common word cannot
    reach a top 3 and are skipped; a top 10 needs them. Both equal the full BM25 ranking."""
    with Session(notes) as session:
        session.execute(sa.update(Note).values(body=Note.body + " common"))
        session.execute(
            sa.update(Note)
            .where(Note.id.in_([5, 50, 150, 250, 299]))
            .values(body=Note.body + " zanzibar")
        )
        docs = lexemes(session.connection())
        expected = reference_bm25(docs, ["zanzibar", "common"])
        want = [i for i, _ in sorted(expected.items(), key=lambda item: (-item[1], item[0]))]
        for k in (3, 5, 10, 40):
            hits = semdb.keyword_search(session, Note.embedding, "zanzibar common", k=k)
            assert [h.row.id for h in hits] == want[:k]
            assert [h.score for h in hits] == pytest.approx([expected[i] for i in want[:k]])
        session.rollback()


def test_the_migration_operation_installs_and_removes_the_statistics(
    empty_database_url: Any,
) -> None:
    """op.create_embedding_sync(..., keyword=True) on a table with rows: statistics counted,
    kept by the triggers, keyword search works; its reverse removes triggers and rows;
    semdb's own schema downgrades past 0005 and back."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from semdb.alembic.operations import CreateEmbeddingSyncOp
    from semdb.db.migrate import downgrade, upgrade

    engine = semdb.create_engine(empty_database_url)
    try:
        upgrade(engine)
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    'CREATE TABLE "my docs" (id int PRIMARY KEY, "ti:tle" text, body text, '
                    "e vector(3), e_model text, e_hash bytea)"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO \"my docs\" VALUES (1, 'Rare words', 'a body', NULL, NULL, "
                    "NULL), (2, NULL, 'another body', NULL, NULL, NULL)"
                )
            )
            operations = Operations(MigrationContext.configure(connection))
            operations.create_embedding_sync(
                "my docs",
                "e",
                sources=["ti:tle", "body"],
                model="m",
                dimension=3,
                mode="manual",
                keyword=True,
            )
            connection.execute(sa.text("INSERT INTO \"my docs\" (id, body) VALUES (3, 'body')"))
            counts = connection.execute(
                sa.text("SELECT documents, total_length FROM semdb.bm25_stats")
            ).one()
            assert tuple(counts) == (3, 3 + 2 + 1)  # {rare, word, bodi}, {anoth, bodi}, {bodi}
            terms = dict(
                connection.execute(sa.text("SELECT term, documents FROM semdb.bm25_terms")).all()
            )
            assert terms == {"rare": 1, "word": 1, "bodi": 3, "anoth": 1}
            rows = (
                connection.execute(
                    sa.text(
                        "SELECT (h.item).id FROM semdb.keyword_search(NULL::\"my docs\", 'e', "
                        "'rare bodies') AS h"
                    )
                )
                .scalars()
                .all()
            )
            assert rows[0] == 1 and sorted(rows) == [1, 2, 3]
            created = CreateEmbeddingSyncOp(
                "my docs",
                "e",
                sources=["ti:tle", "body"],
                model="m",
                dimension=3,
                mode="manual",
                keyword=True,
            )
            operations.invoke(created.reverse())
            assert (
                connection.execute(sa.text("SELECT count(*) FROM semdb.bm25_terms")).scalar() == 0
            )
            triggers = connection.execute(
                sa.text("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'semdb_bm25%'")
            ).scalar()
            assert triggers == 0
        assert downgrade(engine, "0003_activations") == "0003_activations"
        with engine.connect() as connection:  # 0002's hybrid_search is back
            assert (
                connection.execute(
                    sa.text("SELECT count(*) FROM pg_proc WHERE proname = 'hybrid_search'")
                ).scalar()
                == 1
            )
            assert (
                connection.execute(sa.text("SELECT to_regclass('semdb.bm25_stats')")).scalar()
                is None
            )
        assert upgrade(engine) == head_revision()
    finally:
        engine.dispose()


def test_semdb_tune_hybrid_on_a_beir_folder(
    engine: sa.Engine, tiny_bundle: Any, tiny_embedder: Any, tmp_path: Any
) -> None:
    """The command embeds the validation queries with the column's model, stores its
    choice, and hybrid_search uses it; no validation split: one line saying what to do."""
    import json

    from .conftest import run_semdb

    class Page(Base):
        __tablename__ = "keyword_pages"
        id: Mapped[str] = mapped_column(primary_key=True)
        body: Mapped[str]
        embedding: Mapped[np.ndarray | None] = embedding_column(
            "body", model="tiny", dimension=32, sync="manual", fulltext="english"
        )

    bodies = {f"p{i}": f"{WORDS[i % 20]} {WORDS[(i * 7) % 20]} page {i}" for i in range(60)}
    Page.__table__.create(engine)
    try:
        vectors = tiny_embedder.embed(list(bodies.values()))
        with engine.begin() as connection:
            semdb.copy_rows(
                connection,
                Page,
                {"id": list(bodies), "body": list(bodies.values()), "embedding": vectors},
                model="tiny@1",
            )
            register(connection, SyncTarget.from_column(Page.embedding))
            semdb.install_keyword_stats(connection, Page.embedding)
        (tmp_path / "qrels").mkdir()
        queries = {f"q{i}": f"{WORDS[i % 20]} {WORDS[(i * 7) % 20]}" for i in range(0, 60, 6)}
        (tmp_path / "queries.jsonl").write_text(
            "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
        )
        (tmp_path / "qrels" / "validation.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\tp{q[1:]}\t1\n" for q in queries)
        )
        result = run_semdb(
            "tune-hybrid",
            str(tmp_path),
            "--column",
            "keyword_pages.embedding",
            "--model",
            str(tiny_bundle),
        )
        assert result.returncode == 0, result.stderr
        assert (
            "10 queries" in result.stdout and "stored for keyword_pages.embedding" in result.stdout
        )
        with Session(engine) as session:
            hits = semdb.hybrid_search(
                session, Page.embedding, queries["q0"], embedder=tiny_embedder, k=5
            )
            assert hits.fusion.source == "stored" and len(hits) == 5
            assert f"chosen: {hits.fusion.method}" in result.stdout
        missing = run_semdb(
            "tune-hybrid",
            str(tmp_path),
            "--column",
            "keyword_pages.embedding",
            "--split",
            "dev",
            "--model",
            str(tiny_bundle),
        )
        assert missing.returncode == 1 and "dev.tsv does not exist" in missing.stderr
        assert "never tune on test" in missing.stderr
    finally:
        with engine.begin() as connection:
            semdb.uninstall_keyword_stats(connection, Page.embedding)
            connection.execute(unregister_statement(SyncTarget.from_column(Page.embedding)))
        Page.__table__.drop(engine)


def test_upgrade_builds_postings_for_existing_keyword_columns(empty_database_url: Any) -> None:
    """A column made keyword-searchable before 0008 (statistics, no postings): upgrading
    builds its postings and triggers that keep them, and the SQL function gives the same rows
    as Python; downgrading to 0007 drops them and 0005's triggers keep the statistics."""
    from semdb.db.migrate import downgrade, upgrade
    from semdb.sync.keyword_stats import install_statements

    engine = semdb.create_engine(empty_database_url)
    target = SyncTarget.from_column(Note.embedding)
    try:
        upgrade(engine, "0008_chunks_search")
        Note.__table__.create(engine)
        with engine.begin() as connection:
            connection.execute(sa.insert(Note), _texts(60, 3))
            register(connection, target)
            for statement in install_statements(target, postings=False):  # as 0005 made them
                connection.exec_driver_sql(statement.as_string(None))
        with Session(engine) as session:
            with pytest.raises(sa.exc.ProgrammingError):  # 0007's schema: no postings
                semdb.keyword_search(session, Note.embedding, "red")
        assert upgrade(engine) == head_revision()
        with engine.begin() as connection:
            connection.execute(sa.insert(Note), [{**r, "id": 100 + r["id"]} for r in _texts(5, 4)])
        with Session(engine) as session:
            docs = lexemes(session.connection())
            assert postings(session.connection()) == sorted(
                (t, i, tf, len(d)) for i, d in docs.items() for t, tf in d.items()
            )
            expected = reference_bm25(docs, ["red", "engin"])
            want = sorted(expected, key=lambda i: (-expected[i], i))[:10]
            hits = semdb.keyword_search(session, Note.embedding, "red engines", k=10)
            assert [h.row.id for h in hits] == want
            rows = session.execute(
                sa.text(
                    "SELECT (h.item).id FROM semdb.keyword_search(NULL::keyword_notes, "
                    "'embedding', 'red engines', 10) AS h"
                )
            ).scalars()
            assert list(rows) == want
        assert downgrade(engine, "0008_chunks_search") == "0008_chunks_search"
        with engine.begin() as connection:
            connection.execute(sa.delete(Note).where(Note.id < 10))
            assert stats(connection)[0][0] == 55
            assert (
                connection.execute(
                    sa.text("SELECT count(*) FROM pg_class WHERE relname LIKE 'bm25p_%'")
                ).scalar()
                == 0
            )
            rows = connection.execute(
                sa.text(
                    "SELECT (h.item).id FROM semdb.keyword_search(NULL::keyword_notes, "
                    "'embedding', 'red engines', 3) AS h"
                )
            ).scalars()
            assert len(list(rows)) == 3
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS keyword_notes"))
        engine.dispose()
