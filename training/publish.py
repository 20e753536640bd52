"""From a training run to a registered model: export a bundle, store it, record its metrics.

>>> publish_run("runs/faq", name="faq-minilm", version="1")

1. the run's model folder (``<run>/model``) is exported by :func:`training.export.export_bundle`
   (ONNX with pooling and normalisation in the graph, fp32 + int8 by default, parity checked);
   the training configuration and validation scores go into the manifest's provenance;
2. the bundle goes into the model store (``SEMDB_HOME/models/<name>/<version>``) or ``out``;
3. it is registered in the database's ``semdb.models`` with its metrics (``training``: the
   validation nDCG@10 before and after; ``semdb eval --record`` adds test scores later).

Metrics in the registry are one JSON object; :func:`record_model_metrics` merges into it
recursively, so scores for several datasets sit side by side.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semdb.errors import SemdbError

logger = logging.getLogger(__name__)

TRAINING_SUMMARY = "semdb_training.json"


@dataclass(frozen=True)
class Published:
    """Where the bundle went and what the registry now says about it."""

    bundle_dir: Path
    name: str
    version: str
    registered: bool
    metrics: Mapping[str, Any]


def model_folder(run_or_model: str | Path) -> Path:
    """The sentence-transformers folder of a run (``<run>/model``), or the folder itself."""
    path = Path(run_or_model).expanduser()
    for candidate in (path / "model", path):
        if (candidate / "modules.json").is_file():
            return candidate
    raise SemdbError(
        f"{path} is neither a training run nor a sentence-transformers model folder",
        fix="give the --output folder of semdb train (or its model/ folder)",
    )


def training_summary(model_dir: Path) -> dict[str, Any]:
    """What ``semdb train`` recorded about the run that made ``model_dir`` ({} if nothing)."""
    for candidate in (model_dir / TRAINING_SUMMARY, model_dir.parent / "training.json"):
        if candidate.is_file():
            try:
                loaded = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(loaded, dict):
                return loaded
    return {}


def training_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The registry's ``training`` entry from a run summary."""
    result = summary.get("result") or {}
    config = summary.get("config") or {}
    if not result:
        return {}
    return {
        "validation_ndcg@10": {
            "before": result.get("validation_start"),
            "best": result.get("best_metric"),
        },
        "steps": result.get("steps"),
        "train_pairs": result.get("train_pairs"),
        "validation_queries": result.get("validation_queries"),
        "seconds": result.get("seconds"),
        "base_model": config.get("base_model"),
        "hard_negatives": config.get("hard_negatives"),
        "seed": config.get("seed"),
    }


def run_blend(run_or_model: str | Path) -> Any:
    """The :class:`~training.blend.BlendReport` ``semdb train --general`` left in the run
    (None when the run has none)."""
    from training.blend import BLEND_FILE, BlendReport

    path = Path(run_or_model).expanduser()
    for candidate in (path / BLEND_FILE, path.parent / BLEND_FILE):
        if candidate.is_file():
            return BlendReport.from_json(json.loads(candidate.read_text()))
    return None


@dataclass(frozen=True)
class ExportChoice:
    """Which weights an export takes: the run's model, its chosen blend, or a given blend."""

    alpha: float | None  # None: not a blend (a model folder without a base named)
    chosen_by: str  # "semdb train" (the run's rule), "--blend", or "" when not a blend
    base_model: str | None
    fine_tuned: Path
    folder: Path | None  # weights on disk already (the model, or the run's blended/)


def export_choice(
    run_or_model: str | Path, *, blend: float | None = None, base_model: str | None = None
) -> ExportChoice:
    """What :func:`publish_run` exports; bad input (no base to blend with, two models that
    cannot be blended, a weight outside 0..1) fails here, before any work."""
    from training.blend import BLENDED_DIR, check_alpha, check_blendable

    model_dir = model_folder(run_or_model)
    summary = training_summary(model_dir)
    base = base_model or (summary.get("config") or {}).get("base_model")
    report = run_blend(run_or_model)
    if blend is None:
        blended = model_dir.parent / BLENDED_DIR
        if report is not None and report.chosen < 1.0 and (blended / "modules.json").is_file():
            return ExportChoice(report.chosen, "semdb train", base, model_dir, blended)
        alpha = 1.0 if report is not None else None
        return ExportChoice(alpha, "semdb train" if report else "", base, model_dir, model_dir)
    check_alpha(blend)
    if base is None:
        raise SemdbError(
            f"--blend needs the base model of {model_dir}, and its run does not name one",
            fix="name it: --base-model FOLDER",
        )
    check_blendable(base, model_dir)
    folder = model_dir if blend == 1.0 else None
    return ExportChoice(float(blend), "--blend", base, model_dir, folder)


