"""Core searches run on the psycopg connection itself: compiled once, no execution context.

SQLAlchemy's execution of an already compiled statement costs about 25-35 µs a search
(execution context, events, parameter and result processing), a third of a search whose
filter passes 0.1% of 100k rows (bench/query.py). A search that returns Core rows, on a
Connection that nobody listens to, runs here instead, with what SQLAlchemy would do kept:

- the statement is the one SQLAlchemy compiles (for the connection's dialect), once per
  statement shape; the first search of a shape runs through SQLAlchemy, and its rows give
  the keys the rows here carry;
- values go through the bind processors SQLAlchemy would apply, and rows through its result
  processors (chosen from the cursor's column types, as SQLAlchemy chooses them);
- rows are SQLAlchemy ``Row`` objects (``sqlalchemy.engine.result_tuple``);
- a driver error is raised as SQLAlchemy's ``DBAPIError`` subclass (``ProgrammingError``,
  ``OperationalError`` ...) and a lost connection is invalidated, as SQLAlchemy does;
- outside a transaction, a non-autocommit Connection begins one, as its ``execute`` would.

Everything else goes through SQLAlchemy (:func:`direct_driver` says None): a Session or ORM
entities, execution event listeners or echo (whoever listens expects every statement),
execution options (a ``schema_translate_map`` changes the SQL), a driver other than psycopg,
a statement whose SQL depends on its values (expanding ``IN``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Dialect
from sqlalchemy.engine import result_tuple

from semdb.search.plan import settings_cursor

#: Execution options that leave the SQL and its execution alone.
_PLAIN_OPTIONS = frozenset({"isolation_level"})
_ENGINE_LOG = logging.getLogger("sqlalchemy.engine.Engine")


def direct_driver(connection: Connection) -> psycopg.Connection[Any] | None:
    """The psycopg connection under ``connection`` when a Core search may run on it directly
    (see the module documentation), else None."""
    if connection.closed or connection.invalidated:
        return None
    if not _PLAIN_OPTIONS.issuperset(connection.get_execution_options()):
        return None
    if _listened(connection):
        return None
    if connection.engine.echo or _ENGINE_LOG.isEnabledFor(logging.INFO):
        return None
    transaction = connection.get_transaction()
    if transaction is not None and not transaction.is_active:
        return None  # SQLAlchemy raises its "rollback first" error
    driver = connection.connection.dbapi_connection
    return driver if isinstance(driver, psycopg.Connection) else None


def _listened(connection: Connection) -> bool:
    """Does a listener want to see every statement, or change how one runs or fails?

    SQLAlchemy's own flags say first whether any connection or dialect event was ever listened
    to on this connection, its engine or its dialect (what ``Connection.execute`` checks
    itself); only then are the listeners looked at (a listener removed leaves the flag set).
    """
    dialect = connection.dialect
    if getattr(connection, "_has_events", True) or getattr(connection.engine, "_has_events", True):
        events = connection.dispatch
        if (
            events.before_execute
            or events.before_cursor_execute
            or events.after_cursor_execute
            or events.after_execute
        ):
            return True
    if getattr(dialect, "_has_events", True):
        dialect_events = dialect.dispatch
        if dialect_events.do_execute or dialect_events.handle_error:
            return True
    return False


@dataclass
class DirectStatement:
    """A search statement compiled for one dialect, run on the driver's cursor."""

    sql: str
    names: dict[str, str]  # a bound parameter's key -> its name in the SQL
    defaults: dict[str, Any]  # every parameter's value when compiled, processed
    processors: dict[str, Callable[[Any], Any]]  # by name in the SQL
    keys: tuple[str, ...]  # of the rows
    types: tuple[sa.types.TypeEngine[Any], ...]  # of the result columns
    dialect: Dialect
    _make_row: Callable[[Any], sa.Row[Any]] | None = field(default=None, repr=False)

    def run(
        self,
        connection: Connection,
        driver: psycopg.Connection[Any],
        parameters: Mapping[str, Any],
        settings: Mapping[str, str],
        *,
        custom: bool,
    ) -> list[sa.Row[Any]]:
        """Run with ``parameters`` (by bound parameter key) under planner ``settings``
        (see :func:`semdb.search.plan.settings_cursor`). ``custom``: never prepared, so that
        the statement is planned for its actual values."""
        values = dict(self.defaults)
        names, processors = self.names, self.processors
        for key, value in parameters.items():
            name = names[key]
            processor = processors.get(name)
            values[name] = value if processor is None else processor(value)
        autocommit = driver.autocommit
        if not autocommit and not connection.in_transaction():
            connection.begin()  # as Connection.execute begins one
        if settings:
            in_transaction = not autocommit or (
                driver.info.transaction_status != TransactionStatus.IDLE
            )
            cursor: psycopg.Cursor[Any] = settings_cursor(settings, in_transaction, custom)(driver)
        else:
            cursor = psycopg.Cursor(driver)
        try:
            cursor.execute(self.sql, values, prepare=False if custom else None)
            fetched = cursor.fetchall()
            make_row = self._make_row or self._row_maker(cursor)
        except psycopg.Error as error:
            raise self._error(connection, driver, cursor, values, error) from error
        finally:
            cursor.close()
        return [make_row(row) for row in fetched]

    def _row_maker(self, cursor: psycopg.Cursor[Any]) -> Callable[[Any], sa.Row[Any]]:
        """Rows as SQLAlchemy makes them: its result processors for the cursor's column
        types (found once, from the first cursor), then a ``Row`` with the keys."""
        make = result_tuple(self.keys)
        description = cursor.description or []
        processors = [
            type_.dialect_impl(self.dialect).result_processor(self.dialect, column.type_code)
            for type_, column in zip(self.types, description, strict=True)
        ]
        if any(processor is not None for processor in processors):

            def make_row(row: Any) -> sa.Row[Any]:
                return make(
                    [
                        value if processor is None else processor(value)
                        for processor, value in zip(processors, row, strict=True)
                    ]
                )

            self._make_row = make_row
        else:
            self._make_row = make
        return self._make_row

    def _error(
        self,
        connection: Connection,
        driver: psycopg.Connection[Any],
        cursor: psycopg.Cursor[Any],
        values: dict[str, Any],
        error: psycopg.Error,
    ) -> sa.exc.StatementError:
        """``error`` as SQLAlchemy raises it; a lost connection is invalidated."""
        lost = bool(
            self.dialect.is_disconnect(cast(Any, error), cast(Any, driver), cast(Any, cursor))
        )
        if lost:
            connection.invalidate(error)
        return sa.exc.DBAPIError.instance(
            self.sql,
            values,
            error,
            psycopg.Error,
            hide_parameters=connection.engine.hide_parameters,
            connection_invalidated=lost,
            dialect=self.dialect,
        )


