"""One call from the user's data to a fine-tuned model: load, dedupe, split, mine, train.

>>> result = fine_tune("SELECT question, answer FROM faq", TrainConfig(output_dir=Path("runs/faq")))

What ``semdb train`` runs. Under torchrun every process calls it with the same arguments:
they load and split the data identically (seeded), the first process mines the hard
negatives and writes them to ``output_dir/negatives.json``, the others read that file, and
the trainer runs DistributedDataParallel.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semdb.errors import BlendError, SemdbError
from training.blend import ALPHAS, DEFAULT_BOUND, check_bound
from training.config import TrainConfig, check_output_dir, world
from training.data import RetrievalSet, load_source
from training.encoders import encoder_fingerprint
from training.trainer import TrainResult, train

logger = logging.getLogger(__name__)

NEGATIVES_FILE = "negatives.json"


@dataclass
class MiningOptions:
    """How hard negatives are mined (only when ``TrainConfig.hard_negatives`` > 0)."""

    depth: int = 30
    margin: float = 0.05
    encoder: Any = None  # an Encoder; default: the base model (PyTorch)
    cache_dir: Path | None = None
    url: str | None = None


@dataclass
class BlendOptions:
    """After training, blend the fine-tuned weights with the base's and choose how much
    (:mod:`training.blend`): scored on the in-domain validation queries and on ``general``
    (name -> set: data from other domains the model must not forget)."""

    general: dict[str, RetrievalSet]
    bound: float = DEFAULT_BOUND
    alphas: tuple[float, ...] = ALPHAS
    queries: int = 300  # at most, per general set
    corpus: int = 1000  # documents per general set: the queries' own and random others
    max_tokens: int | None = None  # truncate texts while scoring the curve (None: the model's)

    def __post_init__(self) -> None:
        check_bound(self.bound)
        if not self.general:
            raise BlendError(
                "blending needs at least one general set to measure forgetting on",
                fix="name one: --general ./other-beir-folder",
            )


def prepare_data(
    source: str | RetrievalSet, config: TrainConfig, *, split: str = "train", url: str | None = None
) -> tuple[RetrievalSet, RetrievalSet | None]:
    """Load and deduplicate the data, then split it (train, validation) with the config's seed."""
    data = source if isinstance(source, RetrievalSet) else load_source(source, split=split, url=url)
    data, report = data.deduplicated()
    logger.info("training data: %d pairs, %d queries; %s", len(data), len(data.queries), report)
    if config.validation_fraction <= 0:
        return data, None
    train_set, validation_set = data.split(
        config.validation_fraction, seed=config.seed, max_validation=config.max_validation_queries
    )
    if not validation_set.query_ids:
        return train_set, None
    return train_set, validation_set


def add_hard_negatives(
    train_set: RetrievalSet, config: TrainConfig, mining: MiningOptions
) -> RetrievalSet:
    """``train_set`` with mined negatives: mined by the first process, shared through a file."""
    path = config.output_dir / NEGATIVES_FILE
    rank, world_size = world()
    fingerprint = {
        "corpus": train_set.fingerprint(),
        "queries": len(train_set.query_ids),
        "count": config.hard_negatives,
        "depth": mining.depth,
        "margin": mining.margin,
        "model": config.base_model
        if mining.encoder is None
        else encoder_fingerprint(mining.encoder) or type(mining.encoder).__name__,
    }
    if rank == 0 and not _negatives_file_matches(path, fingerprint):
        from training.encoders import SentenceTransformerEncoder
        from training.negatives import mine_hard_negatives

        encoder = mining.encoder or SentenceTransformerEncoder.load(
            config.base_model, progress=True
        )
        mined, report = mine_hard_negatives(
            encoder,
            train_set,
            count=config.hard_negatives,
            depth=mining.depth,
            margin=mining.margin,
            url=mining.url,
            cache_dir=mining.cache_dir,
            progress=True,
        )
        config.output_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(
            json.dumps(
                {
                    "fingerprint": fingerprint,
                    "report": report.to_json(),
                    "negatives": mined.negatives,
                }
            )
        )
        partial.replace(path)
    elif world_size > 1:
        _wait_for(path, fingerprint)
    saved = json.loads(path.read_text())
    logger.info("hard negatives: %s", saved["report"])
    return train_set.with_negatives(saved["negatives"])


def _negatives_file_matches(path: Path, fingerprint: dict[str, Any]) -> bool:
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text()).get("fingerprint") == fingerprint)
    except (OSError, json.JSONDecodeError):
        return False


