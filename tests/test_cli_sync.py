"""The command line: semdb sql (bound parameters, embedded texts), semdb worker, semdb backfill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semdb.alembic  # noqa: F401
from semdb import embedding_column

from .conftest import run_semdb

DIM = 32


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "cli_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]
    embedding: Mapped[np.ndarray | None] = embedding_column(
        "text", model="tiny", dimension=DIM, sync="queued"
    )


@pytest.fixture()
def notes(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_embedding_sync(
            "cli_notes", "embedding", sources=["text"], model="tiny", dimension=DIM
        )
        connection.execute(
            sa.insert(Note.__table__),
            [
                {"id": i, "text": t}
                for i, t in enumerate(
                    ["cheap flights to Lisbon", "bread recipe", "sailing lessons"]
                )
            ],
        )
    yield engine
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM semdb.queue"))
        Operations(MigrationContext.configure(connection)).drop_embedding_sync(
            "cli_notes", "embedding"
        )
    Base.metadata.drop_all(engine)


def test_sql_binds_text_parameters_never_pasting_them(engine: sa.Engine) -> None:
    hostile = "'; DROP TABLE semdb.models; --"
    result = run_semdb("sql", "SELECT :x AS echoed, length(:x) AS n", "--param", f"x={hostile}")
    assert result.returncode == 0, result.stderr
    assert "DROP TABLE semdb.models" in result.stdout and str(len(hostile)) in result.stdout
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT to_regclass('semdb.models')")).scalar()


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["SELECT 1", "--param", "no-equals-sign"], "--param expects NAME=VALUE"),
        (["SELECT 1", "--embed", "1q=text"], "--embed expects NAME=VALUE"),
        (["SELECT * FROM no_such_table"], "the database refused the statement"),
        (["SELECT :a", "--param", "a=1", "--param", "b=2"], "do not match"),
    ],
)
def test_sql_errors_are_one_line_with_the_fix(
    engine: sa.Engine, args: list[str], culprit: str
) -> None:
    result = run_semdb("sql", *args)
    assert result.returncode == 1
    assert culprit in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_backfill_and_sql_with_an_embedded_query(
    notes: sa.Engine, tiny_bundle: Path
) -> None:
    worked = run_semdb("worker", "--model", str(tiny_bundle), "--until-empty", "--provider", "cpu")
    assert worked.returncode == 0, worked.stderr
    assert "embedded" in worked.stdout
    with notes.connect() as connection:
        assert (
            connection.execute(
                sa.text("SELECT count(*) FROM cli_notes WHERE embedding IS NOT NULL")
            ).scalar()
            == 3
        )
    with notes.begin() as connection:
        connection.execute(sa.text("UPDATE cli_notes SET embedding_model = 'tiny@0'"))
    filled = run_semdb("backfill", "--model", str(tiny_bundle), "--provider", "cpu")
    assert filled.returncode == 0, filled.stderr
    assert "public.cli_notes.embedding" in filled.stdout
    found = run_semdb(
        "sql",
        "SELECT text, embedding <=> :q AS distance FROM cli_notes "
        "ORDER BY embedding <=> :q LIMIT 2",
        "--embed",
        "q=bread recipe",
        "--model",
        str(tiny_bundle),
        "--provider",
        "cpu",
    )
    assert found.returncode == 0, found.stderr
    lines = [line for line in found.stdout.splitlines() if "│" in line]
    cells = [cell.strip() for cell in lines[0].split("│") if cell.strip()]
    assert cells[0] == "bread recipe" and float(cells[1]) < 1e-5  # the text itself, distance 0
