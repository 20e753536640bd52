"""Embedders for the sync tests: semdb's own on the tiny bundle when it exists, and wrappers
around a real one that record, slow down or fail (to test what a worker does then)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def load_tiny_embedder(tiny_bundle: Path | None, tiny_model_dir: Path | None) -> Any:
    """semdb.embed.Embedder on the tiny bundle; before semdb.embed exists, the same tiny
    model through sentence-transformers (a real model either way)."""
    try:
        from semdb.embed import Embedder  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        assert tiny_model_dir is not None
        return SentenceTransformerEmbedder(tiny_model_dir)
    assert tiny_bundle is not None
    return Embedder.load(tiny_bundle, provider="cpu")


class SentenceTransformerEmbedder:
    """The tiny sentence-transformers model behind semdb's embedder interface."""

    model_name = "tiny"
    model_version = "1"

    def __init__(self, folder: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device="cpu")
        self.dimension = int(
            getattr(
                self.model, "get_embedding_dimension", self.model.get_sentence_embedding_dimension
            )()
            or 0
        )
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=64, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text], kind="query")[0]


class Recording:
    """Wraps an embedder: logs every text it embeds (to a list, and to a file if given),
    can sleep before embedding, and can fail on texts containing a marker."""

    def __init__(
        self,
        inner: Any,
        *,
        log: Path | None = None,
        delay: float = 0.0,
        fail_on: str | None = None,
        fail_always: bool = False,
        started: Path | None = None,
    ) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.model_version = inner.model_version
        self.dimension = inner.dimension
        self.texts: list[str] = []
        self.log = log
        self.delay = delay
        self.fail_on = fail_on
        self.fail_always = fail_always
        self.started = started
        self.calls = 0

    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray:
        self.calls += 1
        if self.started is not None:
            self.started.write_text(str(os.getpid()))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_always:
            raise RuntimeError("the embedder is down")
        if self.fail_on is not None and any(self.fail_on in text for text in texts):
            raise ValueError(f"cannot embed a text containing {self.fail_on!r}")
        vectors = self.inner.embed(texts, kind=kind)
        self.texts.extend(texts)
        if self.log is not None:
            with self.log.open("a") as handle:
                for text in texts:
                    handle.write(text.replace("\n", " ") + "\n")
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)
