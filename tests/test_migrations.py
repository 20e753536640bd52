"""semdb's schema under Alembic: upgrade, downgrade, upgrade again, and no drift."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from sqlalchemy.engine import URL

import semdb
from semdb.db import libpq_uri
from semdb.db.migrate import current_revision, downgrade, head_revision, upgrade

ROOT = Path(__file__).resolve().parent.parent


def alembic(*args: str, url: URL) -> subprocess.CompletedProcess[str]:
    """The ``alembic`` command as a user runs it from the checkout."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "SEMDB_DATABASE_URL": libpq_uri(url)},
        check=False,
        timeout=120,
    )


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema="semdb"))


def test_upgrade_downgrade_upgrade_round_trips(empty_database_url: URL) -> None:
    engine = semdb.create_engine(empty_database_url)
    try:
        assert current_revision(engine) is None
        assert upgrade(engine) == head_revision()
        assert "models" in tables(engine)
        with engine.connect() as connection:
            assert connection.scalar(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            )
        assert downgrade(engine, "base") is None
        assert "models" not in tables(engine)
        assert upgrade(engine) == head_revision()
        assert "models" in tables(engine)
    finally:
        engine.dispose()


def test_alembic_command_line_upgrades_and_finds_no_drift(empty_database_url: URL) -> None:
    upgraded = alembic("upgrade", "head", url=empty_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    checked = alembic("check", url=empty_database_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr
    current = alembic("current", url=empty_database_url)
    assert head_revision() in current.stdout


def test_drift_is_reported_when_the_database_differs(empty_database_url: URL) -> None:
    """The check above can fail: a column semdb does not know about is drift."""
    assert alembic("upgrade", "head", url=empty_database_url).returncode == 0
    engine = sa.create_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE semdb.models ADD COLUMN stray integer"))
    engine.dispose()
    checked = alembic("check", url=empty_database_url)
    assert checked.returncode != 0
    assert "stray" in checked.stdout + checked.stderr


def test_user_tables_are_not_semdb_drift(empty_database_url: URL) -> None:
    engine = semdb.create_engine(empty_database_url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE public.notes (id int primary key, body text)"))
    engine.dispose()
    checked = alembic("check", url=empty_database_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_version_table_lives_in_the_semdb_schema(engine: sa.Engine) -> None:
    assert "alembic_version" in tables(engine)
    assert "alembic_version" not in sa.inspect(engine).get_table_names(schema="public")


def test_programmatic_config_uses_the_same_scripts_as_alembic_ini() -> None:
    from alembic.script import ScriptDirectory

    from_ini = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    assert from_ini.get_current_head() == head_revision()
    assert Path(from_ini.dir).resolve() == (ROOT / "migrations").resolve()


def test_activations_revision_downgrades_and_upgrades_again(empty_database_url: URL) -> None:
    engine = semdb.create_engine(empty_database_url)
    try:
        upgrade(engine)
        assert "activations" in tables(engine)
        downgrade(engine, "0002_sync_and_search")
        assert "activations" not in tables(engine)
        columns = {c["name"] for c in sa.inspect(engine).get_columns("vector_columns", "semdb")}
        assert "model_version" not in columns and "shadow_of" not in columns
        assert upgrade(engine) == head_revision()
        columns = {c["name"] for c in sa.inspect(engine).get_columns("vector_columns", "semdb")}
        assert {"model_version", "shadow_of"} <= columns
    finally:
        engine.dispose()


def test_writes_to_synced_tables_keep_working_after_a_downgrade(
    empty_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """Downgrading semdb's schema drops the registry and the queue: the sync triggers on the
    application's tables go with them (the application's writes keep working), with a
    message saying what to do after upgrading again; registering again works."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import semdb.alembic  # op.create_embedding_sync

    def register(connection: sa.Connection) -> None:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "synced_docs", "embedding", sources=["body"], model="tiny", dimension=3
        )

    def queued(connection: sa.Connection) -> int:
        return int(connection.execute(sa.text("SELECT count(*) FROM semdb.queue")).scalar() or 0)

    engine = semdb.create_engine(empty_database_url)
    try:
        upgrade(engine)
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE TABLE synced_docs (id int PRIMARY KEY, body text, "
                    "embedding vector(3), embedding_model text, embedding_hash bytea)"
                )
            )
            register(connection)
            connection.execute(sa.text("INSERT INTO synced_docs (id, body) VALUES (1, 'one')"))
            assert queued(connection) == 1
        with caplog.at_level(logging.WARNING):
            assert downgrade(engine, "base") is None
        with engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO synced_docs (id, body) VALUES (2, 'two')"))
            connection.execute(sa.text("UPDATE synced_docs SET body = 'changed' WHERE id = 1"))
            triggers = connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_trigger "
                    "WHERE tgrelid = 'synced_docs'::regclass AND NOT tgisinternal"
                )
            ).scalar()
            assert triggers == 0
        assert "synced_docs" in caplog.text and "semdb backfill" in caplog.text
        upgrade(engine)
        with engine.begin() as connection:
            register(connection)
            connection.execute(sa.text("INSERT INTO synced_docs (id, body) VALUES (3, 'three')"))
            assert queued(connection) == 1
    finally:
        engine.dispose()
