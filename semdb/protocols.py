"""The contracts between semdb's parts, as typing protocols (no implementation here).

The search and sync layers take anything shaped like an :class:`TextEmbedder`; semdb's own
``semdb.embed.Embedder`` (ONNX Runtime) is one, a test double or another runtime can be
another. Neither layer ever builds an ONNX session itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TextEmbedder(Protocol):
    """Turns texts into float32 vectors of a fixed dimension, and says which model it is."""

    @property
    def dimension(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    def embed(
        self, texts: Sequence[str], *, kind: Literal["document", "query"] = "document"
    ) -> np.ndarray[Any, Any]:
        """(len(texts), dimension) float32, one row per text, in order."""
        ...

    def embed_query(self, text: str) -> np.ndarray[Any, Any]:
        """(dimension,) float32 for a search query (query prefix applied, if the model has one)."""
        ...


def model_tag(embedder: TextEmbedder) -> str:
    """``name@version``: what a stored vector records about the model that made it."""
    return f"{embedder.model_name}@{embedder.model_version}"