def blend_metrics(choice: ExportChoice, report: Any) -> dict[str, Any]:
    """The registry's ``training.blend`` entry: the exported a, how it was chosen, and each
    set's nDCG@10 at that a beside the base's (from the run's curve, when it has that a)."""
    if choice.alpha is None:
        return {}
    entry: dict[str, Any] = {"alpha": choice.alpha, "chosen_by": choice.chosen_by}
    if report is not None:
        entry["bound"] = report.bound
        entry["rule"] = report.rule
        entry["chosen_by_rule"] = report.chosen
        changes = report.changes(choice.alpha)
        if changes:
            entry["sets"] = changes
    return entry


def publish_run(
    run_or_model: str | Path,
    *,
    name: str,
    version: str = "1",
    precisions: Sequence[str] = ("fp32", "int8"),
    out: str | Path | None = None,
    register: bool = True,
    activate: bool = False,
    url: str | None = None,
    progress: Callable[[str], None] | None = None,
    blend: float | None = None,
    base_model: str | None = None,
) -> Published:
    """Export the run's model as a bundle, store it, and register it with its metrics.

    A run that ``semdb train --general`` blended exports its chosen blend (``blended/``);
    ``blend=a`` exports ``(1 - a) * base + a * fine_tuned`` instead (``blend=1``: the
    fine-tuned model as it is; ``base_model`` defaults to the one the run started from).
    """
    from semdb.bundles.store import bundle_dir, find_bundle
    from training.blend import blended_folder

    choice = export_choice(run_or_model, blend=blend, base_model=base_model)
    model_dir = choice.fine_tuned
    summary = training_summary(model_dir)
    metrics = {"training": training_metrics(summary)} if summary else {}
    blend_entry = blend_metrics(choice, run_blend(run_or_model))
    if blend_entry:
        metrics.setdefault("training", {})["blend"] = blend_entry
    provenance: dict[str, Any] = {"source": f"semdb train: {model_dir.resolve()}"}
    if summary:
        provenance["training"] = summary
    if blend_entry:
        provenance["blend"] = {**blend_entry, "base_model": choice.base_model}
    target = Path(out) if out is not None else bundle_dir(name, version)
    if choice.folder is not None:
        _export(choice.folder, target, name, version, precisions, provenance, progress)
    else:
        assert choice.base_model is not None and choice.alpha is not None
        if progress:
            progress(f"blending: {1 - choice.alpha:.2f} x base + {choice.alpha:.2f} x fine-tuned")
        with blended_folder(choice.base_model, model_dir, choice.alpha) as folder:
            _export(folder, target, name, version, precisions, provenance, progress)
    bundle = find_bundle(target)
    if not register:
        return Published(bundle.path, name, version, False, metrics)
    recorded = register_with_metrics(bundle, metrics, activate=activate, url=url)
    return Published(bundle.path, name, version, True, recorded)


def _export(
    folder: Path,
    target: Path,
    name: str,
    version: str,
    precisions: Sequence[str],
    provenance: Mapping[str, Any],
    progress: Callable[[str], None] | None,
) -> None:
    from training.export import export_bundle

    export_bundle(
        folder,
        target,
        name=name,
        version=version,
        precisions=tuple(precisions),
        provenance=provenance,
        progress=progress,
    )


def register_with_metrics(
    bundle: Any, metrics: Mapping[str, Any], *, activate: bool = False, url: str | None = None
) -> Mapping[str, Any]:
    """Register ``bundle`` (idempotent) and merge ``metrics`` into its registry row."""
    from semdb.bundles.registry import register_bundle
    from semdb.db import create_engine

    engine = create_engine(url)
    try:
        register_bundle(engine, bundle, activate=activate)
        return record_model_metrics(engine, bundle.name, bundle.version, metrics)
    finally:
        engine.dispose()


def record_model_metrics(
    engine: Any, name: str, version: str, metrics: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Merge ``metrics`` recursively into the registered model's metrics; return the result."""
    from semdb.bundles.registry import get_registered, record_metrics

    current = dict(get_registered(engine, name, version).metrics)
    merged = deep_merge(current, metrics)
    return record_metrics(engine, name, version, merged).metrics


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in; nested objects merge, other values are replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
