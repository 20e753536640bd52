"""The CPU precision chosen by measurement: int8 only where it is faster and as accurate here.

No timing is asserted (a unit test must not fail on a busy machine): the tests check that the
choice is measured once per bundle and machine and read back afterwards, that an explicit
precision skips the measurement, and that an int8 graph whose vectors are wrong is never
chosen, however fast it runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from semdb.bundles import Bundle
from semdb.bundles.bundle import seal_bundle
from semdb.embed import Embedder
from semdb.embed import precision as cpu_precision
from semdb.errors import BundleError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SEMDB_CACHE_DIR", str(folder))
    monkeypatch.delenv("SEMDB_CPU_PRECISION")
    return folder


def test_the_choice_is_measured_once_then_read_back(tiny_bundle: Path, cache: Path) -> None:
    first = Embedder.load(tiny_bundle, provider="cpu")
    choice = first.precision_choice
    assert choice is not None and not choice.from_cache
    assert first.precision == choice.precision in {"fp32", "int8"}
    assert choice.fp32_texts_per_s > 0 and choice.int8_texts_per_s > 0
    assert 0.9 < choice.int8_mean_cosine <= 1.0 + 1e-6
    assert "onnxruntime" in choice.machine

    (record,) = json.loads((cache / cpu_precision.CACHE_FILE).read_text()).values()
    assert record["precision"] == choice.precision

    again = Embedder.load(tiny_bundle, provider="cpu")
    assert again.precision_choice is not None and again.precision_choice.from_cache
    assert again.precision_choice.measured_at == choice.measured_at
    assert again.precision == first.precision
    assert np.allclose(first.embed(["a text"]), again.embed(["a text"]))


def test_an_explicit_precision_or_a_bundle_without_int8_measures_nothing(
    tiny_bundle: Path, cache: Path, tmp_path: Path
) -> None:
    for precision in ("fp32", "int8"):
        embedder = Embedder.load(tiny_bundle, provider="cpu", precision=precision)
        assert embedder.precision == precision and embedder.precision_choice is None
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "fp32-only"))
    manifest = Bundle.load(copy).manifest
    (copy / "model_int8.onnx").unlink()
    (copy / "model_fp16.onnx").unlink()
    seal_bundle(copy, manifest)
    embedder = Embedder.load(copy, provider="cpu")
    assert embedder.precision == "fp32" and embedder.precision_choice is None
    assert not (cache / cpu_precision.CACHE_FILE).exists()


def test_an_inaccurate_int8_graph_is_never_chosen_however_fast(
    tiny_bundle: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a saturating u8 x s8 kernel does to vectors, made on purpose: the int8 graph's
    weight scales are scrambled. With the speed bar at zero only accuracy decides."""
    import onnx
    from onnx import numpy_helper

    monkeypatch.setattr(cpu_precision, "INT8_MIN_SPEEDUP", 0.0)
    good = cpu_precision.measure_cpu_precision(Bundle.load(tiny_bundle))
    assert good.precision == "int8" and good.int8_mean_cosine >= 0.99

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "scrambled"))
    graph = onnx.load(str(copy / "model_int8.onnx"))
    rng = np.random.default_rng(7)
    scrambled = 0
    for tensor in graph.graph.initializer:
        if tensor.name.endswith("_scale") and tensor.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(tensor)
            noisy = values * rng.uniform(0.2, 5.0, size=values.shape).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
            scrambled += 1
    assert scrambled, "the int8 graph has no weight scales to scramble"
    onnx.save(graph, str(copy / "model_int8.onnx"))
    seal_bundle(copy, Bundle.load(copy, verify=False).manifest)

    bad = cpu_precision.measure_cpu_precision(Bundle.load(copy))
    assert bad.int8_mean_cosine < 0.99
    assert bad.precision == "fp32"
    assert Embedder.load(copy, provider="cpu").precision == "fp32"


def test_semdb_precision_pins_the_graph_for_every_load(
    tiny_bundle: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMDB_CPU_PRECISION", "int8")
    pinned = Embedder.load(tiny_bundle, provider="cpu")
    assert pinned.precision == "int8" and pinned.precision_choice is None
    assert Embedder.load(tiny_bundle, provider="cpu", precision="fp32").precision == "fp32"
    monkeypatch.setenv("SEMDB_CPU_PRECISION", "fp8")
    with pytest.raises(BundleError, match="unknown precision 'fp8'"):
        Embedder.load(tiny_bundle, provider="cpu")
