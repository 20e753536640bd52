"""Scoring retrieval: the one evaluator of semdb and its training package.

- :mod:`semdb.evaluation.metrics`: nDCG@k, MRR@k and Recall@k of rankings against relevance
  judgements, trec_eval conventions (pure functions);
- :mod:`semdb.evaluation.beir`: reading a BEIR-layout folder (``corpus.jsonl``,
  ``queries.jsonl``, ``qrels/<split>.tsv``).

``semdb quickstart --data``, ``semdb eval`` and training's validation all score with
:func:`~semdb.evaluation.metrics.evaluate_rankings`. The package imports neither the
database driver nor torch.
"""

from semdb.evaluation.beir import BeirSplit, load_beir, load_beir_corpus, qrels_splits
from semdb.evaluation.metrics import DEFAULT_METRICS, evaluate_rankings, parse_metric, per_query

__all__ = [
    "DEFAULT_METRICS",
    "BeirSplit",
    "evaluate_rankings",
    "load_beir",
    "load_beir_corpus",
    "parse_metric",
    "per_query",
    "qrels_splits",
]
