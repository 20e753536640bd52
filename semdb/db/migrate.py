"""Run semdb's Alembic migrations from Python (what ``semdb db upgrade`` calls)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from semdb.db.schema import SCHEMA
from semdb.errors import SemdbError


def migrations_dir() -> Path:
    """The migration scripts: packaged in the wheel, or ./migrations in a source checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SemdbError(
        "semdb's migration scripts are missing from this installation",
        fix="reinstall semdb (pip install --force-reinstall semdb)",
    )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["configure_logging"] = False
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate semdb's schema to ``revision``; returns the revision the database is at."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()  # new connections see the vector types the migration may have created
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
    engine.dispose()
    return current_revision(engine)
