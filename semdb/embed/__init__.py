"""The runtime embedder: ONNX Runtime and a tokenizer turn texts into vectors, no torch.

- :mod:`semdb.embed.providers`: which execution provider (CUDA, CPU) and precision run.
- :mod:`semdb.embed.batching`: text checks, tokenisation, length-sorted token-budget batches.
- :mod:`semdb.embed.session`: one ONNX Runtime session, plain or IO-bound runs.
- :mod:`semdb.embed.embedder`: :class:`Embedder`, which puts them together.

Imports onnxruntime, tokenizers and numpy; never torch or SQLAlchemy.
"""

from semdb.embed.embedder import Embedder, EmbedStats

__all__ = ["EmbedStats", "Embedder"]
