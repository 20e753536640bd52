"""Vectors and tables for the vector tests: seeded, clustered, unit length."""

from __future__ import annotations

import uuid

import numpy as np


def clustered_vectors(n: int, dimension: int, *, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` centres: neighbours exist, as with real text."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension))
    points = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dimension))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def unique_name(prefix: str) -> str:
    """A table name no other test uses (tests share one database)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def exact_top_k(
    vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None
) -> list[int]:
    """Indices of the k nearest rows by cosine distance (among ``mask`` when given)."""
    similarity = vectors @ (query / np.linalg.norm(query))
    if mask is not None:
        similarity = np.where(mask, similarity, -np.inf)
    order = np.argsort(-similarity, kind="stable")
    chosen = [int(i) for i in order[:k] if np.isfinite(similarity[i])]
    return chosen
