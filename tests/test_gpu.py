"""The CUDA provider, when it really runs here; skipped cleanly everywhere else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semdb.embed import Embedder
from semdb.errors import ProviderError

from .tiny_model import corpus_sentences

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_embedder(tiny_bundle: Path) -> Embedder:
    try:
        return Embedder.load(tiny_bundle, provider="cuda")
    except ProviderError as exc:
        pytest.skip(f"no CUDA here: {exc.message}")


def test_cuda_runs_fp16_with_io_binding(cuda_embedder: Embedder) -> None:
    assert cuda_embedder.provider == "cuda"
    assert cuda_embedder.session.session.get_providers()[0] == "CUDAExecutionProvider"
    assert cuda_embedder.precision == "fp16"
    assert cuda_embedder.session.io_binding


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_vectors_match_the_cpu_fp32_ones(tiny_bundle: Path, precision: str) -> None:
    texts = corpus_sentences(200)
    try:
        gpu = Embedder.load(tiny_bundle, provider="cuda", precision=precision)
    except ProviderError as exc:
        pytest.skip(f"no CUDA here: {exc.message}")
    cpu = Embedder.load(tiny_bundle, provider="cpu", precision="fp32")
    a, b = gpu.embed(texts), cpu.embed(texts)
    assert a.dtype == np.float32 and a.shape == b.shape
    assert (a * b).sum(axis=1).min() >= (0.999 if precision == "fp16" else 0.9999)


def test_auto_picks_cuda_when_it_runs(tiny_bundle: Path, cuda_embedder: Embedder) -> None:
    assert Embedder.load(tiny_bundle).provider == "cuda"
