"""Model selection from start to end: check, search, retrain the chosen one, test once.

>>> result = select_model(pool, test, TrainConfig(output_dir=Path("runs/sel")),
...                       SelectionOptions(trials=20, study="faq", folds=3))

1. :func:`plan` checks everything that can be wrong before any training: the space (read
   already), the folds against the queries, the study's stored space (a study name used
   with another space, other folds or other data is refused).
2. Trials run (:func:`training.selection.study.run_trials`) in this process and in any
   other running the same study, with Optuna's TPE sampler and a median pruner fed by each
   fold's validation scores. The first trial of a new study is the configuration the
   other options give (what ``semdb train`` alone would run).
3. The best trial's configuration is retrained on all search queries (no validation
   held out, its number of steps) into the run folder (``model/``, ``training.json``: a run
   like any other, for ``semdb export``), scored once on the test queries, and the report
   is written (:mod:`training.selection.report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semdb.errors import SelectionError
from training.config import TrainConfig
from training.data import RetrievalSet
from training.selection.folds import check_folds, query_folds, sample_queries
from training.selection.space import SearchSpace
from training.selection.study import DEFAULT_HEARTBEAT, SCHEMA

logger = logging.getLogger(__name__)

TRIALS_DIR = "trials"


@dataclass
class SelectionOptions:
    """How to search: ``trials`` in all (over every process sharing ``study``)."""

    trials: int
    study: str
    space: SearchSpace = field(default_factory=SearchSpace.default)
    folds: int | None = None  # None: one seeded validation split (the config's fraction)
    heartbeat: int = DEFAULT_HEARTBEAT
    schema: str = SCHEMA
    url: str | None = None
    startup_trials: int | None = None  # random trials before TPE models (default: a third)


@dataclass
class Plan:
    """The checked search: where each query goes, and what the study must match."""

    parts: list[tuple[list[str], RetrievalSet]]
    signature: dict[str, Any]
    defaults: dict[str, Any]


def plan(pool: RetrievalSet, base: TrainConfig, options: SelectionOptions, margin: float) -> Plan:
    """Check the search's inputs and split the queries; no model is loaded."""
    if options.trials < 1:
        raise SelectionError(f"--search {options.trials}: give at least 1 trial", fix="--search 10")
    if not options.study or len(options.study) > 200:
        raise SelectionError("the study needs a name of 1 to 200 characters", fix="--study NAME")
    parts: list[tuple[list[str], RetrievalSet]] = []
    if options.folds is not None:
        check_folds(pool, options.folds)
        for train, validation in query_folds(pool, options.folds, seed=base.seed):
            validation = sample_queries(validation, base.max_validation_queries, seed=base.seed)
            parts.append((train.query_ids, validation))
    else:
        if not 0 < base.validation_fraction < 1 or len(pool.query_ids) < 2:
            raise SelectionError(
                "a search needs validation queries: give --validation-fraction above 0, "
                "or --folds K",
                fix="--folds 3, for example",
            )
        train, validation = pool.split(
            base.validation_fraction, seed=base.seed, max_validation=base.max_validation_queries
        )
        parts.append((train.query_ids, validation))
    if any(len(train_ids) < 2 for train_ids, _ in parts):
        raise SelectionError(
            f"{len(pool.query_ids)} queries leave a fold fewer than 2 to train on",
            fix="give more data or fewer folds",
        )
    defaults = {
        name: getattr(base, name) for name in options.space.parameters if hasattr(base, name)
    }
    defaults["negative_margin"] = margin
    signature = {
        "space": options.space.to_json(),
        "folds": options.folds,
        "validation_fraction": None if options.folds else base.validation_fraction,
        "data": {"corpus": pool.fingerprint(), "queries": len(pool.query_ids)},
        "seed": base.seed,
    }
    return Plan(parts, signature, options.space.within(defaults))


@dataclass
class SelectionResult:
    """What this process did, and the report (None when another process retrains)."""

    trials_run_here: int
    report: dict[str, Any] | None
    run_dir: Path
    seconds: float


