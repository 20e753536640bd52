"""Model bundles: the manifest, verified files, and the store's lookup by name and version."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from semdb.bundles import Bundle, Manifest, find_bundle, list_bundles
from semdb.bundles.bundle import ONNX_FILES
from semdb.bundles.manifest import MANIFEST_FILE
from semdb.bundles.store import bundle_dir, install_bundle, version_key
from semdb.errors import BundleError


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))


def test_the_manifest_round_trips_and_describes_the_model(tiny_bundle: Path) -> None:
    manifest = Manifest.load(tiny_bundle)
    assert (manifest.name, manifest.version) == ("tiny", "1")
    assert manifest.dimension == 32
    assert manifest.pooling == "mean"
    assert manifest.normalize is True
    assert manifest.max_tokens == 64  # the tiny model's max_seq_length
    assert set(manifest.files) == {*ONNX_FILES.values(), "tokenizer.json"}
    assert manifest.provenance["parity"]["fp32"]["min_cosine"] >= 0.9999
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../escape"}, "model name '../escape' is not allowed"),
        ({"version": ""}, "model version '' is not allowed"),
        ({"dimension": 0}, "'dimension' must be a positive integer"),
        ({"max_tokens": "256"}, "'max_tokens' must be a positive integer"),
        ({"normalize": "yes"}, "'normalize' must be true or false"),
        ({"files": {"../model.onnx": "0" * 64}}, "a file outside the bundle folder"),
        ({"files": {"model.onnx": "abc"}}, "no valid sha256 for 'model.onnx'"),
        ({"format": "semdb-bundle/9"}, "this semdb reads 'semdb-bundle/1'"),
    ],
)
def test_a_malformed_manifest_is_refused_with_the_field(
    bundle_copy: Path, change: dict[str, object], message: str
) -> None:
    path = bundle_copy / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Bundle.load(bundle_copy)


def test_a_missing_field_or_invalid_json_names_the_manifest(bundle_copy: Path) -> None:
    path = bundle_copy / MANIFEST_FILE
    data = json.loads(path.read_text())
    del data["pooling"]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="lacks the field"):
        Bundle.load(bundle_copy)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        Bundle.load(bundle_copy)
    path.unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("filename", ["model_int8.onnx", "tokenizer.json", "model.onnx"])
def test_an_altered_file_is_an_error_naming_it(bundle_copy: Path, filename: str) -> None:
    Bundle.load(bundle_copy)  # intact: verifies
    data = bytearray((bundle_copy / filename).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / filename).write_bytes(bytes(data))
    with pytest.raises(BundleError) as caught:
        Bundle.load(bundle_copy)
    assert f"{filename} in the model bundle" in str(caught.value)
    assert "does not match its manifest" in str(caught.value)
    Bundle.load(bundle_copy, verify=False)  # the caller may skip hashing on purpose


def test_a_missing_file_is_an_error_naming_it(bundle_copy: Path) -> None:
    (bundle_copy / "model_fp16.onnx").unlink()
    with pytest.raises(BundleError, match="model_fp16.onnx is missing from the model bundle"):
        Bundle.load(bundle_copy)


def test_precisions_and_paths(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    assert bundle.available_precisions == ("fp32", "fp16", "int8")
    assert bundle.onnx_path("int8") == tiny_bundle / "model_int8.onnx"
    assert bundle.onnx_sha256 == bundle.manifest.files["model.onnx"]
    with pytest.raises(BundleError, match="unknown precision 'bf16'"):
        bundle.onnx_path("bf16")

    partial = Path(shutil.copytree(tiny_bundle, tmp_path / "fp32-only"))
    (partial / "model_int8.onnx").unlink()
    (partial / "model_fp16.onnx").unlink()
    manifest = Manifest.load(partial)
    replace(manifest, files={k: v for k, v in manifest.files.items() if "_" not in k}).save(partial)
    reduced = Bundle.load(partial)
    assert reduced.available_precisions == ("fp32",)
    with pytest.raises(BundleError, match=r"has no int8 graph \(model_int8.onnx\)"):
        reduced.onnx_path("int8")


def test_the_store_finds_bundles_by_name_version_and_path(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    for version in ("2", "10", "9"):
        source = Path(shutil.copytree(tiny_bundle, tmp_path / f"v{version}"))
        replace(Manifest.load(source), version=version).save(source)
        install_bundle(source, home)
    assert [b.version for b in list_bundles(home)] == ["2", "9", "10"]
    assert find_bundle("tiny", home=home).version == "10"  # natural order: 10 is newest
    assert find_bundle("tiny@9", home=home).path == bundle_dir("tiny", "9", home)
    assert find_bundle(str(bundle_dir("tiny", "2", home))).version == "2"
    assert find_bundle(bundle_dir("tiny", "2", home)).version == "2"

    with pytest.raises(BundleError, match=r"no model named 'other' .*models: tiny"):
        find_bundle("other", home=home)
    with pytest.raises(BundleError, match=r"has no version 3 .*versions: 2, 9, 10"):
        find_bundle("tiny@3", home=home)
    with pytest.raises(BundleError, match="no model bundle at .*nowhere"):
        find_bundle(tmp_path / "nowhere", home=home)
    with pytest.raises(BundleError, match="already exists"):
        source = Path(shutil.copytree(tiny_bundle, tmp_path / "again"))
        replace(Manifest.load(source), version="9").save(source)
        install_bundle(source, home)


def test_versions_sort_naturally() -> None:
    versions = ["1.10", "1.9", "2", "10", "1", "2024-01-05", "2024-01-10"]
    assert sorted(versions, key=version_key) == [
        "1",
        "1.9",
        "1.10",
        "2",
        "10",
        "2024-01-05",
        "2024-01-10",
    ]


@pytest.mark.parametrize("reference", ["name@", "name@..", "name@ 1"])
def test_a_reference_with_an_empty_or_unsafe_version_is_refused(
    reference: str, tmp_path: Path
) -> None:
    """``name@`` is not "the newest version of name" (Hypothesis found it read that way)."""
    with pytest.raises(BundleError, match="model version .* is not allowed"):
        find_bundle(reference, home=tmp_path)
