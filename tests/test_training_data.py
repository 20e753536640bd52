"""training.data: BEIR folders, JSON lines and SQL queries become one RetrievalSet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from semdb.db import libpq_uri
from semdb.errors import DatasetError
from training.data import (
    RetrievalSet,
    load_beir,
    load_jsonl,
    load_source,
    load_sql,
)


def write_beir(folder: Path, *, qrels: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    documents = [
        {"_id": "d1", "title": "Vim", "text": "A  text editor\nfor programmers."},
        {"_id": "d2", "title": "", "text": "A web browser."},
        {"_id": "d3", "title": "", "text": "a web   BROWSER."},  # d2 again, other spacing
        {"_id": "d4", "title": "", "text": "A mail client."},
    ]
    queries = [
        {"_id": "q1", "text": "editor"},
        {"_id": "q2", "text": "browser"},
        {"_id": "q3", "text": "Browser"},  # q2 again, other case
        {"_id": "q4", "text": "mail"},
        {"_id": "q5", "text": "not judged"},
    ]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in documents) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "train.tsv").write_text(
        qrels
        or "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t2\nq4\td4\t1\nq4\td1\t0\n"
    )
    return folder


def test_beir_folder_loads_texts_qrels_and_titles(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "beir"))
    assert data.corpus["d1"] == "Vim A text editor for programmers."
    assert set(data.queries) == {"q1", "q2", "q3", "q4"}  # q5 is in no qrels
    assert data.qrels["q4"] == {"d4": 1}  # score 0 is not relevant
    assert len(data) == 4
    assert [(p.anchor, p.positive) for p in data.pairs()][0] == (
        "editor",
        "Vim A text editor for programmers.",
    )


def test_deduplication_merges_texts_and_qrels(tmp_path: Path) -> None:
    data, report = load_beir(write_beir(tmp_path / "beir")).deduplicated()
    assert report.queries_merged == 1 and report.documents_merged == 1
    assert "q3" not in data.queries and "d3" not in data.corpus
    assert data.qrels["q2"] == {"d2": 2}  # the highest grade of the merged judgements
    assert len(data.pairs()) == 3


def test_beir_errors_name_the_file_and_line(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir", qrels="query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(DatasetError, match="documents missing from corpus.jsonl.*'d9'"):
        load_beir(folder)
    folder = write_beir(tmp_path / "beir2", qrels="q1 d1 1\n")
    with pytest.raises(DatasetError, match=r"train.tsv, line 1, has 1 columns"):
        load_beir(folder)
    with pytest.raises(DatasetError, match=r"test.tsv is missing \(qrels splits here: train"):
        load_beir(write_beir(tmp_path / "beir3"), split="test")
    (tmp_path / "beir3" / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"corpus.jsonl, line 2, is a JSON list"):
        load_beir(tmp_path / "beir3")


def test_split_is_seeded_disjoint_and_keeps_the_corpus() -> None:
    n = 200
    data = RetrievalSet(
        queries={f"q{i}": f"query {i}" for i in range(n)},
        corpus={f"d{i}": f"document {i}" for i in range(n)},
        qrels={f"q{i}": {f"d{i}": 1} for i in range(n)},
    )
    train, validation = data.split(0.1, seed=7)
    again_train, again_validation = data.split(0.1, seed=7)
    _, other_validation = data.split(0.1, seed=8)
    assert len(validation.queries) == 20 and len(train.queries) == 180
    assert set(train.queries).isdisjoint(validation.queries)
    assert validation.queries == again_validation.queries
    assert train.queries == again_train.queries
    assert set(other_validation.queries) != set(validation.queries)
    assert validation.corpus is data.corpus
    _, capped = data.split(0.5, seed=7, max_validation=5)
    assert len(capped.queries) == 5
    with pytest.raises(DatasetError, match="validation_fraction"):
        data.split(1.0)


def test_jsonl_pairs_and_triplets(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    lines = [
        {"query": "How do I reset my password?", "positive": "Use the reset link."},
        {"question": "how do i reset my  password?", "answer": "Use the reset link."},
        {"anchor": "Refunds", "positive": "Refunds take 5 days.", "negative": "Use the reset link"},
        {"query": "Shipping", "document": "We ship.", "negatives": ["Refunds take 5 days."]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    data = load_jsonl(path)
    assert len(data.queries) == 3  # the first two lines are one pair
    pairs = {p.anchor: p for p in data.pairs()}
    assert pairs["Refunds"].negatives == ("Use the reset link",)
    assert pairs["Shipping"].negatives == ("Refunds take 5 days.",)
    assert pairs["How do I reset my password?"].negatives == ()


def test_a_negative_that_is_also_the_positive_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "a", "positive": "b", "negatives": ["b", "c"]}) + "\n")
    assert load_jsonl(path).pairs()[0].negatives == ("c",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"q": "x", "positive": "y"}', r"line 1, has none of the keys query, anchor, question"),
        ('{"query": "x", "positive": 3}', r"line 1: 'positive' is a int, not a text"),
        ('{"query": "x", "positive": "y", "negatives": "z"}', r"'negatives' must be a list"),
        ('{"query": "  ", "positive": "y"}', r"line 1: 'query' is empty"),
        ("{not json", r"line 1, is not valid JSON"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_jsonl(path)


def test_sql_query_reads_pairs_read_only(engine: sa.Engine, database_url: URL) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS faq")
        connection.exec_driver_sql(
            "CREATE TABLE faq (id serial, question text, answer text, wrong text)"
        )
        connection.execute(
            sa.text("INSERT INTO faq (question, answer, wrong) VALUES (:q, :a, :w)"),
            [
                {"q": "What is 50% off?", "a": "Half the price.", "w": "A refund."},
                {"q": "Refund?", "a": "A refund.", "w": None},
                {"q": None, "a": "orphan answer", "w": None},
                {"q": "What is 50% off?", "a": "Half the price.", "w": "A refund."},
            ],
        )
    url = libpq_uri(database_url)
    data = load_sql("SELECT question, answer FROM faq WHERE question LIKE '%?'", url)
    assert sorted(p.anchor for p in data.pairs()) == ["Refund?", "What is 50% off?"]
    triplets = load_source("  select question, answer, wrong::text from faq order by id", url=url)
    by_anchor = {p.anchor: p for p in triplets.pairs()}
    assert by_anchor["What is 50% off?"].negatives == ("A refund.",)

    with pytest.raises(DatasetError, match="returns 1 columns"):
        load_sql("SELECT question FROM faq", url)
    with pytest.raises(DatasetError, match='relation "nope" does not exist'):
        load_sql("SELECT a, b FROM nope", url)
    with pytest.raises(DatasetError, match="read-only transaction"):
        load_sql("WITH g AS (DELETE FROM faq RETURNING question, answer) SELECT * FROM g", url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM faq").scalar() == 4


def test_load_source_says_what_it_accepts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a folder, a file nor an SQL query"):
        load_source(str(tmp_path / "missing"))
    assert len(load_source(str(write_beir(tmp_path / "beir")))) == 4
