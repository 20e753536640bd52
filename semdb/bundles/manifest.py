"""The manifest of a model bundle: what the model is, how to use it, which files make it.

A bundle folder holds ``manifest.json`` next to its files::

    {
      "format": "semdb-bundle/1",
      "name": "all-MiniLM-L6-v2", "version": "1",
      "dimension": 384, "pooling": "mean", "normalize": true, "max_tokens": 256,
      "query_prefix": "", "document_prefix": "",
      "files": {"model.onnx": "<sha256>", "model_int8.onnx": "<sha256>", "tokenizer.json": "..."},
      "provenance": {"source": "...", "parity": {...}, "versions": {...}}
    }

Pooling and normalisation are recorded for people and registries: they are already inside the
ONNX graph, whose single output is the final sentence embedding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semdb.errors import BundleError

MANIFEST_FILE = "manifest.json"
FORMAT = "semdb-bundle/1"

# Names and versions become folder names in the model store: keep them to safe characters.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # fullmatch: "$" takes "\n"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_name(value: str, what: str = "model name") -> str:
    """``value`` if it is a safe name or version (letters, digits, ``. _ + -``), else an error."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or value in {".", ".."}:
        raise BundleError(
            f"{what} {value!r} is not allowed",
            fix="use letters, digits and . _ + - only (at most 128 characters), "
            "starting with a letter or digit",
        )
    return value


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds. Load with :meth:`load`, write with :meth:`save`."""

    name: str
    version: str
    dimension: int
    pooling: str
    normalize: bool
    max_tokens: int
    query_prefix: str = ""
    document_prefix: str = ""
    files: Mapping[str, str] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        check_name(self.name, "model name")
        check_name(self.version, "model version")
        for key in ("dimension", "max_tokens"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BundleError(f"manifest field {key!r} must be a positive integer: {value!r}")
        if not isinstance(self.normalize, bool):
            raise BundleError(
                f"manifest field 'normalize' must be true or false: {self.normalize!r}"
            )
        for key in ("pooling", "query_prefix", "document_prefix"):
            if not isinstance(getattr(self, key), str):
                raise BundleError(f"manifest field {key!r} must be a string")
        if not self.pooling:
            raise BundleError("manifest field 'pooling' is empty")
        for filename, digest in self.files.items():
            if "/" in filename or "\\" in filename or filename in {"", ".", ".."}:
                raise BundleError(f"manifest lists a file outside the bundle folder: {filename!r}")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise BundleError(f"manifest has no valid sha256 for {filename!r}: {digest!r}")

    # -- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = dict(sorted(self.files.items()))
        data["provenance"] = dict(self.provenance)
        return {"format": data.pop("format"), **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "manifest") -> Manifest:
        if not isinstance(data, Mapping):
            raise BundleError(f"{source} is not a JSON object")
        version = data.get("format", FORMAT)
        if not isinstance(version, str) or not version.startswith("semdb-bundle/"):
            raise BundleError(f"{source} is not a semdb bundle manifest (format {version!r})")
        if version != FORMAT:
            raise BundleError(
                f"{source} has format {version!r}; this semdb reads {FORMAT!r}",
                fix="upgrade semdb, or re-export the model with this semdb",
            )
        required = ("name", "version", "dimension", "pooling", "normalize", "max_tokens")
        missing = [key for key in required if key not in data]
        if missing:
            raise BundleError(f"{source} lacks the field(s) {', '.join(missing)}")
        files = data.get("files", {})
        provenance = data.get("provenance", {})
        if not isinstance(files, Mapping) or not isinstance(provenance, Mapping):
            raise BundleError(f"{source}: 'files' and 'provenance' must be JSON objects")
        return cls(
            name=data["name"],
            version=str(data["version"]),
            dimension=data["dimension"],
            pooling=data["pooling"],
            normalize=data["normalize"],
            max_tokens=data["max_tokens"],
            query_prefix=data.get("query_prefix", ""),
            document_prefix=data.get("document_prefix", ""),
            files=dict(files),
            provenance=dict(provenance),
            format=version,
        )

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Read ``manifest.json`` from a bundle folder."""
        path = Path(folder) / MANIFEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BundleError(
                f"{path} is missing: {folder} is not a semdb model bundle",
                fix="point at a folder made by `semdb model import` or training's export",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def save(self, folder: str | Path) -> Path:
        """Write ``manifest.json`` into ``folder`` (atomically) and return its path."""
        path = Path(folder) / MANIFEST_FILE
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        partial.replace(path)
        return path
