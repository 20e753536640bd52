"""Which database semdb talks to: one resolution rule for the library, the CLI and Alembic.

1. an explicit URL passed by the caller;
2. else ``SEMDB_DATABASE_URL``;
3. else the embedded server under ``SEMDB_HOME`` (see :mod:`semdb.db.embedded`).
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from semdb.config import DATABASE_URL_VARIABLE, database_url_setting
from semdb.errors import ConfigurationError

_POSTGRES_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg3"}
_EXAMPLE = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"


def parse_url(text: str, *, source: str = "the database URL") -> URL:
    """Parse a PostgreSQL URL into the SQLAlchemy form semdb uses (driver psycopg 3).

    ``postgres://``, ``postgresql://`` and ``postgresql+psycopg://`` are accepted; any other
    scheme, or text that is no URL, raises :class:`ConfigurationError` naming ``source``.
    """
    try:
        url = make_url(text.strip())
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"{source} is not a valid PostgreSQL URL ({_mask(text)!r})",
            fix=f"use the form {_EXAMPLE}",
        ) from exc
    if url.drivername not in _POSTGRES_DRIVERS:
        raise ConfigurationError(
            f"{source} uses the scheme {url.drivername!r}; semdb needs PostgreSQL (psycopg 3)",
            fix=f"use the form {_EXAMPLE}",
        )
    if not url.database:
        raise ConfigurationError(
            f"{source} names no database ({_mask(text)!r})",
            fix=f"add the database name at the end, as in {_EXAMPLE}",
        )
    return url.set(drivername="postgresql+psycopg")


def configured_url() -> URL | None:
    """The URL from ``SEMDB_DATABASE_URL``, parsed, or None when it is unset."""
    text = database_url_setting()
    if text is None:
        return None
    return parse_url(text, source=DATABASE_URL_VARIABLE)


def libpq_uri(url: URL) -> str:
    """A ``postgresql://`` URI (password included) for psql, psycopg and other tools."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def display_url(url: URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def _mask(text: str) -> str:
    """Hide what looks like a password in text that failed to parse."""
    head, sep, tail = text.partition("@")
    if not sep or "://" not in head:
        return text
    scheme, _, credentials = head.partition("://")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{tail}"
