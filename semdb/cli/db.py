"""``semdb db``: the database semdb uses, its embedded server and its schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import click
from rich.console import Console
from rich.table import Table

from semdb.config import database_url_setting, semdb_home
from semdb.db import EmbeddedServer, connect, create_engine, display_url, libpq_uri, resolve_url
from semdb.db.migrate import current_revision, head_revision, upgrade
from semdb.db.preflight import check_server
from semdb.db.url import configured_url


@click.group()
def db() -> None:
    """Start, stop, inspect and migrate the database."""


@db.command()
def start() -> None:
    """Start the embedded server and keep it running until `semdb db stop`."""
    if database_url_setting():
        click.echo("SEMDB_DATABASE_URL is set: semdb uses that server; nothing to start.")
        return
    url = EmbeddedServer().start()
    click.echo(f"embedded server running in {semdb_home()}")
    click.echo(libpq_uri(url))


@db.command()
def stop() -> None:
    """Stop the embedded server (processes still using it lose their connections)."""
    if database_url_setting():
        click.echo("SEMDB_DATABASE_URL is set: semdb does not manage that server.")
        return
    still_using = EmbeddedServer().stop()
    if still_using:
        pids = ", ".join(map(str, still_using))
        click.echo(f"stopped; these processes were still using it: {pids}", err=True)
    else:
        click.echo("stopped")


@db.command()
def status() -> None:
    """Show which server semdb uses, its pgvector and the schema revision."""
    console = Console()
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    server = None if database_url_setting() else EmbeddedServer()
    was_running = True
    if server is not None:
        before = server.status()
        was_running = before.running
        if before.stale_holders_removed:
            table.add_row(
                "recovered",
                "removed holders that died without stopping: "
                + ", ".join(map(str, before.stale_holders_removed)),
            )
    engine = create_engine(preflight=False)
    try:
        with connect(engine) as connection:
            info = check_server(connection)
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    table.add_row("database", display_url(engine.url))
    if server is not None:
        state = server.status()
        note = "running" if was_running else "started for this command"
        table.add_row(
            "server",
            f"embedded in {state.home} ({note}, pid {state.pid}"
            f"{', pinned by semdb db start' if state.pinned else ''})",
        )
    else:
        table.add_row("server", "SEMDB_DATABASE_URL")
    table.add_row("PostgreSQL", info.server_version)
    table.add_row(
        "pgvector",
        f"{info.pgvector_installed} installed"
        if info.pgvector_installed
        else f"{info.pgvector_available} available, not created yet (run: semdb db upgrade)",
    )
    schema_state = "up to date" if current == head else "behind (run: semdb db upgrade)"
    table.add_row("schema", f"{current or 'none'} (head {head}): {schema_state}")
    console.print(table)


@db.command()
@click.option(
    "--sqlalchemy", "sqlalchemy_form", is_flag=True, help="Print the postgresql+psycopg:// form."
)
def url(sqlalchemy_form: bool) -> None:
    """Print the database URI for other tools (psql, psycopg, SQLAlchemy)."""
    resolved = configured_url()
    if resolved is None:
        server = EmbeddedServer()
        resolved = server.url()
        if server.postmaster_pid() is None:
            click.echo(
                "note: the embedded server is not running; start it: semdb db start", err=True
            )
    if sqlalchemy_form:
        click.echo(resolved.render_as_string(hide_password=False))
    else:
        click.echo(libpq_uri(resolved))


@db.command(context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def psql(psql_args: tuple[str, ...]) -> None:
    """Open psql on the database (extra arguments go to psql)."""
    program = shutil.which("psql") or _bundled_psql()
    if program is None:
        raise click.ClickException(
            "psql is not installed. Fix: install the PostgreSQL client (postgresql-client)"
        )
    uri = libpq_uri(resolve_url())
    result = subprocess.run([program, uri, *psql_args], check=False)
    sys.exit(result.returncode)


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target Alembic revision.")
def upgrade_command(revision: str) -> None:
    """Create or migrate semdb's schema (and the vector extension) with Alembic."""
    engine = create_engine()
    try:
        before = current_revision(engine)
        after = upgrade(engine, revision)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"schema already at {after}")
    else:
        click.echo(f"schema upgraded: {before or 'empty'} -> {after}")


def _bundled_psql() -> str | None:
    from semdb.db.embedded import server_binaries

    candidate = server_binaries() / "psql"
    return str(candidate) if os.access(candidate, os.X_OK) else None
