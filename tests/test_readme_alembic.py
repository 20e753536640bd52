"""The README's Alembic section, run as a user would: its env.py verbatim, `semdb db upgrade`
first, then the application's `alembic upgrade head` (both as commands, in new processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from semdb.db import libpq_uri

from .conftest import run_semdb

README = Path(__file__).resolve().parent.parent / "README.md"

MODELS = """
import numpy as np
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semdb


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    embedding: Mapped[np.ndarray | None] = semdb.embedding_column(
        "body", model="tiny", dimension=3, sync="manual"
    )
"""

MIGRATION = '''
"""notes"""
import sqlalchemy as sa
from alembic import op

import semdb

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("embedding", semdb.VectorType(3)),
    )


def downgrade():
    op.drop_table("notes")
'''


def readme_env_py() -> str:
    section = README.read_text().split("**Alembic.**", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def test_the_readme_env_py_migrates_after_semdb_db_upgrade(
    tmp_path: Path, empty_database_url: URL
) -> None:
    project = tmp_path / "project"
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "myapp").mkdir()
    (project / "myapp" / "__init__.py").write_text("")
    (project / "myapp" / "models.py").write_text(MODELS)
    (project / "migrations" / "env.py").write_text(readme_env_py())
    (project / "migrations" / "versions" / "0001_notes.py").write_text(MIGRATION)
    (project / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nprepend_sys_path = .\n"
    )
    url = libpq_uri(empty_database_url)
    env = {"SEMDB_HOME": str(tmp_path / "home"), "SEMDB_DATABASE_URL": url}

    semdb_upgrade = run_semdb("db", "upgrade", env=env)
    assert semdb_upgrade.returncode == 0, semdb_upgrade.stderr
    alembic_upgrade = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert alembic_upgrade.returncode == 0, alembic_upgrade.stderr

    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = CAST(:table AS regclass) AND attnum > 0"
                ),
                {"table": "notes"},
            )
            columns = {name: type_ for name, type_ in rows}
            version = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            assert version.scalar_one() == "0001"
    finally:
        engine.dispose()
    assert columns == {"id": "integer", "body": "text", "embedding": "vector(3)"}


def test_database_url_is_what_semdb_db_url_prints(tmp_path: Path, empty_database_url: URL) -> None:
    """The same resolution as `semdb db url --sqlalchemy`; for the embedded server a URL
    with %2F in it, which create_engine takes (and alembic.ini's interpolation would not)."""
    env = {**os.environ, "SEMDB_DATABASE_URL": libpq_uri(empty_database_url)}
    code = "import semdb.alembic; print(semdb.alembic.database_url())"
    helper = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    printed = run_semdb("db", "url", "--sqlalchemy", env=env)
    assert helper.stdout.strip() == printed.stdout.strip()
    assert helper.stdout.startswith("postgresql+psycopg://")
    if empty_database_url.host is None:  # the tests' embedded server, on a Unix socket
        assert "%2F" in helper.stdout
