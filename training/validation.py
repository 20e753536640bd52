"""The trainer's validation: semdb's one retrieval evaluator, run inside training.

:class:`ValidationEvaluator` is a sentence-transformers evaluator (the trainer calls it every
``eval_steps`` and early-stops on its nDCG@10). It encodes the validation queries and corpus
with the model being trained, takes each query's exact top k by cosine similarity in memory
(:func:`training.vector_search.exact_search_numpy`, the same ranking as ``semdb eval``'s
exact SQL search) and scores the rankings with :func:`semdb.evaluation.metrics.evaluate_rankings`:
the numbers of ``semdb eval`` and ``semdb quickstart --data``, trec_eval conventions.

Metrics are logged as ``eval_validation_cosine_<metric>`` (``eval_validation_cosine_ndcg@10``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from semdb.evaluation.metrics import DEFAULT_METRICS, evaluate_rankings, parse_metric
from training.vector_search import exact_search_numpy


class ValidationEvaluator(BaseEvaluator):  # type: ignore[misc]
    """Rank ``corpus`` for each of ``queries`` with the model and score against ``qrels``."""

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        *,
        name: str = "validation",
        metrics: Sequence[str] = DEFAULT_METRICS,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.query_ids = list(queries)
        self.query_texts = [queries[q] for q in self.query_ids]
        self.document_ids = list(corpus)
        self.document_texts = [corpus[d] for d in self.document_ids]
        self.qrels = {q: dict(qrels[q]) for q in self.query_ids}
        self.name = name
        self.metrics = tuple(metrics)
        self.depth = max(parse_metric(metric)[1] for metric in self.metrics)
        self.batch_size = batch_size
        self.primary_metric = "cosine_ndcg@10"

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        def encode(texts: list[str], kind: str) -> np.ndarray:
            method = getattr(model, f"encode_{kind}", model.encode)
            return np.asarray(
                method(texts, batch_size=self.batch_size, convert_to_numpy=True),
                dtype=np.float32,
            )

        queries = encode(self.query_texts, "query")
        documents = encode(self.document_texts, "document")
        hits = exact_search_numpy(self.document_ids, documents, queries, self.depth)
        rankings = {q: [d for d, _ in found] for q, found in zip(self.query_ids, hits, strict=True)}
        scores = evaluate_rankings(rankings, self.qrels, self.metrics)
        metrics = self.prefix_name_to_metrics(
            {f"cosine_{metric}": value for metric, value in scores.items()}, self.name
        )
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
