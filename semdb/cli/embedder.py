"""Loading the embedder for a command, lazily (ONNX Runtime only when a command needs it)."""

from __future__ import annotations

from typing import Any

import click
import sqlalchemy as sa

from semdb.errors import SemdbError, SyncError

MODEL_HELP = (
    "Model bundle: name, name@version or folder. Default: the model of the registered columns."
)
PROVIDER_CHOICES = ["auto", "cpu", "cuda"]


def provider_option(function: Any) -> Any:
    """``--provider auto|cpu|cuda``."""
    return click.option(
        "--provider",
        type=click.Choice(PROVIDER_CHOICES),
        default="auto",
        show_default=True,
        help="ONNX Runtime execution provider; auto: CUDA when it really runs, else CPU.",
    )(function)


def columns_option(function: Any) -> Any:
    """``--column TABLE.COLUMN`` (repeatable): only these registered columns."""
    return click.option(
        "--column",
        "columns",
        multiple=True,
        metavar="TABLE.COLUMN",
        help="Only these registered columns (repeatable). Default: all of the model.",
    )(function)


def model_option(function: Any) -> Any:
    """``--model`` (default: the registered columns' model) and ``--provider``."""
    function = provider_option(function)
    return click.option("--model", "model", default=None, help=MODEL_HELP)(function)


def load_embedder(model: str, provider: str) -> Any:
    """semdb's ONNX Runtime embedder for ``model``."""
    try:
        from semdb.embed import Embedder
    except ImportError as exc:
        raise SemdbError(
            f"the embedder cannot be loaded here ({exc})",
            fix="install ONNX Runtime with semdb: pip install 'semdb[cpu]' (or 'semdb[gpu]')",
        ) from exc
    return Embedder.load(model, provider=provider)


def default_model(engine: sa.Engine, columns: list[str] | None = None) -> str:
    """The one model the registered columns (or the named ones) use now: ``name@version``
    once an activation pinned the version, else the name (its newest local version)."""

    with engine.connect() as connection:
        return model_in_use(connection, columns)


def model_in_use(connection: sa.Connection, columns: list[str] | None = None) -> str:
    """:func:`default_model` on an open connection (shadow columns of activations left out,
    unless named)."""
    from semdb.sync.registry import registered

    targets = registered(connection, names=columns or None, shadows=bool(columns))
    models = sorted({target.model_tag for target in targets})
    if len(models) == 1:
        return models[0]
    if not models:
        raise SyncError(
            "no vector column is registered in this database, so there is no default model",
            fix="pass --model, or register columns with a migration (op.create_embedding_sync)",
        )
    raise SyncError(
        f"the registered columns use several models ({', '.join(models)})",
        fix="pass --model (one worker per model)",
    )
