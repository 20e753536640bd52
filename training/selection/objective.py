"""One trial: train the sampled configuration on each fold, report, prune, score.

Each fold's run is an ordinary :func:`training.trainer.train` run in
``<run>/trials/trial-<n>/fold-<k>`` (its metrics.jsonl and training.json stay; its
checkpoints and model are deleted once scored). Every validation score is reported to the
trial (step ``100 k + i``: the i-th validation of fold k, so trials are compared fold by
fold) and the pruner may stop the trial after any of them. The trial's value is the mean
of the folds' best validation nDCG@10; their standard deviation and each fold's score are
kept in the trial's user attributes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from training.config import TrainConfig
from training.data import RetrievalSet
from training.fine_tune import MiningOptions
from training.selection.space import SearchSpace
from training.trainer import PRIMARY_METRIC, train

logger = logging.getLogger(__name__)

FOLD_STRIDE = 100  # intermediate step of fold k's i-th validation: 100 k + i
TRAIN_FIELDS = (
    "learning_rate",
    "warmup_ratio",
    "batch_size",
    "max_steps",
    "scale",
    "hard_negatives",
    "max_seq_length",
)


def configure(base: TrainConfig, values: dict[str, Any], output_dir: Path) -> TrainConfig:
    """``base`` with a trial's values (the margin is a mining setting, not a config field)."""
    changes = {name: values[name] for name in TRAIN_FIELDS if name in values}
    return dataclasses.replace(base, output_dir=output_dir, resume=False, overwrite=True, **changes)


class NegativePool:
    """Mined negatives of the search data, once per margin (mined with the largest count
    the space allows; a trial takes the hardest ``count`` of them, the same ones a mining
    for ``count`` would keep)."""

    def __init__(
        self, data: RetrievalSet, base_model: str, mining: MiningOptions, most: int
    ) -> None:
        self.data = data
        self.base_model = base_model
        self.mining = mining
        self.most = max(1, most)
        self._by_margin: dict[float, RetrievalSet] = {}
        self._encoder: Any = mining.encoder

    def get(self, count: int, margin: float) -> RetrievalSet:
        if count <= 0:
            return self.data
        key = round(float(margin), 6)
        if key not in self._by_margin:
            from training.encoders import SentenceTransformerEncoder
            from training.negatives import mine_hard_negatives

            if self._encoder is None:
                self._encoder = SentenceTransformerEncoder.load(self.base_model)
            mined, report = mine_hard_negatives(
                self._encoder,
                self.data,
                count=max(self.most, count),
                depth=self.mining.depth,
                margin=key,
                url=self.mining.url,
                cache_dir=self.mining.cache_dir,
            )
            logger.info("negatives at margin %g: %s", key, report)
            self._by_margin[key] = mined
        return self._by_margin[key]


class TrialReporter(TrainerCallback):  # type: ignore[misc]
    """Reports each validation nDCG@10 to the trial and stops the run when it is pruned."""

    def __init__(self, trial: Any, fold: int) -> None:
        self.trial = trial
        self.step = fold * FOLD_STRIDE
        self.pruned = False

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **_: Any
    ) -> Any:
        value = (metrics or {}).get(PRIMARY_METRIC)
        if value is None:
            return control
        self.trial.report(float(value), self.step)
        self.step += 1
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True
        return control


@dataclass
class Objective:
    """What each trial runs: ``parts`` are the (train, validation) query ids of each fold."""

    space: SearchSpace
    base: TrainConfig
    parts: list[tuple[list[str], RetrievalSet]]
    negatives: NegativePool
    work_dir: Path
    default_margin: float = 0.05

    def values(self, trial: Any) -> dict[str, Any]:
        values = self.space.suggest(trial)
        values.setdefault("negative_margin", self.default_margin)
        return values

    def __call__(self, trial: Any) -> float:
        import optuna

        values = self.values(trial)
        trial.set_user_attr("config", values)
        trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")
        data = self.negatives.get(values["hard_negatives"], values["negative_margin"])
        scores: list[float] = []
        steps: list[int] = []
        started = time.perf_counter()
        for fold, (train_ids, validation) in enumerate(self.parts):
            folder = self.work_dir / f"trial-{trial.number}" / f"fold-{fold}"
            config = configure(self.base, values, folder)
            reporter = TrialReporter(trial, fold)
            result = train(config, data.subset(train_ids), validation, callbacks=[reporter])
            for owned in ("checkpoints", "model"):
                shutil.rmtree(folder / owned, ignore_errors=True)
            steps.append(result.steps)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
            if reporter.pruned:
                trial.set_user_attr("fold_scores", scores)
                raise optuna.TrialPruned(f"pruned in fold {fold} at step {result.steps}")
            if result.best_metric is None:
                raise RuntimeError(f"fold {fold} of trial {trial.number} has no validation score")
            scores.append(float(result.best_metric))
            trial.set_user_attr("fold_scores", scores)
        trial.set_user_attr("steps", steps)
        trial.set_user_attr("std", statistics.pstdev(scores) if len(scores) > 1 else None)
        return statistics.fmean(scores)
