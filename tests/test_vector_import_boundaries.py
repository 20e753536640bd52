"""Declaring, searching, syncing and migrating load neither ONNX Runtime nor torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "sentence_transformers", "optimum", "onnxruntime")


@pytest.mark.parametrize(
    "module", ["semdb.orm", "semdb.retrieval", "semdb.sync", "semdb.alembic", "semdb.cli.sql"]
)
def test_the_vector_layers_load_no_model_runtime(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
