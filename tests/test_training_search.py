"""Evaluation and mining search through pgvector: exact top-k by SQL, the margin rule."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from semdb.db import libpq_uri
from training.data import RetrievalSet
from training.encoders import SentenceTransformerEncoder, encode_corpus
from training.evaluate import evaluate
from training.negatives import mine_hard_negatives
from training.vector_search import CorpusTable, exact_search_numpy

from .tiny_retrieval import tiny_retrieval_set


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and they spin when the machine is busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class VectorsByText:
    """An encoder whose vectors are given by hand (so every similarity is known)."""

    def __init__(self, vectors: dict[str, Sequence[float]]) -> None:
        self.vectors = vectors

    def embed(self, texts: Sequence[str], kind: str = "document") -> np.ndarray:
        matrix = np.array([self.vectors[t] for t in texts], dtype=np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def at_cosine(c: float, side: int = 1) -> tuple[float, float]:
    """A unit vector whose cosine with (1, 0) is ``c``."""
    return (c, side * math.sqrt(1 - c * c))


@pytest.fixture()
def url(engine: sa.Engine, database_url: URL) -> str:
    return libpq_uri(database_url)


def test_exact_sql_search_matches_numpy_and_scans_every_row(url: str) -> None:
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((70, 16)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(corpus))]
    with CorpusTable.open(ids, corpus, exact=True, url=url) as table:
        found = table.search(queries, 10, batch_size=32)  # 3 batches, the last one short
        plan = table.explain(queries[0])
    expected = exact_search_numpy(ids, corpus, queries, 10)
    assert len(found) == 70
    assert [[d for d, _ in hits] for hits in found] == [[d for d, _ in hits] for hits in expected]
    assert np.allclose(
        [s for hits in found for _, s in hits], [s for hits in expected for _, s in hits], atol=1e-5
    )
    assert "Seq Scan" in plan and "Index" not in plan


def test_hnsw_search_is_used_for_mining_and_finds_the_neighbours(url: str) -> None:
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((300, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(corpus))]
    with CorpusTable.open(ids, corpus, exact=False, url=url) as table:
        found = table.search(corpus[:20], 5)
        plan = table.explain(corpus[0])
    assert "Index Scan using" in plan and "_embedding_hnsw" in plan, plan
    assert [hits[0][0] for hits in found] == ids[:20]  # each vector's nearest is itself


def test_exact_tables_run_the_exact_form_and_mined_ones_the_index_form(url: str) -> None:
    """semdb's one k-NN statement: exact search orders by the distance function, which no
    index serves; mining by the operator its HNSW index serves."""
    rng = np.random.default_rng(2)
    corpus = rng.standard_normal((200, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(corpus))]
    with CorpusTable.open(ids, corpus, exact=True, url=url) as table:
        exact_plan = table.explain(corpus[0], k=5)
    with CorpusTable.open(ids, corpus, exact=False, url=url) as table:
        index_plan = table.explain(corpus[0], k=5)
    sort_keys = [line for line in exact_plan.splitlines() if line.startswith("Sort Key: ")]
    assert sort_keys and "cosine_distance(" in sort_keys[0], exact_plan
    assert "<=>" not in exact_plan and "Index" not in exact_plan, exact_plan
    order_by = [line for line in index_plan.splitlines() if line.startswith("Order By: ")]
    assert order_by and "embedding <=> " in order_by[0], index_plan
    assert "Index Scan using" in index_plan, index_plan
    assert "cosine_distance" not in index_plan, index_plan


def test_mining_keeps_the_hardest_true_negatives_and_skips_likely_positives(url: str) -> None:
    data = RetrievalSet(
        queries={"q": "query"},
        corpus={"p": "positive", "dup": "dup", "hard": "hard", "mid": "mid", "far": "far"},
        qrels={"q": {"p": 1}},
    )
    encoder = VectorsByText(
        {
            "query": (1.0, 0.0),
            "positive": at_cosine(0.8),
            "dup": at_cosine(0.79, -1),  # above 0.95 * 0.8 = 0.76: a likely unlabelled positive
            "hard": at_cosine(0.7),
            "mid": at_cosine(0.5, -1),
            "far": at_cosine(-0.2),
        }
    )
    mined, report = mine_hard_negatives(encoder, data, count=2, margin=0.05, url=url)
    assert mined.negatives == {"q": ["hard", "mid"]}
    assert report.skipped_as_likely_positive == 1 and report.queries_short_of_negatives == 0
    assert mined.pairs()[0].negatives == ("hard", "mid")

    no_margin, _ = mine_hard_negatives(encoder, data, count=2, margin=0.0, url=url)
    assert no_margin.negatives == {"q": ["dup", "hard"]}

    strict, report = mine_hard_negatives(encoder, data, count=2, margin=0.5, url=url)
    assert strict.negatives == {"q": ["far"]}  # only below 0.4 survives
    assert report.queries_short_of_negatives == 1


def test_mined_negatives_come_after_the_given_ones(url: str) -> None:
    data = RetrievalSet(
        queries={"q": "query"},
        corpus={"p": "positive", "hard": "hard", "given": "given"},
        qrels={"q": {"p": 1}},
        negatives={"q": ["given"]},
    )
    encoder = VectorsByText(
        {"query": (1, 0), "positive": (1, 0.1), "hard": at_cosine(0.5), "given": (-1, 0)}
    )
    mined, _ = mine_hard_negatives(encoder, data, count=1, url=url)
    assert mined.negatives == {"q": ["given", "hard"]}


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_dir: Path) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder.load(tiny_model_dir)


def test_evaluation_through_pgvector_equals_exact_search_in_memory(
    url: str, tiny_encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    data = tiny_retrieval_set(80)
    through_sql = evaluate(tiny_encoder, data, model="tiny", url=url, cache_dir=tmp_path)
    in_memory = evaluate(tiny_encoder, data, model="tiny", search="numpy", cache_dir=tmp_path)
    assert through_sql.documents == 80 and through_sql.queries == len(data.query_ids) > 60
    assert 0.0 < through_sql.metrics["ndcg@10"] < 1.0
    assert through_sql.metrics["recall@100"] == 1.0  # 80 documents: all of them come back
    # The same order, except where two documents score the same to float32 precision: SQL
    # (pgvector) and numpy sum in different orders, so a near-tie may come out either way.
    ids = list(data.corpus)
    documents = dict(zip(ids, tiny_encoder.embed([data.corpus[i] for i in ids]), strict=True))
    queries = tiny_encoder.embed([data.queries[q] for q in data.query_ids], kind="query")
    swapped = 0
    for query_id, query in zip(data.query_ids, queries, strict=True):
        sql_order, numpy_order = through_sql.rankings[query_id], in_memory.rankings[query_id]
        assert sorted(sql_order) == sorted(numpy_order)
        for a, b in zip(sql_order, numpy_order, strict=True):
            if a != b:
                swapped += 1
                assert abs(float(documents[a] @ query) - float(documents[b] @ query)) < 1e-5
    if swapped == 0:
        assert through_sql.metrics == pytest.approx(in_memory.metrics, abs=1e-9)
    else:
        assert through_sql.metrics == pytest.approx(in_memory.metrics, abs=0.02)
    assert "encode_corpus" in through_sql.seconds
    assert in_memory.seconds.get("encode_corpus") == 0.0  # read from the cache
    assert list(tmp_path.glob("torch-*/*.keys.npy"))


def test_corpus_cache_is_keyed_by_model_and_reused_per_text(
    tiny_encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    texts = ["one sentence", "another one", "a third"]
    first, seconds = encode_corpus(
        tiny_encoder, ["a", "b", "c"], texts, corpus_fingerprint="x", cache_dir=tmp_path
    )
    again, cached_seconds = encode_corpus(
        tiny_encoder, ["a", "b", "c"], texts, corpus_fingerprint="x", cache_dir=tmp_path
    )
    assert seconds > 0 and cached_seconds == 0.0 and np.array_equal(first, again)

    # another corpus (deduplicated, reordered, one new text): only the new text is encoded
    counting = CountingEncoder(tiny_encoder)
    other, _ = encode_corpus(
        counting,
        ["c", "z", "a"],
        [texts[2], "brand new", texts[0]],
        corpus_fingerprint="y",
        cache_dir=tmp_path,
    )
    assert counting.texts == ["brand new"]
    assert np.array_equal(other[0], first[2]) and np.array_equal(other[2], first[0])
    assert np.allclose(other[1], tiny_encoder.embed(["brand new"])[0], atol=1e-6)

    shorter = SentenceTransformerEncoder(
        tiny_encoder.model, document_max_tokens=4, fingerprint=tiny_encoder._fingerprint
    )
    _, other_seconds = encode_corpus(
        shorter, ["a", "b", "c"], texts, corpus_fingerprint="x", cache_dir=tmp_path
    )
    assert other_seconds > 0  # a different truncation is a different encoder
    assert len(list(tmp_path.glob("*/*.keys.npy"))) == 3


class CountingEncoder:
    """Passes texts to another encoder and remembers which."""

    def __init__(self, inner: SentenceTransformerEncoder) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str], kind: str = "document") -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.embed(texts, kind)  # type: ignore[arg-type]
