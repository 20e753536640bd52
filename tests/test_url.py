"""Which database semdb talks to, and the errors for URLs it cannot use."""

from __future__ import annotations

import pytest

from semdb.db.url import display_url, libpq_uri, parse_url
from semdb.errors import ConfigurationError


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app:secret@db.example:5433/app",
        "postgres://app:secret@db.example:5433/app",
        "postgresql+psycopg://app:secret@db.example:5433/app",
    ],
)
def test_postgres_urls_are_normalised_to_psycopg(text: str) -> None:
    url = parse_url(text)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.username) == ("db.example", 5433, "app", "app")
    assert libpq_uri(url) == "postgresql://app:secret@db.example:5433/app"
    assert "secret" not in display_url(url)


def test_socket_urls_keep_their_host_folder() -> None:
    url = parse_url("postgresql://postgres@/semdb?host=/tmp/x y")
    assert url.query["host"] == "/tmp/x y"
    assert parse_url(libpq_uri(url)) == url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not a url", "not a valid PostgreSQL URL"),
        ("mysql://u:p@h/db", "uses the scheme 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "uses the scheme 'postgresql+asyncpg'"),
        ("postgresql://u@h", "names no database"),
    ],
)
def test_unusable_urls_name_the_setting_and_the_fix(text: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(text, source="SEMDB_DATABASE_URL")
    message = info.value.one_line()
    assert message.startswith("SEMDB_DATABASE_URL")
    assert expected in message
    assert "Fix:" in message and "postgresql://USER:PASSWORD@HOST:5432/DATABASE" in message


def test_a_password_never_appears_in_the_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url("postgresql://app:hunter2@host:notaport/db")
    assert "hunter2" not in info.value.one_line()
