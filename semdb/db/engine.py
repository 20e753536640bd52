"""SQLAlchemy engines for semdb: the URL resolved one way, pgvector types registered, checked.

>>> engine = semdb.create_engine()                 # SEMDB_DATABASE_URL, else the embedded server
>>> engine = semdb.create_engine("postgresql://app@db/app")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from semdb.db.embedded import EmbeddedServer
from semdb.db.preflight import check_server
from semdb.db.url import configured_url, display_url, parse_url
from semdb.errors import DatabaseUnavailableError

NO_URL_FIX = (
    "check that the server runs and that SEMDB_DATABASE_URL is right, "
    "or unset SEMDB_DATABASE_URL to use semdb's embedded server"
)


def resolve_url(url: str | URL | None = None) -> URL:
    """The URL semdb uses: ``url`` if given, else SEMDB_DATABASE_URL, else the embedded server.

    Resolving to the embedded server starts it (if needed) and keeps it running until this
    process exits.
    """
    if isinstance(url, URL):
        return parse_url(url.render_as_string(hide_password=False), source="the URL given")
    if url is not None:
        return parse_url(url, source="the URL given")
    return configured_url() or EmbeddedServer().acquire()


def create_engine(url: str | URL | None = None, *, preflight: bool = True, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine on semdb's database, pgvector types registered on every connection.

    With ``preflight`` (the default) one connection is made at once, so that an unreachable
    server or a server without pgvector fails here, with the fix in the message.
    """
    resolved = resolve_url(url)
    kwargs.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(resolved, **kwargs)
    event.listen(engine, "connect", _register_pgvector_types)
    if preflight:
        with connect(engine) as connection:
            check_server(connection)
    return engine


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """``engine.connect()``, with connection failures turned into a one-line error and fix."""
    try:
        connection = engine.connect()
    except OperationalError as exc:
        raise explain_connection_error(exc, engine.url) from exc
    with connection:
        yield connection


def explain_connection_error(exc: DBAPIError, url: URL | None = None) -> DatabaseUnavailableError:
    """Turn a driver's connection failure into the cause and the fix."""
    detail = str(exc.orig or exc).strip().splitlines()
    reason = next((line for line in detail if "failed:" in line), detail[-1] if detail else "")
    reason = reason.removeprefix("connection failed:").strip() or "unknown reason"
    fix = NO_URL_FIX
    if "does not exist" in reason and "database" in reason:
        fix = "create the database (createdb NAME) or point SEMDB_DATABASE_URL at an existing one"
    elif "password authentication failed" in reason or "no password supplied" in reason:
        fix = "correct the user name and password in SEMDB_DATABASE_URL"
    where = f" to {display_url(url)}" if url is not None else ""
    return DatabaseUnavailableError(f"cannot connect{where}: {reason}", fix=fix)


def _register_pgvector_types(dbapi_connection: Any, _record: Any) -> None:
    """Let psycopg send and receive vector, halfvec and sparsevec values natively (binary)."""
    from pgvector.psycopg import register_vector
    from psycopg.types import TypeInfo

    was_autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        if TypeInfo.fetch(dbapi_connection, "vector") is not None:
            register_vector(dbapi_connection)
    finally:
        dbapi_connection.autocommit = was_autocommit