def open_search(base: TrainConfig, options: SelectionOptions, checked: Plan) -> tuple[Any, Any]:
    """(storage, study): the study created or loaded, its space checked."""
    import optuna

    from training.selection.study import open_storage, open_study

    storage = open_storage(options.url, schema=options.schema, heartbeat=options.heartbeat)
    startup = options.startup_trials or max(2, min(10, options.trials // 3))
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=startup, constant_liar=True, seed=_sampler_seed(base.seed)
    )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    study = open_study(
        storage,
        options.study,
        checked.signature,
        sampler=sampler,
        pruner=pruner,
        first_trial=checked.defaults,
    )
    return storage, study


def _sampler_seed(seed: int) -> int:
    """Each process its own stream: two processes seeded alike would propose the same
    random configurations one after the other."""
    import os

    return (seed * 1_000_003 + os.getpid() * 7919 + time.time_ns() % 1_000_003) % (2**31)


def select_model(
    pool: RetrievalSet,
    test: RetrievalSet | None,
    base: TrainConfig,
    options: SelectionOptions,
    *,
    mining: Any = None,
    test_source: str = "test",
    retrain: bool = True,
) -> SelectionResult:
    """Search, retrain the chosen configuration on all of ``pool``, score it on ``test``."""
    from training.fine_tune import MiningOptions
    from training.selection.objective import NegativePool, Objective
    from training.selection.study import run_trials

    started = time.perf_counter()
    mining = mining or MiningOptions(url=options.url)
    checked = plan(pool, base, options, mining.margin)
    storage, study = open_search(base, options, checked)
    work = base.output_dir / TRIALS_DIR
    work.mkdir(parents=True, exist_ok=True)
    most = _largest(options.space, "hard_negatives", base.hard_negatives)
    negatives = NegativePool(pool, base.base_model, mining, most)
    objective = Objective(options.space, base, checked.parts, negatives, work, mining.margin)
    ran = run_trials(study, storage, objective, options.trials)
    if not retrain:
        return SelectionResult(ran, None, base.output_dir, time.perf_counter() - started)
    return SelectionResult(
        ran,
        finish(study, storage, pool, test, base, options, negatives, test_source, started),
        base.output_dir,
        time.perf_counter() - started,
    )


def _largest(space: SearchSpace, name: str, fallback: int) -> int:
    parameter = space.parameters[name]
    if parameter.value is not None:
        return int(parameter.value)
    if parameter.choices is not None:
        return int(max(parameter.choices))
    return int(parameter.high or fallback)


def finish(
    study: Any,
    storage: Any,
    pool: RetrievalSet,
    test: RetrievalSet | None,
    base: TrainConfig,
    options: SelectionOptions,
    negatives: Any,
    test_source: str,
    started: float,
) -> dict[str, Any] | None:
    """Retrain the best trial's configuration on all of ``pool``, test it, write the report.

    One process per study does it; the others return None.
    """
    from optuna.trial import TrialState

    from training.selection.objective import configure
    from training.selection.report import REPORT_FILE, build_report, write_report
    from training.selection.study import claim_final, count_trials, finish_final
    from training.trainer import train

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise SelectionError(
            f"the study {options.study!r} has no complete trial (all were pruned or failed)",
            fix="run more trials (--search N with a larger N), or widen the search space",
        )
    finished = count_trials(study).finished
    if not claim_final(study, storage, str(base.output_dir), finished):
        logger.info("another process retrains the chosen configuration")
        return None
    chosen = study.best_trial
    values = dict(chosen.user_attrs["config"])
    config = configure(base, values, base.output_dir)
    config = dataclasses.replace(config, validation_fraction=0.0)
    data = negatives.get(values["hard_negatives"], values["negative_margin"])
    trained_at = time.perf_counter()
    result = train(config, data, None)
    retrain_seconds = time.perf_counter() - trained_at
    test_scores = None
    if test is not None and test.query_ids:
        test_scores = score_test(result.model_dir, test, options.url)
    report = build_report(
        study,
        chosen=chosen.number,
        folds=options.folds,
        space=options.space,
        final={
            "config": config.to_json(),
            "result": result.to_json(),
            "retrain_seconds": round(retrain_seconds, 1),
        },
        test=test_scores,
        test_source=test_source,
        seconds=time.perf_counter() - started,
    )
    write_report(report, base.output_dir)
    finish_final(
        study,
        {
            "chosen": chosen.number,
            "report": str(base.output_dir / REPORT_FILE),
            "test_ndcg@10": (test_scores or {}).get("metrics", {}).get("ndcg@10"),
        },
    )
    summary_file = base.output_dir / "training.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        summary["selection"] = {k: report[k] for k in ("study", "chosen", "test")}
        summary_file.write_text(json.dumps(summary, indent=2))
    return report


def score_test(model_dir: Path, test: RetrievalSet, url: str | None) -> dict[str, Any]:
    """The test scores of the retrained model (PyTorch encoder, exact pgvector search)."""
    from training.encoders import SentenceTransformerEncoder
    from training.evaluate import evaluate

    encoder = SentenceTransformerEncoder.load(model_dir)
    return evaluate(encoder, test, model=str(model_dir), url=url).to_json()
