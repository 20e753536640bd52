"""Evaluate an encoder the way users' queries run: vectors in pgvector, top-k by SQL.

:func:`evaluate` encodes the corpus and the queries with an :class:`~training.encoders.Encoder`
(semdb's ONNX embedder for an exported bundle, so the numbers describe what users get),
copies the corpus vectors into a temporary pgvector table, asks PostgreSQL for each query's
top k by cosine distance (exact: no index, so the numbers do not depend on index settings),
and scores the rankings against the qrels (:mod:`semdb.evaluation.metrics`).

``search="numpy"`` does the same exact search in memory, for a machine without a database.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semdb.evaluation.metrics import DEFAULT_METRICS, evaluate_rankings, parse_metric
from training.data import RetrievalSet
from training.encoders import Encoder, encode_corpus
from training.vector_search import CorpusTable, exact_search_numpy

SearchPath = Literal["pgvector", "numpy"]


@dataclass
class Evaluation:
    """One model's scores on one query set, and how they were obtained."""

    model: str
    metrics: dict[str, float]
    queries: int
    documents: int
    encoder: str
    search: str
    seconds: dict[str, float] = field(default_factory=dict)
    rankings: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("rankings")
        return data


def evaluate(
    encoder: Encoder,
    data: RetrievalSet,
    *,
    model: str = "model",
    metrics: Sequence[str] = DEFAULT_METRICS,
    search: SearchPath = "pgvector",
    url: str | None = None,
    cache_dir: Path | None = None,
    corpus_vectors: np.ndarray | None = None,
    progress: bool = False,
) -> Evaluation:
    """Score ``encoder`` on ``data``'s queries against its whole corpus.

    ``corpus_vectors`` (rows in ``data.corpus`` order) skips encoding the corpus; else
    vectors are read from ``cache_dir`` when an earlier run of the same encoder on the same
    corpus left them there.
    """
    depth = max(parse_metric(name)[1] for name in metrics)
    document_ids = list(data.corpus)
    seconds: dict[str, float] = {}
    if corpus_vectors is None:
        corpus_vectors, seconds["encode_corpus"] = encode_corpus(
            encoder,
            document_ids,
            [data.corpus[d] for d in document_ids],
            corpus_fingerprint=data.fingerprint(),
            cache_dir=cache_dir,
            progress=progress,
        )
    query_ids = data.query_ids
    started = time.perf_counter()
    query_vectors = np.asarray(
        encoder.embed([data.queries[q] for q in query_ids], kind="query"), dtype=np.float32
    )
    seconds["encode_queries"] = time.perf_counter() - started

    started = time.perf_counter()
    if search == "pgvector":
        with CorpusTable.open(document_ids, corpus_vectors, exact=True, url=url) as table:
            seconds["load_vectors"] = time.perf_counter() - started
            started = time.perf_counter()
            hits = table.search(query_vectors, depth, progress=progress)
        search_label = "pgvector exact"  # SQL: ORDER BY embedding <=> query LIMIT k, no index
    elif search == "numpy":
        hits = exact_search_numpy(document_ids, corpus_vectors, query_vectors, depth)
        search_label = "numpy exact"
    else:
        raise ValueError(f"unknown search path {search!r}: use 'pgvector' or 'numpy'")
    seconds["search"] = time.perf_counter() - started

    rankings = {q: [d for d, _ in found] for q, found in zip(query_ids, hits, strict=True)}
    return Evaluation(
        model=model,
        metrics=evaluate_rankings(rankings, data.qrels, metrics),
        queries=len(query_ids),
        documents=len(document_ids),
        encoder=describe_encoder(encoder),
        search=search_label,
        seconds={name: round(value, 3) for name, value in seconds.items()},
        rankings=rankings,
    )


def describe_encoder(encoder: Any) -> str:
    """A short label for the encoder path: 'onnx int8 (CPUExecutionProvider)', 'torch'."""
    from training.encoders import SentenceTransformerEncoder

    if isinstance(encoder, SentenceTransformerEncoder):
        return "torch (sentence-transformers)"
    parts = ["onnx"]
    for attribute in ("precision", "provider"):
        value = getattr(encoder, attribute, None)
        if value:
            parts.append(str(value))
    return " ".join(parts)


def comparison_table(
    evaluations: Sequence[Evaluation],
    *,
    title: str | None = None,
    references: Sequence[int | None] | None = None,
) -> Any:
    """A rich table: one row per model, the metrics, and each row's change in points.

    ``references[i]`` is the row that row ``i`` is compared with (None: no change shown);
    by default every row after the first is compared with the first.
    """
    from rich.table import Table

    if references is None:
        references = [None, *([0] * (len(evaluations) - 1))]
    table = Table(title=title)
    table.add_column("model")
    names = list(evaluations[0].metrics) if evaluations else []
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("encoder / search")
    for evaluation, reference in zip(evaluations, references, strict=True):
        cells = []
        for name in names:
            value = evaluation.metrics[name]
            cell = f"{value:.4f}"
            if reference is not None:
                cell += f" ({100 * (value - evaluations[reference].metrics[name]):+.2f})"
            cells.append(cell)
        table.add_row(evaluation.model, *cells, f"{evaluation.encoder} / {evaluation.search}")
    return table
