"""training.export: what the graphs hold, and an export that fails leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import training.export as export_module
from semdb.bundles import Bundle
from training.export import ExportError, export_bundle


def test_the_graph_ends_in_the_sentence_embedding_with_dynamic_axes(tiny_bundle: Path) -> None:
    for filename in ("model.onnx", "model_fp16.onnx", "model_int8.onnx"):
        graph = onnx.load(str(tiny_bundle / filename)).graph
        assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
        (output,) = graph.output
        assert output.name == "sentence_embedding"
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        for tensor in graph.input:
            dims = tensor.type.tensor_type.shape.dim
            assert all(d.dim_param and not d.dim_value for d in dims), filename  # symbolic


def test_the_fp32_graph_is_fused(tiny_bundle: Path) -> None:
    graph = onnx.load(str(tiny_bundle / "model.onnx")).graph
    operators = {node.op_type for node in graph.node}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= operators
    fusions = Bundle.load(tiny_bundle).manifest.provenance["graph"]["fusions"]
    assert fusions["Attention"] == 2  # one per layer


def test_int8_is_quantised_per_channel(tiny_bundle: Path) -> None:
    model = onnx.load(str(tiny_bundle / "model_int8.onnx"))
    operators = {node.op_type for node in model.graph.node}
    assert {"MatMulInteger", "QAttention", "DynamicQuantizeLinear"} <= operators
    assert "MatMul" not in operators
    initializers = {t.name: t for t in model.graph.initializer}
    scales = [
        initializers[node.input[3]]
        for node in model.graph.node
        if node.op_type == "MatMulInteger" and node.input[3] in initializers
    ]
    assert scales and all(
        onnx.numpy_helper.to_array(zero_point).size > 1 for zero_point in scales
    )  # a zero point per output channel


def test_fp16_holds_half_precision_weights(tiny_bundle: Path) -> None:
    model = onnx.load(str(tiny_bundle / "model_fp16.onnx"))
    types = {t.data_type for t in model.graph.initializer if len(t.dims) == 2}
    assert types == {onnx.TensorProto.FLOAT16}
    size = (tiny_bundle / "model_fp16.onnx").stat().st_size
    assert size < 0.7 * (tiny_bundle / "model.onnx").stat().st_size


def test_parity_numbers_are_recorded(tiny_bundle: Path) -> None:
    provenance = Bundle.load(tiny_bundle).manifest.provenance
    parity = provenance["parity"]
    assert parity["texts"] >= 40
    assert parity["fp32"]["min_cosine"] >= 0.9999
    assert parity["int8"]["mean_cosine"] >= 0.99
    assert parity["fp16"]["min_cosine"] >= 0.999
    assert provenance["graph"]["opset"] == 17
    assert provenance["versions"]["onnxruntime"]


def test_a_failed_parity_check_fails_the_export_and_leaves_nothing(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "INT8_MEAN_COSINE", 1.5)  # no int8 graph can reach it
    target = tmp_path / "bundle"
    with pytest.raises(ExportError, match=r"does not match the PyTorch model: int8: mean cosine"):
        export_bundle(tiny_model_dir, target, name="t", version="1", parity_texts=["a", "b c"])
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_what_it_cannot_do(tiny_model_dir: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "file").write_text("keep me")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_bundle(tiny_model_dir, occupied, name="t", version="1")
    assert (occupied / "file").read_text() == "keep me"
    with pytest.raises(ExportError, match="not a sentence-transformers model folder"):
        export_bundle(tmp_path, tmp_path / "x", name="t", version="1")
    with pytest.raises(ExportError, match="unknown precision"):
        export_bundle(tiny_model_dir, tmp_path / "x", name="t", version="1", precisions=["bf16"])
    with pytest.raises(Exception, match="model name 'a/b' is not allowed"):
        export_bundle(tiny_model_dir, tmp_path / "x", name="a/b", version="1")


def test_an_export_with_only_fp32_and_custom_max_tokens(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = export_bundle(
        tiny_model_dir, tmp_path / "b", name="t", version="7", precisions=["fp32"], max_tokens=16
    )
    bundle = Bundle.load(path)
    assert bundle.available_precisions == ("fp32",)
    assert bundle.manifest.max_tokens == 16
    assert (path.stat().st_mode & 0o777) != 0o700  # not left private like a temporary folder
    from semdb.embed import Embedder

    embedder = Embedder.load(path)
    embedder.embed(["word " * 40])
    assert embedder.last_stats is not None and embedder.last_stats.truncated == 1
    assert np.isfinite(embedder.embed(["x"])).all()
