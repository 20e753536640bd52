"""training.publish: what a run leaves for the registry, and how metrics merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from semdb.db import libpq_uri
from semdb.errors import SemdbError
from training.publish import deep_merge, model_folder, training_metrics, training_summary

from .tiny_retrieval import tiny_retrieval_set


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


def test_a_run_is_exported_registered_and_scored_through_the_onnx_embedder(
    tiny_model_dir: Path, tmp_path: Path, engine: sa.Engine, database_url: URL
) -> None:
    pytest.importorskip("semdb.embed", reason="the ONNX embedder is not merged yet")
    pytest.importorskip("training.export", reason="the exporter is not merged yet")
    from semdb.bundles.registry import get_registered
    from training.encoders import SentenceTransformerEncoder, load_encoder
    from training.evaluate import evaluate
    from training.publish import publish_run

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    summary = {
        "config": {"seed": 1},
        "result": {"steps": 3, "validation_start": 0.4, "best_metric": 0.5},
    }
    (run / "training.json").write_text(json.dumps(summary))
    url = libpq_uri(database_url)
    published = publish_run(
        run, name="tiny-published", version="1", out=tmp_path / "bundle", url=url
    )
    assert published.registered
    row = get_registered(engine, "tiny-published", "1")
    assert row.metrics["training"]["validation_ndcg@10"] == {"before": 0.4, "best": 0.5}

    data = tiny_retrieval_set(60, offset=300)
    encoder = load_encoder(published.bundle_dir, precision="fp32")
    onnx = evaluate(encoder, data, url=url, progress=True, cache_dir=tmp_path / "cache")
    torch = evaluate(SentenceTransformerEncoder.load(tiny_model_dir), data, url=url)
    assert onnx.encoder.startswith("onnx fp32") and torch.encoder.startswith("torch")
    assert onnx.metrics["ndcg@10"] == pytest.approx(torch.metrics["ndcg@10"], abs=0.01)

    again = publish_run(run, name="tiny-published", version="1", out=tmp_path / "b2", url=url)
    assert again.metrics["training"]["steps"] == 3  # same weights: registering is idempotent
