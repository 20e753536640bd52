"""Alembic environment for semdb's own schema.

The database is the one semdb itself would use (an explicit ``sqlalchemy.url``, else
SEMDB_DATABASE_URL, else the embedded server), and only the ``semdb`` schema is compared and
migrated, so your own tables never show up as drift here.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, pool, text

from semdb.db.engine import create_engine
from semdb.db.schema import SCHEMA, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    if type_ == "schema":
        return name == SCHEMA
    return True


CONFIGURE: dict[str, Any] = {
    "target_metadata": metadata,
    "version_table_schema": SCHEMA,
    "include_schemas": True,
    "include_name": include_name,
    "compare_type": True,
}


def run_with(connection: Connection) -> None:
    # Alembic's version table lives in the semdb schema, so the schema must exist first.
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
    context.configure(connection=connection, **CONFIGURE)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        run_with(given)
        return
    url = config.get_main_option("sqlalchemy.url") or None
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            run_with(connection)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or "postgresql+psycopg://"
    context.configure(url=url, literal_binds=True, **CONFIGURE)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
