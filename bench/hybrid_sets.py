"""The retrieval sets of bench/hybrid.py, in BEIR layout, and their MiniLM vectors.

``debdesc``: /work/shared/data/debdesc (27,224 package descriptions; test qrels for the
measurement; a validation split of 500 queries carved from the TRAIN qrels for tuning).

``stdlib``: built here from the standard library's docstrings (see bench/README-hybrid.md):
documents are docstrings without their summary paragraph, queries are the summary lines,
kept only where the query shares at most one stemmed word with its document: a
vocabulary-mismatch set, on which dense search is far ahead of BM25 by construction.

Vectors come from semdb's ONNX embedder (all-MiniLM-L6-v2 fp32, 256 tokens) and are cached
under bench/.cache (minutes per set on 2 cores, once).

    python -m bench.hybrid_sets debdesc     # encode and cache
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from bench.data import DEBDESC

CACHE = Path(__file__).resolve().parent / ".cache"
BUNDLE = Path("/work/main/bench/.cache/minilm-bundle")
VALIDATION_QUERIES = 500


@dataclass
class RetrievalSet:
    name: str
    doc_ids: list[str]
    docs: list[str]
    queries: dict[str, str]  # id -> text
    test: dict[str, set[str]]  # query id -> relevant doc ids
    validation: dict[str, set[str]]


def _qrels(path: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in path.read_text().splitlines()[1:]:
        query, doc, score = line.split("\t")
        if int(score) > 0:
            out.setdefault(query, set()).add(doc)
    return out


def debdesc() -> RetrievalSet:
    ids, docs = [], []
    for line in (DEBDESC / "corpus.jsonl").open():
        item = json.loads(line)
        ids.append(item["_id"])
        docs.append((item["title"] + " " + item["text"]).strip())
    queries = {}
    for line in (DEBDESC / "queries.jsonl").open():
        item = json.loads(line)
        queries[item["_id"]] = item["text"]
    test = _qrels(DEBDESC / "qrels" / "test.tsv")
    train = _qrels(DEBDESC / "qrels" / "train.tsv")
    chosen = sorted(train)
    random.Random(16).shuffle(chosen)
    validation = {q: train[q] for q in sorted(chosen[:VALIDATION_QUERIES])}
    return RetrievalSet("debdesc", ids, docs, queries, test, validation)


def stdlib(engine: Any) -> RetrievalSet:
    """The vocabulary-mismatch set, built from this interpreter's standard library.

    Every documented class, function and method whose docstring has a summary paragraph of
    at least 4 words and a rest of at least 15 words (duplicates dropped) gives a document,
    the rest of its docstring (cut at 2,000 characters), and a candidate query, its summary.
    A query is kept only when it shares at most one term (PostgreSQL's english
    configuration, the BM25 leg's own analysis) with its document: paraphrase-like queries
    that word matching cannot answer but meaning can. Every document stays in the corpus.
    Queries are split by a hash of their name: 30% validation (tuning), 70% test.
    """
    from semdb.quickstart.stdlib_docs import stdlib_docs

    docs: dict[str, str] = {}
    summaries: dict[str, str] = {}
    seen: set[str] = set()
    for entry in stdlib_docs():
        if entry.kind == "module":
            continue
        paragraphs = [p.strip() for p in entry.doc.split("\n\n") if p.strip()]
        rest = " ".join(" ".join(paragraphs[1:]).split())[:2000]
        summary = " ".join(entry.summary.split())
        if len(summary.split()) < 4 or len(rest.split()) < 15 or rest in seen:
            continue
        seen.add(rest)
        docs[entry.qualname] = rest
        if summary not in summaries.values():
            summaries[entry.qualname] = summary
    names = sorted(summaries)
    with engine.connect() as connection:
        shared = connection.execute(
            sa.text(
                "SELECT n, (SELECT count(*) FROM unnest(tsvector_to_array(to_tsvector("
                "'english', q))) AS t WHERE t = ANY(tsvector_to_array(to_tsvector('english', d)))) "
                "FROM unnest(CAST(:n AS text[]), CAST(:q AS text[]), CAST(:d AS text[])) "
                "AS x(n, q, d)"
            ),
            {"n": names, "q": [summaries[n] for n in names], "d": [docs[n] for n in names]},
        ).all()
    kept = sorted(name for name, count in shared if count <= 1)
    queries = {f"q:{name}": summaries[name] for name in kept}
    test, validation = {}, {}
    for name in kept:
        bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
        (validation if bucket < 3 else test)[f"q:{name}"] = {name}
    ids = sorted(docs)
    return RetrievalSet("stdlib", ids, [docs[i] for i in ids], queries, test, validation)


def embedder():  # type: ignore[no-untyped-def]
    from semdb.embed import Embedder

    return Embedder.load(
        BUNDLE if BUNDLE.exists() else CACHE / "minilm-bundle", provider="cpu", precision="fp32"
    )


def vectors(texts: list[str], kind: str) -> np.ndarray:
    """MiniLM vectors of ``texts`` through semdb's embedder, cached by content."""
    digest = hashlib.sha256(("\x00".join(texts) + kind).encode()).hexdigest()[:16]
    path = CACHE / f"hybrid-{kind}-{len(texts)}-{digest}.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    model = embedder()
    started = time.perf_counter()
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 2048 < n:
            print(f"  {done[0]}/{len(texts)} {time.perf_counter() - started:.0f} s", flush=True)

    matrix = model.embed(texts, kind=kind, on_batch=progress)  # type: ignore[arg-type]
    print(f"encoded {len(texts)} {kind} texts in {time.perf_counter() - started:.0f} s")
    np.save(path, matrix)
    return matrix


def set_vectors(data: RetrievalSet) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The documents' vectors and those of the test and validation queries."""
    wanted = sorted(set(data.test) | set(data.validation))
    query_matrix = vectors([data.queries[q] for q in wanted], "query")
    doc_matrix = vectors(data.docs, "document")
    return doc_matrix, dict(zip(wanted, query_matrix, strict=True))


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "debdesc"
    if name == "stdlib":
        from bench.common import engine

        data = stdlib(engine())
        print(
            len(data.docs), "documents", len(data.test), "test", len(data.validation), "validation"
        )
    else:
        data = debdesc()
    docs, queries = set_vectors(data)
    print(docs.shape, len(queries))
