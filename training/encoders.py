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


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """A 20-byte digest per text: how the cache recognises a document in any corpus."""
    return np.array([hashlib.sha1(t.encode()).digest() for t in texts], dtype="S20")


def encode_corpus(
    encoder: Encoder,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    corpus_fingerprint: str,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, float]:
    """The documents' vectors and the seconds spent encoding (0 when all came from the cache).

    With ``cache_dir``, vectors are kept per encoder (``<cache_dir>/<encoder>/<corpus>.npy``,
    with the texts' digests beside them). A corpus seen before is read back whole; for a new
    corpus, every text any cached corpus of the same encoder holds is reused (a deduplicated
    or filtered corpus costs nothing), and only the others are encoded.
    """
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
    key = encoder_fingerprint(encoder)
    folder = Path(cache_dir) / key if cache_dir is not None and key is not None else None
    keys = text_keys(texts)
    vectors: np.ndarray | None = None
    missing = np.arange(len(texts))
    if folder is not None:
        exact = folder / f"{corpus_fingerprint}.npy"
        if exact.is_file() and _keys_path(exact).is_file():
            cached_keys = np.load(_keys_path(exact))
            if np.array_equal(cached_keys, keys):
                logger.info("corpus vectors read from %s", exact)
                return np.load(exact), 0.0
        vectors, missing = _reuse(folder, keys)
    started = time.perf_counter()
    if len(missing):
        if len(missing) < len(texts):
            logger.info("%d of %d documents not cached: encoding them", len(missing), len(texts))
        fresh = embed_documents(encoder, [texts[int(i)] for i in missing], progress=progress)
        if fresh.shape[0] != len(missing):
            raise SemdbError(
                f"the encoder returned {fresh.shape[0]} vectors for {len(missing)} texts"
            )
        if vectors is None:
            vectors = np.empty((len(texts), fresh.shape[1]), dtype=np.float32)
        vectors[missing] = fresh
    elapsed = time.perf_counter() - started if len(missing) else 0.0
    assert vectors is not None
    if folder is not None and len(missing):
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{corpus_fingerprint}.npy"
        for path, array in ((_keys_path(target), keys), (target, vectors)):
            partial = path.with_name(path.name + ".partial.npy")
            np.save(partial, array)
            partial.replace(path)
    return vectors, elapsed


def embed_documents(encoder: Encoder, texts: list[str], *, progress: bool = False) -> np.ndarray:
    """``encoder.embed(texts, kind="document")``, with a progress bar for semdb's Embedder."""
    if not progress or not hasattr(encoder, "bundle"):  # the torch encoder shows its own
        return np.asarray(encoder.embed(texts, kind="document"), dtype=np.float32)
    from tqdm.auto import tqdm

    with tqdm(total=len(texts), desc="embedding documents", unit="doc") as bar:
        vectors = encoder.embed(texts, kind="document", on_batch=bar.update)  # type: ignore[call-arg]
    return np.asarray(vectors, dtype=np.float32)


def _keys_path(vectors_path: Path) -> Path:
    return vectors_path.with_name(vectors_path.stem + ".keys.npy")


def _reuse(folder: Path, keys: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Vectors for the texts any cached corpus holds; the indices of the texts still missing."""
    vectors: np.ndarray | None = None
    found = np.zeros(len(keys), dtype=bool)
    if not folder.is_dir():
        return None, np.arange(len(keys))
    for path in sorted(folder.glob("*.npy")):
        if path.name.endswith(".keys.npy") or ".partial" in path.name:
            continue
        if not _keys_path(path).is_file():
            continue
        cached_keys = np.load(_keys_path(path))
        position = {k: i for i, k in enumerate(cached_keys.tolist())}
        wanted = [
            (i, position[k]) for i, k in enumerate(keys.tolist()) if not found[i] and k in position
        ]
        if not wanted:
            continue
        cached = np.load(path, mmap_mode="r")
        if vectors is None:
            vectors = np.empty((len(keys), cached.shape[1]), dtype=np.float32)
        rows = np.array(wanted)
        vectors[rows[:, 0]] = cached[rows[:, 1]]
        found[rows[:, 0]] = True
        if found.all():
            break
    return vectors, np.flatnonzero(~found)
