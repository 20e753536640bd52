"""Fine-tune a sentence-transformers encoder contrastively on a :class:`RetrievalSet`.

The loss is MultipleNegativesRankingLoss: for each query, its document must score above
every other document of the batch (in-batch negatives) and above the query's own mined
negatives (extra columns). With ``mini_batch_size`` below ``batch_size`` the cached variant
(GradCache) is used: the contrastive batch stays large while memory holds only a mini-batch.

Around it, sentence-transformers' trainer (the Hugging Face Trainer) gives AdamW with linear
warmup and decay, a seed, AMP on CUDA (never on CPU), checkpoints and resume, early stopping on
the validation nDCG@10 (scored by :mod:`training.validation`: semdb's one evaluator), a
progress bar, and DistributedDataParallel when started by torchrun (gloo on CPU, NCCL on
CUDA; in-batch negatives are then gathered from every process).
:class:`MetricsLog` writes every logged value to ``metrics.jsonl``.

Layout of ``output_dir``::

    checkpoints/checkpoint-<step>/   the trainer's checkpoints (resume from the last one)
    model/                           the best model, a sentence-transformers folder
    metrics.jsonl                    one JSON object per log line (loss, lr, validation)
    training.json                    the configuration and a summary of the run
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import TrainerCallback

from semdb.errors import SemdbError
from training.config import Amp, TrainConfig, check_output_dir, world
from training.data import RetrievalSet

logger = logging.getLogger(__name__)

VALIDATION_NAME = "validation"
PRIMARY_METRIC = f"eval_{VALIDATION_NAME}_cosine_ndcg@10"


@dataclass
class TrainResult:
    """Where the fine-tuned model is, and how the run went."""

    model_dir: Path
    steps: int
    seconds: float
    samples_per_second: float
    best_metric: float | None
    best_checkpoint: str | None
    validation_start: float | None
    train_pairs: int
    validation_queries: int
    metrics_log: Path
    world_size: int = 1
    replicas_in_sync: bool | None = None  # under torchrun: every process ended with equal weights
    blend: dict[str, Any] | None = None  # the blend chosen after training (training.blend)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model_dir"] = str(self.model_dir)
        data["metrics_log"] = str(self.metrics_log)
        return data


def training_rows(data: RetrievalSet, hard_negatives: int, *, seed: int) -> dict[str, list[str]]:
    """Columns for the trainer: anchor, positive, negative_1..n (one row per relevant pair).

    A query with fewer known negatives than ``hard_negatives`` is topped up with random
    documents not relevant to it (seeded), so that every row has the same columns.
    """
    rng = random.Random(seed)
    corpus_ids = list(data.corpus)
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    for index in range(hard_negatives):
        columns[f"negative_{index + 1}"] = []
    for query_id in data.query_ids:
        relevant = data.qrels[query_id]
        negatives = [d for d in data.negatives.get(query_id, []) if d not in relevant]
        if hard_negatives > len(corpus_ids) - len(relevant):
            raise SemdbError(
                f"the corpus has too few documents for {hard_negatives} negatives per query "
                f"(query {query_id!r} has {len(corpus_ids) - len(relevant)} non-relevant ones)",
                fix="ask for fewer hard negatives",
            )
        for document_id in relevant:
            chosen = negatives[:hard_negatives]
            while len(chosen) < hard_negatives:
                candidate = rng.choice(corpus_ids)
                if candidate not in relevant and candidate not in chosen:
                    chosen.append(candidate)
            columns["anchor"].append(data.queries[query_id])
            columns["positive"].append(data.corpus[document_id])
            for index, negative in enumerate(chosen):
                columns[f"negative_{index + 1}"].append(data.corpus[negative])
    return columns


def validation_corpus(data: RetrievalSet, size: int, *, seed: int) -> dict[str, str]:
    """The validation queries' documents plus random others, ``size`` in all (or fewer)."""
    needed = {d for q in data.query_ids for d in data.qrels[q]}
    others = sorted(d for d in data.corpus if d not in needed)
    random.Random(seed).shuffle(others)
    chosen = needed | set(others[: max(0, size - len(needed))])
    return {d: data.corpus[d] for d in data.corpus if d in chosen}


def amp_dtype(amp: Amp) -> Literal["fp16", "bf16"] | None:
    """The mixed precision to train in: none on the CPU, bf16 where the GPU has it, else fp16."""
    import torch

    if amp == "off" or not torch.cuda.is_available():
        if amp in ("fp16", "bf16"):
            logger.warning("AMP (%s) needs CUDA; training in fp32 on the CPU", amp)
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return "bf16"
    return "fp16"


