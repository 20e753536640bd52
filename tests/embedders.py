"""Embedders for the sync tests: semdb's own on the tiny bundle, and a wrapper around it that
records, slows down or fails (to test what a worker does then)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def load_tiny_embedder(tiny_bundle: Path) -> Any:
    """semdb's ONNX Runtime Embedder on the tiny bundle, on the CPU."""
    from semdb.embed import Embedder

    return Embedder.load(tiny_bundle, provider="cpu")


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
        # The model's tokenizer, for chunked columns (semdb.sync.chunking counts with it).
        self.tokenizer = getattr(inner, "tokenizer", None)
        self.max_tokens = getattr(inner, "max_tokens", None)
        self.document_prefix = getattr(inner, "document_prefix", "")
        self.texts: list[str] = []
        self.batches: list[list[str]] = []  # the texts of each call
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
        self.batches.append(list(texts))
        if self.log is not None:
            with self.log.open("a") as handle:
                for text in texts:
                    handle.write(text.replace("\n", " ") + "\n")
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)
