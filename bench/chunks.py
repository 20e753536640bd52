"""Long documents: chunked vs truncated retrieval quality on Python's standard library docs;
on debdesc (short documents), quality and ``semdb worker`` throughput chunked vs unchunked.

    python -m bench.chunks [--modules 60] [--max-chars 30000] [--model BUNDLE]
    python -m bench.chunks --set debdesc [--docs 6000] [--worker-docs 1000]

The set (written in BEIR layout under bench/.cache/stdlib-long/: corpus.jsonl, queries.jsonl,
qrels/test.tsv): each module's full ``pydoc`` text is a document; the one-line summaries of
its functions and classes (at least 5 words, 3 per module) are queries whose one relevant
document is their module (the summary's own text stays in the document: the task is finding
the passage in a long text, which truncation loses).

Scoring here is exact and in memory (numpy): truncated = the model's embedding of the whole
text (cut at its window, as an unchunked column stores it); chunked = max similarity over
the chunks semdb's Splitter makes (what ``semdb.search`` over a chunked column ranks by; the
tests check that the SQL agrees with brute force). Latency: ``bench/chunks_latency.py``.

``--set debdesc`` (``../shared/data/debdesc``, read in place, BEIR layout: test queries,
corpus): every document is split as a chunked column would split it (counted: how many need
more than one chunk); nDCG@10 and Recall@100 on the test queries against ``--docs``
documents (every test query's relevant document, every document of several chunks, then
others in corpus order; 0: the whole corpus), truncated vs chunked (a document of one chunk
has the same vector both ways, so only the others are embedded twice). Then ``semdb
worker`` over ``--worker-docs`` documents queued in two tables of one server
(``SEMDB_HOME``, default bench/.cache/semdb-home), unchunked and chunked, ``--rounds`` times
each, the side going first alternating:
rows/s and tokens/s, next to the raw embedder's tokens/s on the same chunk texts.

Measured here (debdesc, MiniLM fp32 ONNX, 2 cores shared with other jobs, load 9-13, one run):
709 of 27,224 descriptions (2.6%) need more than one 254-token chunk (at most 29). On 6,000
documents (the 2,000 test queries' documents, the 709 long ones, then corpus order), 2,000
test queries: nDCG@10 83.31 truncated, 82.95 chunked (-0.36, outside the issue's 0.3;
Recall@100 98.45 / 98.40); which queries lost, and why, was not analysed. The whole corpus
(the same 709 long documents among 27,224) was not scored: embedding it takes about 45
minutes here. Worker, 400 documents (414 chunks, 42,401 tokens; 40,849 truncated), 3 runs
per side: unchunked 8.0 / 8.8 / 8.5 rows/s, chunked 8.8 / 8.5 / 7.9 (best: 1.01x the rows/s,
1.05x the tokens/s); the chunked worker's best 935 tokens/s is 0.80x the raw embedder's
1,168 on the same chunks, measured once before the runs (embedding is 95% of the worker's
time, so most of that gap is the load moving between the two measurements).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument("--set", choices=("stdlib", "debdesc"), default="stdlib")
    parser.add_argument("--modules", type=int, default=60)
    parser.add_argument("--max-chars", type=int, default=30000)
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a bundle name or folder")
    parser.add_argument("--docs", type=int, default=6000, help="debdesc documents (0: all)")
    parser.add_argument("--worker-docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="worker runs per side")
    parser.add_argument("--worker-only", action="store_true", help="debdesc: no quality run")
    args = parser.parse_args()
    if args.set == "debdesc":
        debdesc(args)
        return
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


# -- debdesc: short documents ------------------------------------------------------------------


def load_embedder(model: str) -> Any:
    import semdb

    if model == "all-MiniLM-L6-v2" and (CACHE / "minilm-bundle" / "manifest.json").exists():
        model = str(CACHE / "minilm-bundle")  # bench/search.py's export
    return semdb.Embedder.load(model, provider="cpu")


def debdesc(args: argparse.Namespace) -> None:
    import semdb
    from bench.data import DEBDESC
    from semdb.evaluation.metrics import ndcg_at_k, recall_at_k
    from semdb.sync.chunking import Splitter

    embedder = load_embedder(args.model)
    chunking = semdb.Chunks(max_tokens=256, overlap=32)
    splitter = Splitter.for_embedder(embedder, chunking)
    corpus = [json.loads(line) for line in (DEBDESC / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (DEBDESC / "queries.jsonl").open())}
    qrels = [line.split("\t") for line in (DEBDESC / "qrels" / "test.tsv").read_text().splitlines()]
    test = [(qid, doc) for qid, doc, *_ in qrels[1:]]
    started = time.perf_counter()
    chunks = {d["_id"]: splitter.split(d["text"]) for d in corpus}
    several = {i for i, c in chunks.items() if len(c) > 1}
    print(
        f"debdesc: {len(corpus)} documents split in {time.perf_counter() - started:.0f} s "
        f"(window {splitter.window} tokens): {len(several)} ({len(several) / len(corpus):.1%}) "
        f"need more than one chunk, at most {max(len(c) for c in chunks.values())}"
    )
    if args.worker_only:
        worker_throughput(embedder, chunking, splitter, corpus[: args.worker_docs], args.rounds)
        return
    wanted = {doc for _, doc in test} | several
    chosen = [d for d in corpus if d["_id"] in wanted]
    if args.docs:
        others = [d for d in corpus if d["_id"] not in wanted]
        chosen += others[: max(args.docs - len(chosen), 0)]
    else:
        chosen = corpus
    ids = [d["_id"] for d in chosen]
    started = time.perf_counter()
    truncated = embedder.embed([d["text"] for d in chosen])
    owners, texts = [], []
    for index, d in enumerate(chosen):
        if d["_id"] in several:
            for chunk in chunks[d["_id"]]:
                owners.append(index)
                texts.append(chunk.text)
    chunk_vectors = embedder.embed(texts) if texts else np.zeros((0, truncated.shape[1]))
    q = embedder.embed([queries[qid] for qid, _ in test], kind="query")
    print(
        f"{len(chosen)} documents, {len(texts)} chunks of {len(several & set(ids))} long ones, "
        f"{len(test)} test queries embedded in {time.perf_counter() - started:.0f} s"
    )
    owner = np.asarray(owners, dtype=np.int64)
    long_rows = np.asarray(sorted({int(o) for o in owners}), dtype=np.int64)
    results: dict[str, list[tuple[float, float]]] = {"truncated": [], "chunked": []}
    for qi, (_, doc) in enumerate(test):
        relevant = {doc: 1}
        scores_t = truncated @ q[qi]
        best = scores_t.copy()  # one chunk: the same vector
        if len(texts):
            sims = chunk_vectors @ q[qi]
            best[long_rows] = -2.0
            np.maximum.at(best, owner, sims)
        for name, scores in (("truncated", scores_t), ("chunked", best)):
            ranking = [ids[i] for i in np.argsort(-scores)[:100]]
            results[name].append(
                (ndcg_at_k(ranking, relevant, 10), recall_at_k(ranking, relevant, 100))
            )
    for name, rows in results.items():
        ndcg = 100 * float(np.mean([r[0] for r in rows]))
        recall = 100 * float(np.mean([r[1] for r in rows]))
        print(f"{name:10s} nDCG@10 {ndcg:6.2f}  Recall@100 {recall:6.2f}")
    if args.worker_docs:
        worker_throughput(embedder, chunking, splitter, corpus[: args.worker_docs], args.rounds)


def worker_throughput(
    embedder: Any, chunking: Any, splitter: Any, documents: list[Any], rounds: int
) -> None:
    """``semdb worker`` over the same documents queued in an unchunked and a chunked table,
    ``rounds`` times each, the side that goes first alternating."""
    import os

    import sqlalchemy as sa
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import semdb
    import semdb.alembic
    from bench.common import engine as bench_engine
    from semdb.sync import SyncTarget, Worker

    class Base(DeclarativeBase):
        pass

    def table(name: str, chunked: bool) -> Any:
        return type(
            name,
            (Base,),
            {
                "__tablename__": name,
                "id": mapped_column(sa.Integer, primary_key=True),
                "body": mapped_column(sa.Text),
                "embedding": semdb.embedding_column(
                    "body",
                    model=embedder.model_name,
                    dimension=embedder.dimension,
                    sync="queued",
                    chunking=chunking if chunked else None,
                ),
                "__annotations__": {"id": Mapped[int], "body": Mapped[str]},
            },
        )

    flat, split = table("bench_worker_flat", False), table("bench_worker_chunked", True)
    engine = bench_engine()
    texts = [d["text"] for d in documents]
    chunk_texts = [c.text for text in texts for c in splitter.split(text)]
    embedder.embed(texts)
    truncated_tokens = embedder.last_stats.tokens if embedder.last_stats else 0
    started = time.perf_counter()
    embedder.embed(chunk_texts)
    raw_seconds = time.perf_counter() - started
    tokens = embedder.last_stats.tokens if embedder.last_stats else 0
    print(
        f"worker: {len(texts)} documents, {len(chunk_texts)} chunks, {tokens} tokens "
        f"({truncated_tokens} truncated at the window); raw embedder on the chunks "
        f"{tokens / raw_seconds:,.0f} tokens/s"
    )
    measured: dict[str, list[tuple[float, float]]] = {"unchunked": [], "chunked": []}
    sides = [("unchunked", flat), ("chunked", split)]
    for turn in range(rounds):
        for label, model in sides if turn % 2 == 0 else sides[::-1]:
            Base.metadata.drop_all(engine)
            with engine.begin() as connection:
                connection.execute(sa.text("DELETE FROM semdb.queue"))
                for old in (flat, split):
                    target = SyncTarget.from_column(old.embedding)
                    connection.execute(
                        sa.text("DELETE FROM semdb.vector_columns WHERE table_name = :t"),
                        {"t": target.table_name},
                    )
            Base.metadata.create_all(engine)
            with engine.begin() as connection:
                target = SyncTarget.from_column(model.embedding)
                Operations(MigrationContext.configure(connection)).create_embedding_sync(
                    model.__tablename__,
                    "embedding",
                    sources=["body"],
                    model=embedder.model_name,
                    dimension=embedder.dimension,
                    chunking=target.chunking,
                )
                connection.execute(
                    sa.insert(model), [{"id": i, "body": t} for i, t in enumerate(texts)]
                )
            stats = Worker(
                engine, embedder, batch_size=64, columns=[f"{model.__tablename__}.embedding"]
            ).run(until_empty=True)
            assert stats.embedded == len(texts), stats
            measured[label].append(
                (len(texts) / stats.seconds, stats.embed_seconds / stats.seconds)
            )
    for label, runs in measured.items():
        rates = ", ".join(f"{r:.1f}" for r, _ in runs)
        print(f"{label:10s} worker rows/s {rates} (embedding {runs[-1][1]:.0%} of the time)")
    best = {label: max(rate for rate, _ in runs) for label, runs in measured.items()}
    worker_tokens = tokens * best["chunked"] / len(texts)
    print(
        f"chunked worker {worker_tokens:,.0f} tokens/s = "
        f"{worker_tokens / (tokens / raw_seconds):.2f}x the raw embedder; rows/s chunked / "
        f"unchunked {best['chunked'] / best['unchunked']:.2f}; tokens/s chunked / unchunked "
        f"{best['chunked'] * tokens / (best['unchunked'] * truncated_tokens):.2f}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    Base.metadata.drop_all(engine)


if __name__ == "__main__":
    main()
