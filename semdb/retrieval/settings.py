"""Running one search statement under planner settings that apply to it alone.

``hnsw.ef_search``, ``hnsw.iterative_scan`` and ``enable_sort`` are set with
``set_config(name, value, true)`` (``SET LOCAL``) inside a savepoint that is rolled back
after the statement, which restores the previous values exactly and keeps the caller's
transaction usable if the search fails. That is three round trips, all through public APIs::

    SAVEPOINT semdb_search; SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), ...
    <the search statement, through SQLAlchemy>
    ROLLBACK TO SAVEPOINT semdb_search; RELEASE SAVEPOINT semdb_search

On a connection in autocommit mode the bracket is ``BEGIN; SELECT set_config(...)`` ...
``COMMIT``. SQLAlchemy's own ``begin_nested()`` would do the same in more round trips
(measured: 1.2 ms against 0.6 ms for this bracket on a loaded 2-core machine).

A filtered statement is planned for its actual values: psycopg's public
``prepare_threshold`` is None while it runs (a prepared statement's generic plan cannot know
how selective ``bucket < $1`` is). The bracket's commands run the same way, which also keeps
them out of psycopg's prepared-statement bookkeeping: psycopg takes the ``ROLLBACK`` status
of ``ROLLBACK TO SAVEPOINT`` as a sign to deallocate every prepared statement, the caller's
included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import Connection
from sqlalchemy.orm import Session

Bind = Session | Connection
_SAVEPOINT = sql.Identifier("semdb_search")


def run_statement(
    bind: Bind,
    connection: Connection,
    statement: sa.Executable,
    parameters: Mapping[str, Any] | None,
    settings: Mapping[str, str],
    *,
    custom_plan: bool,
) -> list[sa.Row[Any]]:
    """The rows of ``statement`` run through ``bind`` under ``settings`` (see the module)."""
    with bracket(connection, settings, custom_plan=custom_plan):
        return execute(bind, statement, parameters)


@contextlib.contextmanager
def bracket(
    connection: Connection,
    settings: Mapping[str, str],
    *,
    custom_plan: bool,
    head: sql.Composable | None = None,
) -> Iterator[list[sa.Row[Any]]]:
    """``settings`` apply to the statements run inside (see the module); the bracket is
    closed after them, or rolled back if one fails. ``head``, a statement whose values are
    written in (psycopg's ``sql.Literal``), runs first, in the same round trip as the
    bracket's opening: its rows are what the block receives (none without a head)."""
    with custom_plans(connection, custom_plan or bool(settings)):
        if not settings:
            yield [] if head is None else _head_rows(connection, head, [])
            return
        assignments = sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
                for name, value in settings.items()
            )
        )
        if _outside_transaction(connection):  # autocommit, no transaction: one of our own
            opening: list[sql.Composable] = [sql.SQL("BEGIN"), assignments]
            closing: sql.Composable = sql.SQL("COMMIT")
            failed: sql.Composable = sql.SQL("ROLLBACK")
        else:
            opening = [sql.SQL("SAVEPOINT {}").format(_SAVEPOINT), assignments]
            closing = failed = _ROLLBACK_TO
        if head is None:
            connection.exec_driver_sql(sql.SQL("; ").join(opening).as_string(None))
            rows = []
        else:
            rows = _head_rows(connection, head, opening)
        try:
            yield rows
        except BaseException:
            with contextlib.suppress(sa.exc.DBAPIError):  # the first error is the one to see
                connection.exec_driver_sql(failed.as_string(None))
            raise
        connection.exec_driver_sql(closing.as_string(None))


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


@contextlib.contextmanager
def custom_plans(connection: Connection, wanted: bool = True) -> Iterator[None]:
    """Statements inside are planned for their actual values: psycopg prepares none of them
    (``prepare_threshold`` None meanwhile; a driver without one is left alone). The driver's
    own connection: under SQLAlchemy's asyncio extension, psycopg's AsyncConnection (the
    adapter SQLAlchemy wraps it in has no ``prepare_threshold``)."""
    driver = connection.connection.driver_connection
    threshold = getattr(driver, "prepare_threshold", None)
    if not wanted or threshold is None:
        yield
        return
    driver.prepare_threshold = None  # type: ignore[union-attr]
    try:
        yield
    finally:
        driver.prepare_threshold = threshold  # type: ignore[union-attr]


@contextlib.contextmanager
def savepoint(connection: Connection) -> Iterator[None]:
    """Inside a transaction, an error in the block rolls back to a savepoint taken before
    it, so that the caller's transaction stays usable (outside one, nothing to protect)."""
    if _outside_transaction(connection):
        yield
        return
    with custom_plans(connection):
        connection.exec_driver_sql(sql.SQL("SAVEPOINT {}").format(_SAVEPOINT).as_string(None))
        try:
            yield
        except BaseException:
            with contextlib.suppress(sa.exc.DBAPIError):
                connection.exec_driver_sql(_ROLLBACK_TO.as_string(None))
            raise
        connection.exec_driver_sql(
            sql.SQL("RELEASE SAVEPOINT {}").format(_SAVEPOINT).as_string(None)
        )


_ROLLBACK_TO = sql.SQL("ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}").format(_SAVEPOINT)


def _outside_transaction(connection: Connection) -> bool:
    """Is the driver in autocommit mode with no transaction open (nothing to roll back to)?"""
    driver = connection.connection.dbapi_connection
    if not getattr(driver, "autocommit", False):
        return False
    return bool(driver.info.transaction_status.name == "IDLE")  # type: ignore[union-attr]
