"""Information-retrieval metrics from rankings and relevance judgements (pure functions).

``rankings[query_id]`` is the list of document ids a system returned, best first;
``qrels[query_id][document_id]`` is a relevance grade (> 0 means relevant). Conventions
follow trec_eval (as BEIR reports them):

- nDCG@k: gain = grade, discount = 1 / log2(rank + 1); the ideal ranking sorts all of the
  query's judged grades, best first, cut at k.
- MRR@k: 1 / rank of the first relevant document within the top k, else 0.
- Recall@k: relevant documents in the top k / all relevant documents of the query.

Each metric is the mean over the queries in ``qrels`` that have a relevant document; a query
the system did not answer counts as 0. A document id repeated in a ranking counts at its
first rank only; the repeat takes a rank and earns nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Rankings = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, float]]  # grades: ints in BEIR, any number works

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def _ranked(ranking: Sequence[str], k: int) -> list[tuple[int, str]]:
    """(rank, document id) of the top k positions; a repeated id keeps only its first rank."""
    seen: set[str] = set()
    top: list[tuple[int, str]] = []
    for rank, document_id in enumerate(ranking[:k], start=1):
        if document_id not in seen:
            seen.add(document_id)
            top.append((rank, document_id))
    return top


def ndcg_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """nDCG@k of one query."""
    dcg = sum(
        relevant.get(document_id, 0) / math.log2(rank + 1)
        for rank, document_id in _ranked(ranking, k)
    )
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def reciprocal_rank_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """1 / rank of the first relevant document in the top k (0 when there is none)."""
    for rank, document_id in _ranked(ranking, k):
        if relevant.get(document_id, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Share of the query's relevant documents found in the top k."""
    wanted = {d for d, grade in relevant.items() if grade > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(d for _, d in _ranked(ranking, k))) / len(wanted)


_FUNCTIONS = {"ndcg": ndcg_at_k, "mrr": reciprocal_rank_at_k, "recall": recall_at_k}


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; a clear ValueError for anything else."""
    kind, _, cut = name.lower().partition("@")
    if kind not in _FUNCTIONS or not cut.isdigit() or int(cut) < 1:
        raise ValueError(
            f"unknown metric {name!r}: use ndcg@K, mrr@K or recall@K with K a positive integer"
        )
    return kind, int(cut)


def per_query(
    rankings: Rankings, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
    """Each metric for each judged query: ``{query_id: {metric: value}}``."""
    parsed = [(name, *parse_metric(name)) for name in metrics]
    result: dict[str, dict[str, float]] = {}
    for query_id, relevant in qrels.items():
        if not any(grade > 0 for grade in relevant.values()):
            continue
        ranking = rankings.get(query_id, ())
        result[query_id] = {
            name: _FUNCTIONS[kind](ranking, relevant, cut) for name, kind, cut in parsed
        }
    return result


def evaluate_rankings(
    rankings: Rankings, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """The mean of each metric over the judged queries: ``{"ndcg@10": 0.69, ...}``."""
    scores = per_query(rankings, qrels, metrics)
    if not scores:
        raise ValueError("the qrels judge no query relevant to any document")
    return {name: sum(s[name] for s in scores.values()) / len(scores) for name in metrics}
