"""Hard negatives mined from the database: near neighbours that are not labelled relevant.

The current model encodes the corpus and the training queries; the corpus vectors go into a
pgvector table (:class:`~training.vector_search.CorpusTable`) and each query's nearest
documents come back by SQL. Of those, documents labelled relevant are dropped, and so are
documents that score almost as high as the query's own positive: in real data they are
often unlabelled answers (a near-duplicate package, a rephrased FAQ), and training the model
to push them away hurts it. The rule, "positive-aware" mining (Moreira et al., NV-Retriever,
2024): a candidate is kept only when

    similarity(query, candidate) < (1 - margin) * similarity(query, least similar positive)

The hardest survivors (nearest first) become the query's negatives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import RetrievalSet
from training.encoders import Encoder, encode_corpus
from training.vector_search import CorpusTable

logger = logging.getLogger(__name__)

EXACT_SEARCH_UP_TO = 20_000  # corpus size above which mining searches an HNSW index


@dataclass(frozen=True)
class MiningReport:
    """What mining found, for logs and for ``training.json``."""

    queries: int
    negatives: int
    skipped_as_likely_positive: int
    queries_short_of_negatives: int
    exact_search: bool
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.negatives} hard negatives for {self.queries} queries; "
            f"{self.skipped_as_likely_positive} near neighbours skipped as likely unlabelled "
            f"positives; {self.queries_short_of_negatives} queries got fewer than asked "
            f"({'exact' if self.exact_search else 'HNSW'} search, {self.seconds:.0f} s)"
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def mine_hard_negatives(
    encoder: Encoder,
    data: RetrievalSet,
    *,
    count: int = 1,
    depth: int = 30,
    margin: float = 0.05,
    exact: bool | None = None,
    url: str | None = None,
    corpus_vectors: np.ndarray | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> tuple[RetrievalSet, MiningReport]:
    """``data`` with up to ``count`` mined negatives per query added, and a report.

    Negatives the data already had (given in the source) stay first.

    ``depth`` nearest neighbours are looked at per query. ``margin`` is the relative gap
    to the positive's similarity below which a candidate must stay (0.05: below 95% of it).
    ``exact`` forces exact (True) or HNSW (False) search; by default the search is exact up
    to 20,000 documents. ``corpus_vectors`` (rows in ``data.corpus`` order) skip encoding
    the corpus.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), not {margin}")
    started = time.perf_counter()
    document_ids = list(data.corpus)
    if corpus_vectors is None:
        corpus_vectors, _ = encode_corpus(
            encoder,
            document_ids,
            [data.corpus[d] for d in document_ids],
            corpus_fingerprint=data.fingerprint(),
            cache_dir=cache_dir,
            progress=progress,
        )
    row_of = {document_id: row for row, document_id in enumerate(document_ids)}
    query_ids = data.query_ids
    query_vectors = np.asarray(
        encoder.embed([data.queries[q] for q in query_ids], kind="query"), dtype=np.float32
    )
    if exact is None:
        exact = len(document_ids) <= EXACT_SEARCH_UP_TO
    depth = max(depth, count)
    with CorpusTable.open(document_ids, corpus_vectors, exact=exact, url=url) as table:
        hits = table.search(query_vectors, depth + 1, progress=progress)

    negatives: dict[str, list[str]] = {}
    skipped = short = 0
    for query_id, query_vector, found in zip(query_ids, query_vectors, hits, strict=True):
        relevant = data.qrels[query_id]
        positive_rows = [row_of[d] for d in relevant]
        positive_score = float(np.min(corpus_vectors[positive_rows] @ query_vector))
        ceiling = (1.0 - margin) * positive_score if positive_score > 0 else positive_score
        chosen: list[str] = []
        for document_id, score in found:
            if document_id in relevant:
                continue
            if score >= ceiling:
                skipped += 1
                continue
            chosen.append(document_id)
            if len(chosen) == count:
                break
        if len(chosen) < count:
            short += 1
        if chosen:
            negatives[query_id] = chosen
    report = MiningReport(
        queries=len(query_ids),
        negatives=sum(len(n) for n in negatives.values()),
        skipped_as_likely_positive=skipped,
        queries_short_of_negatives=short,
        exact_search=exact,
        seconds=round(time.perf_counter() - started, 1),
    )
    logger.info("%s", report)
    merged = {q: list(documents) for q, documents in data.negatives.items()}
    for query_id, mined in negatives.items():
        known = merged.setdefault(query_id, [])
        known.extend(d for d in mined if d not in known)
    return data.with_negatives(merged), report
