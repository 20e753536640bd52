"""training.trainer with the tiny model on tiny data: it learns, logs, checkpoints, resumes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

from semdb.errors import SemdbError
from semdb.evaluation.metrics import DEFAULT_METRICS
from training.config import TrainConfig
from training.data import RetrievalSet
from training.encoders import SentenceTransformerEncoder
from training.evaluate import evaluate
from training.trainer import (
    PRIMARY_METRIC,
    TrainResult,
    train,
    training_rows,
    validation_corpus,
)

from .tiny_retrieval import tiny_retrieval_set


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and they spin when the machine is busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(output: Path, base: Path, **options: object) -> TrainConfig:
    values: dict[str, object] = {
        "batch_size": 16,
        "max_steps": 20,
        "learning_rate": 1e-3,
        "evaluations": 2,
        "validation_corpus_size": 200,
        "logging_steps": 5,
    }
    values.update(options)
    return TrainConfig(output_dir=output, base_model=str(base), **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def split() -> tuple[RetrievalSet, RetrievalSet]:
    return tiny_retrieval_set(160).split(0.2, seed=1)


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path,
    split: tuple[RetrievalSet, RetrievalSet],
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainResult:
    train_set, validation_set = split
    output = tmp_path_factory.mktemp("run")
    options = {"max_steps": 20, "evaluations": 2, "max_seq_length": 16}
    return train(config(output, tiny_model_dir, **options), train_set, validation_set)


def test_training_lifts_the_validation_ndcg(trained: TrainResult) -> None:
    assert trained.steps == 20
    assert trained.validation_start is not None and trained.best_metric is not None
    # The tiny model's WordPiece vocabulary is trained anew each session and ties in its pair
    # counts break either way, so the start varies (0.61-0.64); the lift is 0.045-0.08.
    assert trained.best_metric > trained.validation_start + 0.025
    assert (trained.model_dir / "modules.json").is_file()


def test_metrics_log_has_losses_and_validation(trained: TrainResult) -> None:
    records = [json.loads(line) for line in trained.metrics_log.read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    validations = [(r["step"], r[PRIMARY_METRIC]) for r in records if PRIMARY_METRIC in r]
    assert losses[-1] < losses[0]
    assert [step for step, _ in validations] == [0, 10, 20]  # before training, then each half
    assert all("elapsed_s" in r and "epoch" in r for r in records)


def test_validation_scores_as_semdb_eval_does(
    trained: TrainResult,
    tiny_model_dir: Path,
    split: tuple[RetrievalSet, RetrievalSet],
    tmp_path: Path,
) -> None:
    """One evaluator: the validation logged before training (the base model) has the metrics
    of `semdb eval` (semdb.evaluation.metrics) with the values evaluate() gives the same
    model on the same queries and validation corpus."""
    records = [json.loads(line) for line in trained.metrics_log.read_text().splitlines()]
    first = next(r for r in records if PRIMARY_METRIC in r)
    prefix = "eval_validation_cosine_"
    logged = {k.removeprefix(prefix): v for k, v in first.items() if k.startswith(prefix)}
    assert set(logged) == set(DEFAULT_METRICS)

    _, validation = split
    seed = config(tmp_path, tiny_model_dir).seed
    corpus = validation_corpus(validation, 200, seed=seed)
    data = RetrievalSet(queries=validation.queries, corpus=corpus, qrels=validation.qrels)
    encoder = SentenceTransformerEncoder.load(
        tiny_model_dir, query_max_tokens=16, document_max_tokens=16
    )
    expected = evaluate(encoder, data, model="base", search="numpy").metrics
    assert logged == pytest.approx(expected, abs=1e-5)


def test_summary_and_model_keep_the_configuration(trained: TrainResult) -> None:
    summary = json.loads((trained.model_dir.parent / "training.json").read_text())
    assert summary["config"]["max_steps"] == 20 and summary["result"]["steps"] == 20
    assert json.loads((trained.model_dir / "semdb_training.json").read_text()) == summary
    # the saved model keeps the base model's inference length, not the training truncation
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(trained.model_dir)).max_seq_length == 64


def test_an_earlier_run_is_not_overwritten(
    trained: TrainResult, tiny_model_dir: Path, split: tuple[RetrievalSet, RetrievalSet]
) -> None:
    with pytest.raises(SemdbError, match="holds an earlier training run.*--resume"):
        train(config(trained.model_dir.parent, tiny_model_dir), *split)


def test_resume_continues_exactly_where_it_stopped(
    tiny_model_dir: Path, split: tuple[RetrievalSet, RetrievalSet], tmp_path: Path
) -> None:
    train_set, _ = split
    short = {"max_steps": 8, "eval_steps": 4}
    whole = train(config(tmp_path / "whole", tiny_model_dir, **short), train_set, None)
    stopped = train(
        config(tmp_path / "stopped", tiny_model_dir, **short, time_budget_minutes=1e-9),
        train_set,
        None,
    )
    assert stopped.steps == 1  # the budget ran out at once: checkpoint-1 saved
    resumed = train(
        config(tmp_path / "stopped", tiny_model_dir, **short, resume=True), train_set, None
    )
    assert whole.steps == resumed.steps == 8
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "stopped" / "model" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    steps = [json.loads(x)["step"] for x in resumed.metrics_log.read_text().splitlines()]
    assert steps[0] == 1 and steps[-1] == 8  # the log goes on from the first run's lines


def test_early_stopping_ends_a_run_that_stops_improving(
    tiny_model_dir: Path, split: tuple[RetrievalSet, RetrievalSet], tmp_path: Path
) -> None:
    # learning rate 0: the validation score never moves, so patience 1 stops at the 2nd check
    result = train(
        config(
            tmp_path / "flat",
            tiny_model_dir,
            learning_rate=0.0,
            max_steps=40,
            eval_steps=4,
            early_stopping_patience=1,
        ),
        *split,
    )
    assert result.steps == 8


def test_cached_loss_with_mined_style_negatives_trains(
    tiny_model_dir: Path, split: tuple[RetrievalSet, RetrievalSet], tmp_path: Path
) -> None:
    train_set, validation_set = split
    result = train(
        config(
            tmp_path / "cached", tiny_model_dir, max_steps=4, mini_batch_size=4, hard_negatives=1
        ),
        train_set,
        validation_set,
    )
    assert result.steps == 4
    summary = json.loads((tmp_path / "cached" / "training.json").read_text())
    assert summary["config"]["mini_batch_size"] == 4


def test_training_rows_top_up_negatives_with_random_documents() -> None:
    data = RetrievalSet(
        queries={"q1": "a", "q2": "b"},
        corpus={"d1": "A", "d2": "B", "d3": "C"},
        qrels={"q1": {"d1": 1}, "q2": {"d2": 1}},
        negatives={"q1": ["d3"]},
    )
    rows = training_rows(data, 2, seed=0)
    assert rows["anchor"] == ["a", "b"] and rows["positive"] == ["A", "B"]
    assert rows["negative_1"][0] == "C"  # the known negative first
    for index, positive in enumerate(rows["positive"]):
        negatives = {rows["negative_1"][index], rows["negative_2"][index]}
        assert positive not in negatives and len(negatives) == 2
    assert training_rows(data, 0, seed=0).keys() == {"anchor", "positive"}
    with pytest.raises(SemdbError, match="too few documents"):
        training_rows(data, 3, seed=0)
