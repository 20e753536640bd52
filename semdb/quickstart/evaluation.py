"""How well the loaded model retrieves a BEIR folder's judged documents, through the table.

The queries of the folder's qrels (the ``test`` split when there is one) are embedded by the
same embedder as the documents and answered by :func:`semdb.search` on the quickstart's
table, the path an application's queries take (HNSW, ``ef_search`` at least k), then scored
with :mod:`semdb.evaluation.metrics` (nDCG@10, MRR@10, Recall@10 and @100, trec_eval conventions).
``semdb eval`` scores a model the same way with exact search, for comparing models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from semdb.protocols import TextEmbedder, model_tag
from semdb.retrieval import search

DEPTH = 100


@dataclass
class FolderEvaluation:
    model: str
    split: str
    queries: int
    metrics: dict[str, float]
    queries_per_second: float

    def table(self) -> Table:
        table = Table(
            title=f"{self.model} on qrels/{self.split}.tsv ({self.queries:,} queries)",
            title_justify="left",
        )
        for name in self.metrics:
            table.add_column(name, justify="right")
        table.add_row(*(f"{value:.4f}" for value in self.metrics.values()))
        return table

    def summary(self) -> str:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in self.metrics.items())
        return (
            f"{scores} on {self.queries:,} queries of qrels/{self.split}.tsv "
            f"({self.queries_per_second:,.0f} searches/s)"
        )


def first_queries(folder: Path, count: int) -> list[str]:
    """The first ``count`` query texts of ``queries.jsonl`` (none when there is no file)."""
    path = folder / "queries.jsonl"
    if not path.is_file():
        return []
    found: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(found) == count:
                break
            try:
                text = json.loads(line).get("text")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(text, str) and text.strip():
                found.append(" ".join(text.split()))
    return found


def evaluate_folder(
    engine: sa.Engine,
    table: sa.Table,
    embedder: TextEmbedder,
    folder: Path,
    console: Console,
) -> FolderEvaluation | None:
    """Score the table's vectors on the folder's qrels; None when the folder has none."""
    import time

    from semdb.evaluation.beir import load_beir, qrels_splits
    from semdb.evaluation.metrics import DEFAULT_METRICS, evaluate_rankings

    splits = qrels_splits(folder)
    if not splits or not (folder / "queries.jsonl").is_file():
        return None
    split = "test" if "test" in splits else splits[0]
    data = load_beir(folder, split)
    query_ids = data.query_ids
    vectors = embedder.embed([data.queries[q] for q in query_ids], kind="query")
    rankings: dict[str, list[str]] = {}
    progress = Progress(
        TextColumn("  searching"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    started = time.perf_counter()
    with progress, engine.connect() as connection:
        task = progress.add_task("searching", total=len(query_ids))
        for query_id, vector in zip(query_ids, vectors, strict=True):
            hits = search(connection, table.c.embedding, vector, k=DEPTH)
            rankings[query_id] = [str(hit.row.id) for hit in hits]
            progress.advance(task)
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = evaluate_rankings(rankings, data.qrels, DEFAULT_METRICS)
    return FolderEvaluation(
        model=model_tag(embedder),
        split=split,
        queries=len(query_ids),
        metrics={name: float(value) for name, value in metrics.items()},
        queries_per_second=len(query_ids) / seconds if seconds else 0.0,
    )
