"""``semdb db``: the commands a user types, in new processes, against the real database."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from semdb.db import libpq_uri
from semdb.db.migrate import head_revision

from .conftest import run_semdb


def test_upgrade_then_status(database_url: URL) -> None:
    upgraded = run_semdb("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert head_revision() in upgraded.stdout
    again = run_semdb("db", "upgrade")
    assert f"schema already at {head_revision()}" in again.stdout

    status = run_semdb("db", "status")
    assert status.returncode == 0, status.stderr
    assert "SEMDB_DATABASE_URL" in status.stdout
    assert "installed" in status.stdout and "up to date" in status.stdout


def test_url_prints_what_other_tools_use(database_url: URL) -> None:
    result = run_semdb("db", "url")
    assert result.stdout.strip() == libpq_uri(database_url)
    result = run_semdb("db", "url", "--sqlalchemy")
    assert result.stdout.strip().startswith("postgresql+psycopg://")


def test_psql_runs_on_the_database(database_url: URL) -> None:
    result = run_semdb("db", "psql", "-At", "-c", "SELECT current_database()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == database_url.database


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "SEMDB_DATABASE_URL is not a valid PostgreSQL URL"),
        ("mysql://u@h/db", "uses the scheme 'mysql'"),
        (
            "postgresql://nobody@127.0.0.1:1/nowhere",
            "cannot connect to postgresql://nobody@127.0.0.1:1/nowhere",
        ),
    ],
)
@pytest.mark.parametrize("command", [("db", "status"), ("db", "upgrade")])
def test_bad_urls_give_one_line_with_the_fix(
    url: str, expected: str, command: tuple[str, ...]
) -> None:
    result = run_semdb(*command, env={"SEMDB_DATABASE_URL": url})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Fix:" in lines[0]


def test_a_missing_database_names_the_fix(database_url: URL) -> None:
    url = libpq_uri(database_url.set(database="no_such_database"))
    result = run_semdb("db", "status", env={"SEMDB_DATABASE_URL": url})
    assert result.returncode == 1
    assert 'database "no_such_database" does not exist' in result.stderr
    assert "Fix: create the database" in result.stderr