def compile_direct(
    statement: sa.Select[Any],
    dialect: Dialect,
    parameters: Mapping[str, Any],
    keys: tuple[str, ...],
) -> DirectStatement | None:
    """``statement`` compiled for ``dialect``, with ``parameters`` (by key) as the values of
    its bound parameters until a search gives others, and ``keys`` (those of the rows
    SQLAlchemy returned for it); None when its SQL depends on its values."""
    compiled = statement.compile(dialect=dialect)
    if (
        compiled.positional
        or compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
    ):
        return None
    types = tuple(column.type for column in statement.selected_columns)
    if len(types) != len(keys):
        return None
    names = {bind.key: name for bind, name in compiled.bind_names.items()}
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        bind_processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if bind_processor is not None:
            processors[name] = bind_processor
    defaults = {
        name: value if (processor := processors.get(name)) is None else processor(value)
        for name, value in compiled.construct_params(dict(parameters)).items()
    }
    return DirectStatement(compiled.string, names, defaults, processors, keys, types, dialect)


#: Statements compiled for direct execution, by the search's statement key and dialect (None:
#: that statement runs through SQLAlchemy).
_compiled: OrderedDict[tuple[Any, ...], DirectStatement | None] = OrderedDict()
_COMPILED_KEPT = 512
_compiled_lock = threading.Lock()
#: What :func:`known_direct` says of a statement not compiled yet.
UNKNOWN = "unknown"


def known_direct(key: tuple[Any, ...], dialect: Dialect) -> DirectStatement | None | str:
    """The :class:`DirectStatement` for a search statement's key, None if it cannot run
    directly, or :data:`UNKNOWN` if not compiled yet (see :func:`remember_direct`)."""
    return _compiled.get((key, dialect), UNKNOWN)


def remember_direct(
    key: tuple[Any, ...],
    statement: sa.Select[Any],
    dialect: Dialect,
    parameters: Mapping[str, Any],
    rows: list[sa.Row[Any]],
) -> None:
    """Compile ``statement`` for direct execution after SQLAlchemy ran it and returned
    ``rows`` (their keys are the keys of direct rows; without rows, wait for a search that
    returns some)."""
    if not rows:
        return
    direct = compile_direct(statement, dialect, parameters, tuple(rows[0]._fields))
    with _compiled_lock:
        _compiled[(key, dialect)] = direct
        while len(_compiled) > _COMPILED_KEPT:
            _compiled.popitem(last=False)
