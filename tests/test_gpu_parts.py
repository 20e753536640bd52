"""bench/gpu/parts.py: a file split for the device calls comes back byte for byte, or fails."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import parts

ROOT = Path(__file__).resolve().parents[1]
KIB = 1024


@pytest.fixture()
def big(tmp_path: Path) -> Path:
    """A 1 MiB + 123 bytes file of random bytes (not a multiple of the part size)."""
    path = tmp_path / "onnxruntime_gpu-0-cp312-cp312-manylinux_2_28_x86_64.whl"
    path.write_bytes(os.urandom(1024 * KIB + 123))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu" / "parts.py"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_split_then_join_across_calls_gives_the_same_bytes(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    result = cli("split", str(big), str(out), "--part-size", "300KiB")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / (big.name + ".manifest.json")).read_text())
    assert [p["size"] for p in manifest["parts"]] == [300 * KIB] * 3 + [124 * KIB + 123]
    assert manifest["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()

    # Each device call carries a folder with one part and a copy of the manifest.
    store = tmp_path / "store"
    for index, entry in enumerate(manifest["parts"]):
        call = tmp_path / f"call{index}"
        call.mkdir()
        (call / entry["file"]).write_bytes((out / entry["file"]).read_bytes())
        (call / (big.name + ".manifest.json")).write_bytes(
            (out / (big.name + ".manifest.json")).read_bytes()
        )
        result = cli("receive", str(call), str(store))
        assert result.returncode == 0, result.stderr
        left = len(manifest["parts"]) - index - 1
        assert f"parts held in {store}: {index + 1};" in result.stdout
        assert ("missing: none" in result.stdout) == (left == 0)

    rebuilt = tmp_path / "rebuilt.whl"
    result = cli("join", str(store), str(rebuilt))
    assert result.returncode == 0, result.stderr
    assert rebuilt.read_bytes() == big.read_bytes()


def test_a_damaged_part_is_refused_on_arrival(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    parts.split(big, out, 400 * KIB)
    part = out / f"{big.name}.part002"
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF
    part.write_bytes(bytes(data))
    result = cli("receive", str(out), str(tmp_path / "store"))
    assert result.returncode == 1
    assert f"part {big.name}.part002 is damaged" in result.stderr


def test_join_names_the_missing_parts(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    parts.split(big, out, 400 * KIB)
    (out / f"{big.name}.part003").unlink()
    result = cli("join", str(out), str(tmp_path / "rebuilt"))
    assert result.returncode == 1
    assert f"lacks 1 part(s): {big.name}.part003" in result.stderr
    assert not (tmp_path / "rebuilt").exists()


def test_a_part_truncated_in_the_store_is_caught_by_join(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    parts.split(big, out, 400 * KIB)
    part = out / f"{big.name}.part001"
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(parts.PartsError, match="part001 has 409599 bytes"):
        parts.join(out, tmp_path / "rebuilt")


def test_parts_of_another_file_are_not_mixed(big: Path, tmp_path: Path) -> None:
    parts.split(big, tmp_path / "a", 400 * KIB)
    parts.receive(tmp_path / "a", tmp_path / "store")
    big.write_bytes(os.urandom(2000))
    parts.split(big, tmp_path / "b", 400 * KIB)
    with pytest.raises(parts.PartsError, match="holds parts of another"):
        parts.receive(tmp_path / "b", tmp_path / "store")


def test_sizes_parse_in_binary_units() -> None:
    assert parts.parse_size("60MiB") == 60 * 1024 * 1024
    assert parts.parse_size("512KiB") == 512 * 1024
    assert parts.parse_size("1000") == 1000
    with pytest.raises(ValueError, match="not a size"):
        parts.parse_size("60MB")
