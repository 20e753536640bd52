"""Running one search statement under planner settings that apply to it alone.

``hnsw.ef_search``, ``hnsw.iterative_scan`` and ``enable_sort`` are set with
``set_config(name, value, true)`` (``SET LOCAL``) in a savepoint rolled back after the
statement, which restores the previous values exactly and keeps the caller's transaction
usable if the statement fails. One round trip before the statement, one after::

    SAVEPOINT semdb_search; SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)
    <the search statement, through SQLAlchemy>
    ROLLBACK TO SAVEPOINT semdb_search; RELEASE SAVEPOINT semdb_search

(``BEGIN`` ... ``COMMIT`` on a connection in autocommit mode.) SQLAlchemy's
``begin_nested()`` takes more round trips (1.2 ms against 0.6 ms, loaded 2-core machine).

A filtered statement is planned for its actual values: psycopg's public
``prepare_threshold`` is None while it runs (a generic plan cannot know how selective
``bucket < $1`` is), and while the bracket's commands run: psycopg takes the ``ROLLBACK``
status of ``ROLLBACK TO SAVEPOINT`` as a sign to deallocate every prepared statement.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import Connection
from sqlalchemy.orm import Session

Bind = Session | Connection
_SAVEPOINT = sql.Identifier("semdb_search")
_ROLLBACK_TO = (
    sql.SQL("ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}").format(_SAVEPOINT).as_string(None)
)


def run_statement(
    bind: Bind,
    connection: Connection,
    statement: sa.Executable,
    parameters: Mapping[str, Any] | None,
    settings: Mapping[str, str],
    *,
    custom_plan: bool,
    protect: bool = False,
) -> list[sa.Row[Any]]:
    """The rows of ``statement`` run through ``bind`` under ``settings`` (see the module);
    ``protect``: in a savepoint even without settings (an error leaves the caller's
    transaction usable)."""
    driver = connection.connection.dbapi_connection
    threshold = getattr(driver, "prepare_threshold", None)  # None: a driver without one
    changed = threshold is not None and bool(custom_plan or settings or protect)
    if changed:
        driver.prepare_threshold = None  # type: ignore[union-attr]
    try:
        outside = bool(
            getattr(driver, "autocommit", False) and driver.info.transaction_status.name == "IDLE"  # type: ignore[union-attr]
        )
        if not settings and (not protect or outside):  # outside: nothing to protect
            return _execute(bind, statement, parameters)
        opening, closing, failed = _bracket(tuple(settings.items()), outside)
        connection.exec_driver_sql(opening)
        try:
            rows = _execute(bind, statement, parameters)
        except BaseException:
            with contextlib.suppress(sa.exc.DBAPIError):  # the first error is the one to see
                connection.exec_driver_sql(failed)
            raise
        connection.exec_driver_sql(closing)
        return rows
    finally:
        if changed:
            driver.prepare_threshold = threshold  # type: ignore[union-attr]


@functools.lru_cache(maxsize=64)
def _bracket(settings: tuple[tuple[str, str], ...], autocommit: bool) -> tuple[str, str, str]:
    """The commands before and after the statement (and after it fails). Composing them
    cost about 60 us a search, a tenth of a selective search's own time (bench/search.py)."""
    commands = [sql.SQL("BEGIN") if autocommit else sql.SQL("SAVEPOINT {}").format(_SAVEPOINT)]
    if settings:
        commands.append(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(
                    sql.SQL("set_config({}, {}, true)").format(
                        sql.Literal(name), sql.Literal(value)
                    )
                    for name, value in settings
                )
            )
        )
    opening = sql.SQL("; ").join(commands).as_string(None)
    return (opening, "COMMIT", "ROLLBACK") if autocommit else (opening, _ROLLBACK_TO, _ROLLBACK_TO)


def _execute(
    bind: Bind, statement: sa.Executable, parameters: Mapping[str, Any] | None
) -> list[sa.Row[Any]]:
    if isinstance(bind, Session):
        # flushed when the search began; nothing may be flushed inside the savepoint
        with bind.no_autoflush:
            return list(bind.execute(statement, parameters))
    return list(bind.execute(statement, parameters))
