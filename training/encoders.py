"""Text encoders for evaluation and mining, and a disk cache for corpus vectors.

An :class:`Encoder` is anything with ``embed(texts, kind="document"|"query") -> float32 (n, d)``
whose rows are L2-normalised: semdb's runtime :class:`semdb.embed.Embedder` (ONNX Runtime, what
users' queries run on) is one; :class:`SentenceTransformerEncoder` (PyTorch, for checkpoints
that are not exported yet) is another. :func:`load_encoder` picks one from a name or a path.

Encoding a corpus is the slow part of an evaluation (minutes for tens of thousands of
documents on a CPU), so :func:`encode_corpus` caches the vectors on disk, keyed by the
encoder's fingerprint and the corpus's.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from semdb.errors import SemdbError

logger = logging.getLogger(__name__)

Kind = Literal["document", "query"]
Backend = Literal["auto", "onnx", "torch"]


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text."""

    def embed(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray: ...


class SentenceTransformerEncoder:
    """A sentence-transformers model (PyTorch) behind the :class:`Encoder` interface.

    ``query_max_tokens`` / ``document_max_tokens`` truncate each kind of text (the model's
    own maximum when None).
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 64,
        query_max_tokens: int | None = None,
        document_max_tokens: int | None = None,
        progress: bool = False,
        fingerprint: str | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.max_tokens = {"query": query_max_tokens, "document": document_max_tokens}
        self.progress = progress
        self._fingerprint = fingerprint

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, **options: Any) -> Any:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        return cls(model, fingerprint=model_fingerprint(Path(path)), **options)

    @property
    def fingerprint(self) -> str | None:
        if self._fingerprint is None:
            return None
        limits = f"{self.max_tokens['query']}-{self.max_tokens['document']}"
        return f"torch-{self._fingerprint}-{limits}"

    def embed(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        limit = self.max_tokens[kind]
        saved = self.model.max_seq_length
        if limit is not None:
            self.model.max_seq_length = min(limit, saved)
        try:
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=self.progress and len(texts) > self.batch_size,
            )
        finally:
            self.model.max_seq_length = saved
        return np.asarray(vectors, dtype=np.float32)


def model_fingerprint(path: Path) -> str:
    """A short hash of a model folder's weights and configuration files."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".onnx", ".json", ".txt"}
    )
    if not files:
        raise SemdbError(f"{path} holds no model files", fix="give a model folder or bundle")
    for file in files:
        digest.update(str(file.relative_to(path)).encode())
        stat = file.stat()
        if stat.st_size > 1 << 20:  # big weights: size and a sample of bytes are enough
            with file.open("rb") as handle:
                digest.update(str(stat.st_size).encode())
                digest.update(handle.read(1 << 20))
                handle.seek(max(0, stat.st_size - (1 << 20)))
                digest.update(handle.read())
        else:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def is_sentence_transformers_folder(path: Path) -> bool:
    return (path / "modules.json").is_file() or (
        path / "config_sentence_transformers.json"
    ).is_file()


def load_encoder(
    name_or_path: str | Path,
    *,
    backend: Backend = "auto",
    precision: str | None = None,
    progress: bool = False,
    query_max_tokens: int | None = None,
    document_max_tokens: int | None = None,
) -> Any:
    """An :class:`Encoder` for a model bundle (ONNX, semdb's runtime) or a checkpoint (torch).

    ``backend="auto"`` uses semdb's ONNX embedder for anything that is not a
    sentence-transformers folder (a bundle folder, ``name`` or ``name@version`` in the
    model store), and PyTorch for a sentence-transformers folder (a training checkpoint,
    not exported yet). ``precision`` picks the bundle's graph (fp32, fp16, int8); None lets
    the embedder choose as it does for users.
    """
    path = Path(name_or_path).expanduser()
    if backend == "auto":
        backend = "torch" if path.is_dir() and is_sentence_transformers_folder(path) else "onnx"
    if backend == "torch":
        if not path.is_dir():
            raise SemdbError(
                f"{name_or_path} is not a sentence-transformers model folder",
                fix="give the folder a training run saved (it holds modules.json)",
            )
        return SentenceTransformerEncoder.load(
            path,
            progress=progress,
            query_max_tokens=query_max_tokens,
            document_max_tokens=document_max_tokens,
        )
    try:
        from semdb.embed import Embedder
    except ImportError as exc:
        raise SemdbError(
            "semdb's ONNX embedder (semdb.embed) is not available in this installation",
            fix="install semdb with the cpu or gpu extra, or evaluate a checkpoint folder "
            "with --backend torch",
        ) from exc
    return Embedder.load(str(name_or_path), precision=precision)


def encoder_fingerprint(encoder: Any) -> str | None:
    """What identifies the vectors an encoder makes (None: do not cache them)."""
    fingerprint = getattr(encoder, "fingerprint", None)
    if isinstance(fingerprint, str) and fingerprint:
        return fingerprint
    bundle = getattr(encoder, "bundle", None)  # semdb.embed.Embedder
    sha256 = getattr(bundle, "onnx_sha256", None)
    if isinstance(sha256, str) and sha256:
        precision = getattr(encoder, "precision", "")
        return f"onnx-{sha256[:16]}-{precision}-{getattr(encoder, 'max_tokens', '')}"
    return None


def encode_corpus(
    encoder: Encoder,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    corpus_fingerprint: str,
    cache_dir: Path | None = None,
) -> tuple[np.ndarray, float]:
    """The documents' vectors and the seconds it took (0 when read from the cache)."""
    key = encoder_fingerprint(encoder)
    cache = None
    if cache_dir is not None and key is not None:
        cache = Path(cache_dir) / f"corpus-{key}-{corpus_fingerprint}.npy"
        if cache.is_file():
            vectors = np.load(cache)
            if vectors.shape[0] == len(ids):
                logger.info("corpus vectors read from %s", cache)
                return vectors, 0.0
    started = time.perf_counter()
    vectors = np.asarray(encoder.embed(list(texts), kind="document"), dtype=np.float32)
    elapsed = time.perf_counter() - started
    if vectors.shape[0] != len(ids):
        raise SemdbError(f"the encoder returned {vectors.shape[0]} vectors for {len(ids)} texts")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".tmp.npy")
        np.save(partial, vectors)
        partial.replace(cache)
    return vectors, elapsed
