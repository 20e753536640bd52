"""Core searches run on the driver itself: compiled once, no execution context.

SQLAlchemy's execution of an already compiled statement costs about 25-35 µs a search
(execution context, events, parameter and result processing), a third of a search whose
filter passes 0.1% of 100k rows (bench/query.py). A search that returns Core rows, on a
Connection that nobody listens to, runs here instead, sent with libpq's own calls through
psycopg's connection (:mod:`.libpq`), with what SQLAlchemy would do kept:

- the statement is the one SQLAlchemy compiles (for the connection's dialect), once per
  statement shape, its placeholders numbered for libpq; the first search of a shape runs
  through SQLAlchemy, and its rows give the keys the rows here carry;
- values go through the bind processors SQLAlchemy would apply, and rows through its result
  processors (chosen from the result's column types, as SQLAlchemy chooses them);
- rows are SQLAlchemy ``Row`` objects (``sqlalchemy.engine.result_tuple``);
- a driver error is raised as SQLAlchemy's ``DBAPIError`` subclass (``ProgrammingError``,
  ``OperationalError`` ...) and a lost connection is invalidated, as SQLAlchemy does;
- outside a transaction, a non-autocommit Connection begins one, as its ``execute`` would.

Everything else goes through SQLAlchemy (:func:`direct_driver` says None): a Session or ORM
entities, execution event listeners or echo (whoever listens expects every statement),
execution options (a ``schema_translate_map`` changes the SQL), a driver other than psycopg
or a psycopg connection in its own pipeline mode, a statement whose SQL depends on its
values (expanding ``IN``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy import Connection, Dialect
from sqlalchemy.engine import result_tuple

from semdb.search.libpq import run_statement

#: Execution options that leave the SQL and its execution alone: SQLAlchemy applies them to
#: the psycopg connection, whose BEGIN :mod:`.libpq` sends as psycopg would.
_PLAIN_OPTIONS = frozenset({"isolation_level", "postgresql_readonly", "postgresql_deferrable"})
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
    if not isinstance(driver, psycopg.Connection) or driver.pgconn.pipeline_status:
        return None  # not psycopg, or in psycopg's own pipeline mode
    return driver


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
    """A search statement compiled for one dialect, run on libpq (:mod:`.libpq`)."""

    sql: str  # as SQLAlchemy compiled it: %(name)s placeholders
    names: dict[str, str]  # a bound parameter's key -> its name in the SQL
    defaults: dict[str, Any]  # every parameter's value when compiled, processed
    processors: dict[str, Callable[[Any], Any]]  # by name in the SQL
    keys: tuple[str, ...]  # of the rows
    types: tuple[sa.types.TypeEngine[Any], ...]  # of the result columns
    dialect: Dialect
    numbered: str = ""  # the SQL with $1, $2 ... for the names in ``order``
    order: tuple[str, ...] = ()
    _encoded: bytes | None = field(default=None, repr=False)  # ``numbered`` if ASCII
    _make_row: Callable[[Any], sa.Row[Any]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.order:
            self.numbered, self.order = numbered_placeholders(self.sql)
        if self.numbered.isascii():  # the same bytes in every client encoding
            self._encoded = self.numbered.encode("ascii")

    def run(
        self,
        connection: Connection,
        driver: psycopg.Connection[Any],
        parameters: Mapping[str, Any],
        settings: Mapping[str, str],
    ) -> list[sa.Row[Any]]:
        """Run with ``parameters`` (by bound parameter key) under planner ``settings``
        (see :class:`semdb.search.plan.SettingsCommands`), never prepared."""
        return self.execute(connection, driver, self.bind(parameters), settings)

    def bind(self, parameters: Mapping[str, Any]) -> list[Any]:
        """The values of the statement's parameters, in the order of its placeholders:
        ``parameters`` (by bound parameter key) through SQLAlchemy's bind processors, the
        values it was compiled with for the others."""
        values = dict(self.defaults)
        names, processors = self.names, self.processors
        for key, value in parameters.items():
            name = names[key]
            processor = processors.get(name)
            values[name] = value if processor is None else processor(value)
        return [values[name] for name in self.order]

    def slot(self, key: str) -> int:
        """The position of a bound parameter (by key) among the values :meth:`bind` gives."""
        return self.order.index(self.names[key])

    def execute(
        self,
        connection: Connection,
        driver: psycopg.Connection[Any],
        values: list[Any],
        settings: Mapping[str, str],
    ) -> list[sa.Row[Any]]:
        """Run with ``values`` (from :meth:`bind`) under planner ``settings``."""
        if not driver.autocommit and not connection.in_transaction():
            connection.begin()  # as Connection.execute begins one
        sql = self._encoded
        if sql is None:
            sql = self.numbered.encode(driver.info.encoding)
        try:
            loaded = run_statement(driver, sql, values, settings)
            make_row = self._make_row or self._row_maker(loaded)
            result = cast(Any, loaded.pgresult)
            return loaded.load_rows(0, result.ntuples, make_row)
        except psycopg.Error as error:
            raise self._error(connection, driver, values, error) from error

    def _row_maker(self, loaded: Any) -> Callable[[Any], sa.Row[Any]]:
        """Rows as SQLAlchemy makes them: its result processors for the result's column
        types (found once, from the first result), then a ``Row`` with the keys."""
        make = result_tuple(self.keys)
        result = loaded.pgresult
        processors = [
            type_.dialect_impl(self.dialect).result_processor(self.dialect, result.ftype(i))
            for i, type_ in enumerate(self.types)
        ]
        if result.nfields != len(self.types):
            raise psycopg.ProgrammingError(
                f"the search returned {result.nfields} columns, {len(self.types)} expected"
            )
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
        values: list[Any],
        error: psycopg.Error,
    ) -> sa.exc.StatementError:
        """``error`` as SQLAlchemy raises it; a lost connection is invalidated."""
        lost = bool(self.dialect.is_disconnect(cast(Any, error), cast(Any, driver), None))
        if lost:
            connection.invalidate(error)
        return sa.exc.DBAPIError.instance(
            self.sql,
            dict(zip(self.order, values, strict=True)),
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


_PLACEHOLDER = re.compile(r"%%|%\(([^)]+)\)s")


def numbered_placeholders(sql: str) -> tuple[str, tuple[str, ...]]:
    """SQL with psycopg's ``%(name)s`` placeholders (and ``%%`` for a percent sign) as libpq
    takes it: ``$1``, ``$2`` ... and the names they stand for, in that order (a name used
    twice is one parameter)."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PLACEHOLDER.sub(number, sql), tuple(order)


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