def train(
    config: TrainConfig,
    train_data: RetrievalSet,
    validation_data: RetrievalSet | None,
    *,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Fine-tune ``config.base_model`` on ``train_data``; early-stop on ``validation_data``.

    ``callbacks`` (``transformers.TrainerCallback``) join the run's own, for example to
    report each validation score to a hyperparameter search."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import EarlyStoppingCallback, set_seed

    from training.validation import ValidationEvaluator

    rank, world_size = world()
    resume_from = check_output_dir(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)

    model = SentenceTransformer(config.base_model, device=None, local_files_only=True)
    inference_max_length = model.max_seq_length
    if config.max_seq_length:
        model.max_seq_length = min(config.max_seq_length, inference_max_length)

    rows = training_rows(train_data, config.hard_negatives, seed=config.seed)
    if len(rows["anchor"]) < 2:
        raise SemdbError(
            f"{len(rows['anchor'])} training pair(s): contrastive training needs at least 2",
            fix="give more (query, document) pairs",
        )
    batch_size = min(config.batch_size, len(rows["anchor"]))
    dataset = Dataset.from_dict(rows)
    steps_per_epoch = max(1, len(rows["anchor"]) // (batch_size * world_size))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    eval_steps = config.eval_steps or max(1, total_steps // max(1, config.evaluations))

    evaluator = None
    if validation_data is not None and validation_data.query_ids:
        corpus = validation_corpus(validation_data, config.validation_corpus_size, seed=config.seed)
        evaluator = ValidationEvaluator(
            queries={q: validation_data.queries[q] for q in validation_data.query_ids},
            corpus=corpus,
            qrels={q: validation_data.qrels[q] for q in validation_data.query_ids},
            name=VALIDATION_NAME,
        )

    gather = world_size > 1
    loss: Any
    if config.mini_batch_size and config.mini_batch_size < batch_size:
        loss = CachedMultipleNegativesRankingLoss(
            model,
            scale=config.scale,
            mini_batch_size=config.mini_batch_size,
            gather_across_devices=gather,
        )
    else:
        loss = MultipleNegativesRankingLoss(model, scale=config.scale, gather_across_devices=gather)

    import torch

    checkpoints = config.output_dir / "checkpoints"
    precision = amp_dtype(config.amp)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=total_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        seed=config.seed,
        data_seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_drop_last=True,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=eval_steps,
        eval_on_start=evaluator is not None and resume_from is None,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model=PRIMARY_METRIC if evaluator else None,
        greater_is_better=True,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=False,
        # On the CPU, accelerate runs DistributedDataParallel (MULTI_CPU, gloo) only with use_cpu.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world_size > 1 and not torch.cuda.is_available() else None,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
    )
    log_path = config.output_dir / "metrics.jsonl"
    metrics_log = MetricsLog(log_path, append=resume_from is not None)
    run_callbacks: list[Any] = [metrics_log, *callbacks]
    if evaluator is not None and config.early_stopping_patience:
        run_callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))
    if config.time_budget_minutes:
        run_callbacks.append(TimeBudget(config.time_budget_minutes * 60))

    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=run_callbacks,
    )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started

    in_sync = replicas_in_sync(model) if world_size > 1 else None
    if in_sync is False:
        logger.error("the processes ended with different weights: gradients were not synchronised")
    model_dir = config.output_dir / "model"
    state = trainer.state
    if trainer.is_world_process_zero():
        model.max_seq_length = inference_max_length
        model.save(str(model_dir))
    result = TrainResult(
        model_dir=model_dir,
        steps=state.global_step,
        seconds=round(seconds, 1),
        samples_per_second=round(float(output.metrics.get("train_samples_per_second", 0.0)), 2),
        best_metric=state.best_metric,
        best_checkpoint=state.best_model_checkpoint,
        validation_start=metrics_log.first_value(PRIMARY_METRIC),
        train_pairs=len(rows["anchor"]),
        validation_queries=len(validation_data.query_ids) if validation_data else 0,
        metrics_log=log_path,
        world_size=world_size,
        replicas_in_sync=in_sync,
    )
    if rank == 0:
        summary = {"config": config.to_json(), "result": result.to_json()}
        (config.output_dir / "training.json").write_text(json.dumps(summary, indent=2))
        if model_dir.is_dir():
            (model_dir / "semdb_training.json").write_text(json.dumps(summary, indent=2))
    return result


def replicas_in_sync(model: Any) -> bool:
    """Under torchrun: whether every process holds the same weights (DDP kept them in sync)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    with torch.no_grad():
        checksum = torch.stack(
            [p.detach().double().sum() for p in model.parameters()]
            + [p.detach().double().abs().sum() for p in model.parameters()]
        ).sum()
    device = next(model.parameters()).device
    mine = checksum.reshape(1).to(device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return all(bool(torch.equal(g, gathered[0])) for g in gathered)


class MetricsLog(TrainerCallback):
    """Appends every value the trainer logs (loss, learning rate, validation) to a JSONL file."""

    def __init__(self, path: Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.started = time.time()
        if not append and self.path.exists():
            self.path.unlink()
        self._first: dict[str, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        if not logs:
            return
        for key, value in logs.items():
            if isinstance(value, int | float):
                self._first.setdefault(key, float(value))
        if not state.is_world_process_zero:
            return
        record = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "elapsed_s": round(time.time() - self.started, 1),
            **{k: v for k, v in logs.items() if isinstance(v, int | float | str)},
        }
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def first_value(self, key: str) -> float | None:
        return self._first.get(key)


class TimeBudget(TrainerCallback):
    """Stops training after a wall-clock budget, evaluating and saving the last step first.

    Under torchrun the processes agree (the first to run out stops them all at the same step).
    """

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.stopping = False

    def _spent(self) -> bool:
        import torch
        import torch.distributed as dist

        spent = time.monotonic() >= self.deadline
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([1.0 if spent else 0.0])
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            spent = bool(flag.item() > 0)
        return spent

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        if not self.stopping and self._spent():
            self.stopping = True
            logger.warning("time budget spent at step %d: stopping", state.global_step)
            control.should_training_stop = True
            if args.eval_strategy != "no":
                control.should_evaluate = True
            control.should_save = True
        return control
