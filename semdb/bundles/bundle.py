"""A model bundle: a folder with ONNX graphs, ``tokenizer.json`` and ``manifest.json``.

| file | what | for |
|---|---|---|
| ``model.onnx`` | fp32 graph (required) | CPU, and CUDA without fp16 |
| ``model_fp16.onnx`` | fp16 weights and activations, fp32 in and out | CUDA |
| ``model_int8.onnx`` | int8 per-channel weights, dynamic activations | CPU |
| ``tokenizer.json`` | Hugging Face ``tokenizers`` file, truncation at max_tokens | all |

Every graph takes ``input_ids`` and ``attention_mask`` (int64, shape batch x tokens) and returns
``sentence_embedding`` (float32, batch x dimension), pooled and normalised as the manifest
says. Loading verifies every file's sha256: an altered or missing file is an error naming it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from semdb.bundles.manifest import Manifest
from semdb.errors import BundleError

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
OUTPUT_NAME = "sentence_embedding"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BundleError(
            f"unknown precision {precision!r}", fix=f"use one of {', '.join(PRECISIONS)}"
        )
    return precision


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, by default, verified) model bundle."""

    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Read the manifest at ``path``; with ``verify``, check every file's sha256."""
        folder = Path(path).expanduser().absolute()
        if not folder.is_dir():
            raise BundleError(
                f"no model bundle at {folder}: not a folder",
                fix="give the folder of a bundle, or a model name from `semdb model list`",
            )
        bundle = cls(folder, Manifest.load(folder))
        bundle.check_complete()
        if verify:
            bundle.verify()
        return bundle

    def check_complete(self) -> None:
        """The manifest lists the fp32 graph and the tokenizer, and every listed file exists."""
        for required in (ONNX_FILES["fp32"], TOKENIZER_FILE):
            if required not in self.manifest.files:
                raise BundleError(
                    f"the manifest of the bundle at {self.path} does not list {required}"
                )
        for filename in self.manifest.files:
            if not (self.path / filename).is_file():
                raise BundleError(
                    f"{filename} is missing from the model bundle at {self.path}",
                    fix="restore the file, or import or export the bundle again",
                )

    def verify(self) -> None:
        """Check that every listed file has the sha256 the manifest records."""
        self.check_complete()
        for filename, expected in self.manifest.files.items():
            actual = file_sha256(self.path / filename)
            if actual != expected:
                raise BundleError(
                    f"{filename} in the model bundle at {self.path} does not match its manifest "
                    f"(sha256 {actual[:12]}..., expected {expected[:12]}...): the file was "
                    "altered or damaged",
                    fix="restore the original file, or import or export the bundle again",
                )

    # -- what is inside -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def available_precisions(self) -> tuple[str, ...]:
        """The precisions this bundle has a graph for, in the order fp32, fp16, int8."""
        return tuple(p for p in PRECISIONS if ONNX_FILES[p] in self.manifest.files)

    def onnx_path(self, precision: str = "fp32") -> Path:
        """The ONNX graph for ``precision`` ("fp32", "fp16" or "int8")."""
        filename = ONNX_FILES[check_precision(precision)]
        if filename not in self.manifest.files:
            raise BundleError(
                f"the model bundle {self.name} {self.version} has no {precision} graph "
                f"({filename}); it has {', '.join(self.available_precisions)}",
                fix=f"use one of those precisions, or export the model with {precision}",
            )
        return self.path / filename

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def onnx_sha256(self) -> str:
        """The fp32 graph's sha256: it pins the exact weights (the registry stores it)."""
        return self.manifest.files[ONNX_FILES["fp32"]]


def seal_bundle(folder: str | Path, manifest: Manifest) -> Bundle:
    """Hash the graphs and the tokenizer present in ``folder``, write the manifest, load it.

    Used by the exporter once the files are in place; ``manifest.files`` is replaced.
    """
    folder = Path(folder)
    present = [*ONNX_FILES.values(), TOKENIZER_FILE]
    files = {name: file_sha256(folder / name) for name in present if (folder / name).is_file()}
    replace(manifest, files=files).save(folder)
    return Bundle.load(folder, verify=False)
