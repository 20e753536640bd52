"""semdb.evaluation.metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from semdb.evaluation.metrics import (
    evaluate_rankings,
    ndcg_at_k,
    parse_metric,
    per_query,
    recall_at_k,
    reciprocal_rank_at_k,
)


def test_one_relevant_document_at_rank_three() -> None:
    ranking = ["x", "y", "a", "z"]
    relevant = {"a": 1}
    assert ndcg_at_k(ranking, relevant, 10) == pytest.approx(1 / math.log2(4))  # 0.5
    assert ndcg_at_k(ranking, relevant, 2) == 0.0
    assert reciprocal_rank_at_k(ranking, relevant, 10) == pytest.approx(1 / 3)
    assert reciprocal_rank_at_k(ranking, relevant, 2) == 0.0
    assert recall_at_k(ranking, relevant, 3) == 1.0
    assert recall_at_k(ranking, relevant, 2) == 0.0


def test_graded_relevance_uses_linear_gain() -> None:
    # DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2/log2(2) + 1/log2(3) = 2.6309
    relevant = {"a": 2, "b": 1}
    expected = 2 / (2 + 1 / math.log2(3))
    assert ndcg_at_k(["b", "x", "a"], relevant, 10) == pytest.approx(expected)
    assert expected == pytest.approx(0.76018, abs=1e-5)
    assert ndcg_at_k(["a", "b"], relevant, 10) == pytest.approx(1.0)


def test_the_ideal_ranking_is_cut_at_k() -> None:
    # Three relevant documents, k = 2: the ideal DCG counts only two of them.
    relevant = {"a": 1, "b": 1, "c": 1}
    assert ndcg_at_k(["a", "b"], relevant, 2) == pytest.approx(1.0)
    assert recall_at_k(["a", "b"], relevant, 2) == pytest.approx(2 / 3)


def test_a_repeated_document_counts_once_and_takes_its_rank() -> None:
    relevant = {"a": 1, "b": 1}
    assert ndcg_at_k(["a", "a", "b"], relevant, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # the repeat takes rank 2, so b earns 1/log2(4), not 1/log2(3)
    assert ndcg_at_k(["a", "a", "b"], relevant, 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert recall_at_k(["a", "a"], relevant, 10) == 0.5


def test_means_over_judged_queries_with_missing_answers_as_zero() -> None:
    qrels = {
        "q1": {"a": 1},  # found at rank 1
        "q2": {"b": 1, "c": 1},  # one of two found, at rank 2
        "q3": {"d": 1},  # the system returned nothing
        "q4": {"e": 0},  # judged, nothing relevant: not counted
    }
    rankings = {"q1": ["a"], "q2": ["x", "b"], "q4": ["e"]}
    scores = per_query(rankings, qrels, ["mrr@10", "recall@10", "ndcg@10"])
    assert set(scores) == {"q1", "q2", "q3"}
    assert scores["q2"]["mrr@10"] == 0.5
    assert scores["q2"]["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    means = evaluate_rankings(rankings, qrels, ["mrr@10", "recall@10"])
    assert means["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert means["recall@10"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_metric_names_are_checked() -> None:
    assert parse_metric("nDCG@10") == ("ndcg", 10)
    for bad in ("map@10", "ndcg", "ndcg@0", "recall@x"):
        with pytest.raises(ValueError, match="unknown metric"):
            parse_metric(bad)
    with pytest.raises(ValueError, match="judge no query relevant"):
        evaluate_rankings({}, {"q": {"a": 0}})
