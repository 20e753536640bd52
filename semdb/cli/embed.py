"""``semdb embed``: print the vectors of texts as JSON, for scripts.

$ semdb embed "first text" "second text" | jq '.vectors[0][:3]'
$ semdb embed --query "what is a vector database?"
"""

from __future__ import annotations

import json

import click

from semdb.bundles import DEFAULT_MODEL, PRECISIONS
from semdb.cli.embedder import provider_option


@click.command()
@click.argument("texts", nargs=-1, required=True)
@click.option(
    "--model",
    "model_ref",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Bundle: NAME, NAME@VERSION or a folder.",
)
@provider_option
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Default: fp16 on CUDA, fp32 on CPU.",
)
@click.option("--query", is_flag=True, help="Embed as queries (the model's query prefix).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads.")
def embed(
    texts: tuple[str, ...],
    model_ref: str,
    provider: str,
    precision: str | None,
    query: bool,
    threads: int | None,
) -> None:
    """Embed TEXTS and print one JSON object with the vectors, in input order.

    The object holds model, version, provider, precision, dimension, kind, truncated (how many
    texts were cut at the model's max tokens) and vectors (one list of floats per text).
    """
    import numpy as np

    from semdb.embed import Embedder

    embedder = Embedder.load(model_ref, provider=provider, precision=precision, threads=threads)
    vectors = embedder.embed(list(texts), kind="query" if query else "document")
    stats = embedder.last_stats
    output = {
        "model": embedder.model_name,
        "version": embedder.model_version,
        "provider": embedder.provider,
        "precision": embedder.precision,
        "dimension": embedder.dimension,
        "kind": "query" if query else "document",
        "truncated": stats.truncated if stats else 0,
        # float32 values written with the fewest digits that read back to the same float32
        "vectors": [[float(str(np.float32(x))) for x in row] for row in vectors],
    }
    click.echo(json.dumps(output))
