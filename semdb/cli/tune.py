"""``semdb tune-hybrid``: choose a column's hybrid fusion on a BEIR folder's validation queries.

The table must hold the BEIR corpus, keyed by the corpus id (one key column), with its
vectors and BM25 statistics (``keyword=True``). The queries are embedded with the column's
model (semdb's ONNX embedder); the choice is stored in ``semdb.hybrid_fusion`` and
``semdb.hybrid_search`` (Python and SQL) uses it from then on.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from semdb.cli.embedder import default_model, load_embedder, model_option
from semdb.db import create_engine
from semdb.errors import SemdbError


@click.command("tune-hybrid")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--column", "name", required=True, help="The vector column: TABLE.COLUMN.")
@click.option(
    "--split", default="validation", show_default=True, help="qrels/SPLIT.tsv to tune on."
)
@click.option("--queries", "limit", type=int, help="At most this many queries (a fixed sample).")
@click.option("--candidates", default=100, show_default=True, help="Rows per leg.")
@click.option("--dry-run", is_flag=True, help="Report the choice, store nothing.")
@model_option
def tune_hybrid_command(
    folder: Path,
    name: str,
    split: str,
    limit: int | None,
    candidates: int,
    dry_run: bool,
    model: str | None,
    provider: str,
) -> None:
    """Grid-search the fusion (RRF k and weights, convex weights) of hybrid_search for
    TABLE.COLUMN on FOLDER's qrels/SPLIT.tsv queries, and store the best one."""
    from semdb.retrieval.tuning import describe, tune_hybrid

    queries, qrels = _beir(folder, split)
    if limit is not None and limit < len(qrels):
        chosen = sorted(qrels)
        random.Random(0).shuffle(chosen)
        qrels = {q: qrels[q] for q in sorted(chosen[:limit])}
    engine = create_engine()
    try:
        embedder = load_embedder(model or default_model(engine, [name]), provider)
        with engine.begin() as connection:
            column = registered_column(connection, name)
            result = tune_hybrid(
                connection,
                column,
                queries,
                qrels,
                embedder=embedder,
                candidates=candidates,
                store=not dry_run,
            )
    finally:
        engine.dispose()
    click.echo(f"{result.queries} queries of {folder}/qrels/{split}.tsv, nDCG@10:")
    click.echo(f"  semantic leg alone  {result.semantic_ndcg:.4f}")
    click.echo(f"  keyword leg alone   {result.keyword_ndcg:.4f}")
    click.echo(f"  untuned RRF         {result.scores['rrf k=60 weights=0.5/0.5']:.4f}")
    click.echo(f"  chosen: {describe(result.fusion)}  {result.ndcg:.4f}")
    click.echo("(not stored: --dry-run)" if dry_run else f"stored for {name}")


def _beir(folder: Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    path = folder / "qrels" / f"{split}.tsv"
    if not path.exists():
        raise SemdbError(
            f"{path} does not exist",
            fix="carve a validation split from the train qrels (never tune on test), "
            "or pass --split train",
        )
    qrels: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines()[1:]:
        query, doc, score = line.split("\t")
        qrels.setdefault(query, {})[doc] = float(score)
    queries = {}
    with (folder / "queries.jsonl").open() as lines:
        for line in lines:
            item = json.loads(line)
            queries[item["_id"]] = item["text"]
    return queries, qrels


def registered_column(connection: sa.Connection, name: str) -> Any:
    """``TABLE.COLUMN`` (or SCHEMA.TABLE.COLUMN) as a column semdb can search, built from
    its registration and the table as the database has it."""
    from semdb.orm import HNSW, Distance
    from semdb.orm.declaration import INFO_KEY, EmbeddingSpec
    from semdb.sync.registry import find

    parts = name.split(".")
    if len(parts) not in (2, 3):
        raise SemdbError(f"--column must be TABLE.COLUMN, got {name!r}", fix="e.g. docs.embedding")
    schema, table, column = (["public"] + parts)[-3:]
    target = find(connection, schema, table, column)
    if target is None:
        raise SemdbError(f"{name} is not a registered vector column", fix="semdb db status")
    with warnings.catch_warnings():  # the vector type is unknown to reflection
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        reflected = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=connection)
    vector = reflected.c[column]
    vector.info[INFO_KEY] = EmbeddingSpec(
        sources=target.sources,
        model=target.model,
        dimension=target.dimension,
        distance=Distance.parse(target.distance),
        storage=target.storage,
        index=HNSW(halfvec=target.index_storage != target.storage),
        sync=target.sync,  # type: ignore[arg-type]
        fulltext=target.fulltext,
        model_column=target.model_column,
        hash_column=target.hash_column,
    )
    return vector
