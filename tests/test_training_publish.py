"""training.publish: what a run leaves for the registry, and how metrics merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semdb.errors import SemdbError
from training.publish import deep_merge, model_folder, training_metrics, training_summary


def test_metrics_merge_recursively_so_datasets_sit_side_by_side() -> None:
    current = {"training": {"steps": 10}, "eval": {"faq/test": {"ndcg@10": 0.5, "queries": 9}}}
    update = {"eval": {"faq/test": {"ndcg@10": 0.6}, "docs/test": {"ndcg@10": 0.7}}}
    assert deep_merge(current, update) == {
        "training": {"steps": 10},
        "eval": {"faq/test": {"ndcg@10": 0.6, "queries": 9}, "docs/test": {"ndcg@10": 0.7}},
    }
    assert current["eval"]["faq/test"]["ndcg@10"] == 0.5  # the input is not changed
    assert deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}


def test_a_run_folder_or_its_model_folder_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "modules.json").write_text("[]")
    assert model_folder(tmp_path / "run") == tmp_path / "run" / "model"
    assert model_folder(tmp_path / "run" / "model") == tmp_path / "run" / "model"
    with pytest.raises(SemdbError, match="neither a training run nor"):
        model_folder(tmp_path)


def test_training_metrics_come_from_the_run_summary(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    assert training_summary(model) == {}
    summary = {
        "config": {"base_model": "/m", "hard_negatives": 1, "seed": 42},
        "result": {
            "steps": 120,
            "validation_start": 0.61,
            "best_metric": 0.66,
            "train_pairs": 900,
            "validation_queries": 50,
            "seconds": 300.0,
        },
    }
    (tmp_path / "training.json").write_text(json.dumps(summary))
    metrics = training_metrics(training_summary(model))
    assert metrics["validation_ndcg@10"] == {"before": 0.61, "best": 0.66}
    assert metrics["steps"] == 120 and metrics["hard_negatives"] == 1
