"""Fixtures shared by the sync tests (imported by those modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .embedders import load_tiny_embedder


@pytest.fixture(scope="session")
def tiny_embedder(request: pytest.FixtureRequest) -> Any:
    """A real embedder for the tiny model: name "tiny", version "1", 32 dimensions."""
    bundle: Path | None = None
    try:
        bundle = request.getfixturevalue("tiny_bundle")
    except pytest.FixtureLookupError:
        bundle = None
    model_dir = None if bundle is not None else request.getfixturevalue("tiny_model_dir")
    return load_tiny_embedder(bundle, model_dir)
