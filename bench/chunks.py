"""Long documents: chunked vs truncated retrieval quality on Python's standard library docs.

    python -m bench.chunks [--modules 60] [--max-chars 30000] [--model BUNDLE]

The set (written in BEIR layout under bench/.cache/stdlib-long/: corpus.jsonl, queries.jsonl,
qrels/test.tsv): each module's full ``pydoc`` text is a document; the one-line summaries of
its functions and classes (at least 5 words, 3 per module) are queries whose one relevant
document is their module (the summary's own text stays in the document: the task is finding
the passage in a long text, which truncation loses).

Scoring here is exact and in memory (numpy): truncated = the model's embedding of the whole
text (cut at its window, as an unchunked column stores it); chunked = max similarity over
the chunks semdb's Splitter makes (what ``semdb.search`` over a chunked column ranks by; the
tests check that the SQL agrees with brute force). A first slice: the database run of the
issue's targets (latency, worker throughput, debdesc) is not measured here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import CACHE

FOLDER = CACHE / "stdlib-long"
_EXTRACT = r"""
import importlib, inspect, json, pydoc, sys
out = []
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        text = pydoc.render_doc(module, renderer=pydoc.plaintext)
    except BaseException:
        continue
    summaries = []
    for attr, value in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(value, "__module__", None) != name:
            continue
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        doc = (inspect.getdoc(value) or "").strip().split("\n\n")[0].replace("\n", " ")
        if len(doc.split()) >= 5:
            summaries.append(doc)
    out.append({"name": name, "text": text, "summaries": summaries})
print(json.dumps(out))
"""


def build(modules: int, max_chars: int) -> Path:
    skipped = (
        "this",
        "antigravity",
        "idlelib",
        "tkinter",
        "turtle",
        "test",
        "lib2to3",
        "ensurepip",
        "pydoc_data",
        "venv",
        "msilib",
        "winreg",
        "winsound",
        "turtledemo",
    )
    names = sorted(
        n for n in sys.stdlib_module_names if not n.startswith("_") and not n.startswith(skipped)
    )
    found = json.loads(
        subprocess.run(
            [sys.executable, "-c", _EXTRACT, *names], capture_output=True, text=True, check=True
        ).stdout
    )
    chosen = [m for m in found if 3000 <= len(m["text"]) <= max_chars and len(m["summaries"]) >= 2][
        :modules
    ]
    (FOLDER / "qrels").mkdir(parents=True, exist_ok=True)
    with (FOLDER / "corpus.jsonl").open("w") as corpus:
        for m in chosen:
            corpus.write(json.dumps({"_id": m["name"], "title": "", "text": m["text"]}) + "\n")
    with (
        (FOLDER / "queries.jsonl").open("w") as queries,
        (FOLDER / "qrels" / "test.tsv").open("w") as qrels,
    ):
        qrels.write("query-id\tcorpus-id\tscore\n")
        for m in chosen:
            for i, summary in enumerate(m["summaries"][:3]):
                qid = f"{m['name']}:{i}"
                queries.write(json.dumps({"_id": qid, "text": summary}) + "\n")
                qrels.write(f"{qid}\t{m['name']}\t1\n")
    return FOLDER


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modules", type=int, default=60)
    parser.add_argument("--max-chars", type=int, default=30000)
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a bundle name or folder")
    args = parser.parse_args()
    import semdb
    from semdb.evaluation.metrics import ndcg_at_k, recall_at_k
    from semdb.sync.chunking import Splitter

    folder = build(args.modules, args.max_chars)
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    queries = [json.loads(line) for line in (folder / "queries.jsonl").open()]
    embedder = semdb.Embedder.load(args.model, provider="cpu")
    splitter = Splitter.for_embedder(embedder, semdb.Chunks(max_tokens=256, overlap=32))
    ids = [d["_id"] for d in corpus]
    started = time.perf_counter()
    truncated = embedder.embed([d["text"] for d in corpus])
    t_trunc = time.perf_counter() - started
    owners, texts = [], []
    for index, d in enumerate(corpus):
        for chunk in splitter.split(d["text"]):
            owners.append(index)
            texts.append(chunk.text)
    started = time.perf_counter()
    chunk_vectors = embedder.embed(texts)
    t_chunks = time.perf_counter() - started
    tokens = embedder.last_stats.tokens if embedder.last_stats else 0
    q = embedder.embed([x["text"] for x in queries], kind="query")
    owner = np.asarray(owners)
    results: dict[str, list[tuple[float, float]]] = {"truncated": [], "chunked": []}
    for qi, query in enumerate(queries):
        relevant = {query["_id"].rsplit(":", 1)[0]: 1}
        scores_t = truncated @ q[qi]
        sims = chunk_vectors @ q[qi]
        best = np.full(len(corpus), -2.0)
        np.maximum.at(best, owner, sims)
        for name, scores in (("truncated", scores_t), ("chunked", best)):
            ranking = [ids[i] for i in np.argsort(-scores)]
            results[name].append(
                (ndcg_at_k(ranking, relevant, 10), recall_at_k(ranking, relevant, 100))
            )
    print(
        f"{len(corpus)} documents (median {int(np.median([len(d['text']) for d in corpus]))} "
        f"chars), {len(texts)} chunks, {len(queries)} queries"
    )
    for name, rows in results.items():
        ndcg = 100 * float(np.mean([r[0] for r in rows]))
        recall = 100 * float(np.mean([r[1] for r in rows]))
        print(f"{name:10s} nDCG@10 {ndcg:5.1f}  Recall@100 {recall:5.1f}")
    print(
        f"embedding: truncated {t_trunc:.1f} s, chunks {t_chunks:.1f} s "
        f"({tokens / max(t_chunks, 1e-9):.0f} tokens/s)"
    )


if __name__ == "__main__":
    main()
