"""Running one search statement under planner settings that apply to it alone.

``hnsw.ef_search``, ``hnsw.iterative_scan`` and ``enable_sort`` are set with
``set_config(name, value, true)`` (``SET LOCAL``) in a savepoint rolled back after the
statement, which restores the previous values exactly and keeps the caller's transaction
usable if the statement fails. One round trip before the statement, one after::

    SAVEPOINT semdb_search; SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)
    <the search statement, through SQLAlchemy>
    ROLLBACK TO SAVEPOINT semdb_search; RELEASE SAVEPOINT semdb_search

SQLAlchemy's ``begin_nested()`` takes more (1.2 ms against 0.6 ms, loaded 2-core machine).
When no transaction is open on the server yet (autocommit mode, or the search is the first
statement of a read-committed transaction), the statement runs in a transaction of its own,
``BEGIN; SELECT set_config(...)`` ... ``COMMIT`` (psycopg in autocommit mode meanwhile): as
many round trips as a hand-written search on a connection whose settings are set once.

A filtered statement is planned for its actual values: psycopg's public
``prepare_threshold`` is None while it runs (a generic plan cannot know how selective
``bucket < $1`` is), and while the bracket's commands run: psycopg takes the ``ROLLBACK``
status of ``ROLLBACK TO SAVEPOINT`` as a sign to deallocate every prepared statement.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
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
    with bracket(connection, settings, custom_plan=custom_plan, protect=protect):
        return execute(bind, statement, parameters)


@contextlib.contextmanager
def bracket(
    connection: Connection,
    settings: Mapping[str, str],
    *,
    custom_plan: bool,
    protect: bool = False,
    head: sql.Composable | None = None,
) -> Iterator[list[sa.Row[Any]]]:
    """``settings`` apply to the statements run inside (see the module); the bracket is
    closed after them, or rolled back if one fails. ``head``, a statement whose values are
    written in (psycopg's ``sql.Literal``), runs first, in the same round trip as the
    bracket's opening: its rows are what the block receives (none without a head)."""
    driver: Any = connection.connection.dbapi_connection
    own = bool(settings or protect) and _own_transaction(connection, driver)
    switch = own and not driver.autocommit  # a transaction of its own: autocommit meanwhile
    needed = bool(settings) or (protect and (switch or not own))  # autocommit: no need
    with custom_plans(connection, custom_plan or needed):
        if not needed:
            yield [] if head is None else _head_rows(connection, head, [])
            return
        opening, closing, failed = _bracket(tuple(settings.items()), own)
        if switch:
            driver.autocommit = True
        try:
            if head is None:
                connection.exec_driver_sql(opening)
                rows: list[sa.Row[Any]] = []
            else:
                rows = _head_rows(connection, head, [sql.SQL(opening)])
            try:
                yield rows
            except BaseException:
                with contextlib.suppress(sa.exc.DBAPIError):  # the first error is the one to see
                    connection.exec_driver_sql(failed)
                raise
            connection.exec_driver_sql(closing)
        finally:
            if switch and not driver.closed:  # a lost connection is SQLAlchemy's to report
                driver.autocommit = False


def _own_transaction(connection: Connection, driver: Any) -> bool:
    """Can the statement run in a transaction of its own? Yes when none is open on the server
    and the driver is in autocommit mode, or would begin one that reads committed rows (the
    first statement of such a transaction shares no snapshot with the next ones)."""
    if getattr(driver, "info", None) is None or driver.info.transaction_status.name != "IDLE":
        return False
    if getattr(driver, "autocommit", False):
        return True
    level = getattr(driver, "isolation_level", "unknown")  # None: the server's default
    level = connection.default_isolation_level if level is None else level
    return str(getattr(level, "name", level)).replace("_", " ") == "READ COMMITTED"


@contextlib.contextmanager
def custom_plans(connection: Connection, wanted: bool = True) -> Iterator[None]:
    """Statements inside are planned for their actual values: psycopg prepares none of them
    (``prepare_threshold`` None meanwhile; a driver without one is left alone). The driver's
    own connection: under SQLAlchemy's asyncio extension, psycopg's AsyncConnection (the
    adapter SQLAlchemy wraps it in has no ``prepare_threshold``)."""
    driver: Any = connection.connection.driver_connection
    threshold = getattr(driver, "prepare_threshold", None)
    if not wanted or threshold is None:
        yield
        return
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = threshold


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


def _head_rows(
    connection: Connection, head: sql.Composable, then: list[sql.Composable]
) -> list[sa.Row[Any]]:
    """``head``'s rows, the statements ``then`` run after it in the same round trip (a
    simple query: the driver is given no parameters, so that a ``%`` in a written value
    stays a character)."""
    text = sql.SQL("; ").join([head, *then]).as_string(None)
    result = connection.exec_driver_sql(text, execution_options={"no_parameters": True})
    return list(result)


def execute(
    bind: Bind, statement: sa.Executable, parameters: Mapping[str, Any] | None
) -> list[sa.Row[Any]]:
    if isinstance(bind, Session):
        # flushed when the search began; nothing may be flushed inside the savepoint
        with bind.no_autoflush:
            return list(bind.execute(statement, parameters))
    return list(bind.execute(statement, parameters))