def _wait_for(path: Path, fingerprint: dict[str, Any], timeout: float = 6 * 3600) -> None:
    deadline = time.monotonic() + timeout
    while not _negatives_file_matches(path, fingerprint):
        if time.monotonic() > deadline:
            raise SemdbError(f"gave up waiting for the first process to write {path}")
        time.sleep(2.0)


def fine_tune(
    source: str | RetrievalSet,
    config: TrainConfig,
    *,
    split: str = "train",
    url: str | None = None,
    mining: MiningOptions | None = None,
    blend: BlendOptions | None = None,
) -> TrainResult:
    """Fine-tune ``config.base_model`` on ``source`` (a folder, a .jsonl file or a SELECT).

    With ``blend``, the run then scores blends of the base and fine-tuned weights, writes
    ``blend.json`` and ``blend.png``, and the chosen blend to ``<run>/blended`` (unless the
    rule keeps the fine-tuned model as it is)."""
    check_output_dir(config)  # refuse to overwrite an earlier run before any long work
    train_set, validation_set = prepare_data(source, config, split=split, url=url)
    if blend is not None and validation_set is None:
        raise BlendError(
            "choosing a blend needs in-domain validation queries, and this run has none",
            fix="give --validation-fraction above 0 (and at least two queries)",
        )
    if config.hard_negatives > 0:
        train_set = add_hard_negatives(train_set, config, mining or MiningOptions(url=url))
    result = train(config, train_set, validation_set)
    end_process_group()
    if blend is not None and validation_set is not None and world()[0] == 0:
        from training.blend import BLEND_FILE

        report = choose_blend(config, validation_set, result.model_dir, blend)
        result.blend = {
            "chosen": report.chosen,
            "bound": report.bound,
            "file": str(config.output_dir / BLEND_FILE),
            "changes_at_chosen": report.changes(report.chosen),
            "changes_at_fine_tuned": report.changes(1.0),
        }
    return result


def choose_blend(
    config: TrainConfig, validation_set: RetrievalSet, model_dir: Path, options: BlendOptions
) -> Any:
    """Score the blend curve, choose ``a``, write blend.json, blend.png and ``blended/``."""
    from training.blend import (
        BLEND_FILE,
        BLENDED_DIR,
        GENERAL,
        IN_DOMAIN,
        PLOT_FILE,
        Blender,
        ScoredSet,
        blend_curve,
        plot_curve,
        sample_set,
    )

    sets = [
        ScoredSet(
            "validation",
            IN_DOMAIN,
            sample_set(
                validation_set,
                queries=len(validation_set.query_ids),
                corpus=config.validation_corpus_size,
                seed=config.seed,
            ),
        )
    ]
    for name, data in options.general.items():
        sets.append(
            ScoredSet(
                name,
                GENERAL,
                sample_set(data, queries=options.queries, corpus=options.corpus, seed=config.seed),
            )
        )
    logger.info(
        "blend curve: a in %s on %s",
        ", ".join(f"{a:.1f}" for a in options.alphas),
        ", ".join(f"{s.name} ({len(s.data.query_ids)} queries)" for s in sets),
    )
    blender = Blender(config.base_model, model_dir)
    report = blend_curve(
        blender, sets, bound=options.bound, alphas=options.alphas, max_tokens=options.max_tokens
    )
    output = config.output_dir
    (output / BLEND_FILE).write_text(json.dumps(report.to_json(), indent=2))
    plot_curve(report, output / PLOT_FILE)
    blended = output / BLENDED_DIR
    if blended.exists():
        import shutil

        shutil.rmtree(blended)
    summary_file = output / "training.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary["blend"] = {k: v for k, v in report.to_json().items() if k != "curve"}
    summary["blend"]["curve"] = [
        {"alpha": p.alpha, "ndcg@10": {n: s["ndcg@10"] for n, s in p.scores.items()}}
        for p in report.curve
    ]
    summary_file.write_text(json.dumps(summary, indent=2))
    (model_dir / "semdb_training.json").write_text(json.dumps(summary, indent=2))
    if report.chosen < 1.0:
        blender.save(report.chosen, blended)
        (blended / "semdb_training.json").write_text(json.dumps(summary, indent=2))
    return report


def end_process_group() -> None:
    """Under torchrun: wait for every process, then take the process group down.

    A process that exits with its group still up may abort at interpreter shutdown
    ("terminate called without an active exception", exit -6), about one run in four on two
    CPU processes, which fails the whole torchrun although training succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
