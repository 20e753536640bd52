"""A search statement sent with libpq's own calls, through psycopg's ``pgconn``.

A search is one fixed SQL text with a handful of parameters. psycopg's Python layer around
libpq (the cursor, the conversion of the query, the pipeline object) cost more client CPU
than the whole statement at 0.1% selectivity: bench/query.py measured 114 µs of client CPU
for a psycopg search against 37 µs for the same statement sent here, with every other plan
of the bench running in between (caches made cold). psycopg exposes its libpq connection
(``Connection.pgconn``) and its adaptation layer (``psycopg.adapt.Transformer``) for this.

What psycopg does around a statement is kept:

- parameters are dumped, and rows loaded, by psycopg's ``Transformer`` with the connection's
  adapters, as its cursor does;
- the connection's lock is held while the statement runs;
- on a connection that is not in autocommit mode, outside a transaction, the transaction is
  begun first with the ``BEGIN`` psycopg would send (the connection's isolation level, read
  only and deferrable settings); it goes in the same round trip;
- planner settings travel with the statement in one round trip (libpq's pipeline mode):
  see :class:`~semdb.search.plan.SettingsCommands`;
- a failure is psycopg's exception for the server's error (SQLSTATE), or its
  ``OperationalError`` for a lost connection.

Where it departs, and why that is acceptable for a search:

- the statement is never prepared on the server: filtered statements must not be (a generic
  plan ignores the filter's selectivity), and for unfiltered ones preparing saved nothing
  measurable (495 against 496 µs a query on 108k rows);
- a statement without settings is one blocking libpq call: it releases the GIL, but a
  ``KeyboardInterrupt`` waits for it to finish (a pipeline, which waits in Python, cancels
  the statement);
- a ``NOTIFY`` that arrives during a search reaches psycopg's handlers at the connection's
  next psycopg statement.
"""

from __future__ import annotations

import select
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg import abc, errors
from psycopg.abc import Buffer
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import ConnStatus, ExecStatus, Format, TransactionStatus

from semdb.search.plan import SettingsCommands, settings_commands

_TUPLES_OK = ExecStatus.TUPLES_OK
_FATAL_ERROR = ExecStatus.FATAL_ERROR
_PIPELINE_SYNC = ExecStatus.PIPELINE_SYNC
_IDLE = TransactionStatus.IDLE
_INERROR = TransactionStatus.INERROR
_TEXT = Format.TEXT
_AUTO = PyFormat.AUTO
_POLL = getattr(select, "poll", None)


class _Statement(NamedTuple):
    sql: bytes
    values: Sequence[Buffer | None]  # dumped
    types: Sequence[int] | None
    formats: Sequence[Format] | None


def run_statement(
    driver: psycopg.Connection[Any],
    sql: bytes,
    parameters: Sequence[Any],
    settings: Mapping[str, str],
) -> abc.Transformer:
    """Run ``sql`` (placeholders ``$1``, ``$2``...) with ``parameters`` in that order, under
    planner ``settings`` (see :class:`~semdb.search.plan.SettingsCommands`), and return
    psycopg's ``Transformer`` holding the result: ``load_rows(0, ntuples, make_row)`` gives
    the rows."""
    transformer: abc.Transformer = Transformer(driver)
    dumped = transformer.dump_sequence(parameters, [_AUTO] * len(parameters))
    statement = _Statement(sql, dumped, transformer.types, transformer.formats)
    pgconn = driver.pgconn
    with driver.lock:
        begin = None
        if not driver.autocommit and pgconn.transaction_status == _IDLE:
            begin = _begin_command(driver)
        if not settings and begin is None:
            result = pgconn.exec_params(sql, dumped, statement.types, statement.formats, _TEXT)
            if result.status != _TUPLES_OK:
                raise _error(driver, result)
        else:
            commands = None
            if settings:
                in_transaction = begin is not None or pgconn.transaction_status != _IDLE
                commands = settings_commands(settings, in_transaction)
            result = _pipeline(driver, begin, commands, statement)
    transformer.set_pgresult(result)
    return transformer


def _pipeline(
    driver: psycopg.Connection[Any],
    begin: bytes | None,
    commands: SettingsCommands | None,
    statement: _Statement,
) -> Any:
    """The statement's result, sent after ``begin`` and between the settings ``commands``
    in one pipeline (one round trip); the first failure raised once all have been read."""
    opening: list[bytes] = [] if begin is None else [begin]
    closing: Sequence[bytes] = ()
    if commands is not None:
        opening += [*commands.opening, commands.assignments]
        closing = commands.closing
    pgconn = driver.pgconn
    pgconn.enter_pipeline_mode()
    try:
        for command in opening:
            pgconn.send_query_params(command, None, None, None, _TEXT)
        pgconn.send_query_params(
            statement.sql, statement.values, statement.types, statement.formats, _TEXT
        )
        for command in closing:
            pgconn.send_query_params(command, None, None, None, _TEXT)
        pgconn.pipeline_sync()
        try:
            results = _read_pipeline(pgconn)
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt): stop the statement, read the
            # rest, so that the connection is usable again; a lost connection has no rest.
            if pgconn.status == ConnStatus.OK:
                driver.cancel()
                _read_pipeline(pgconn)
            raise
    finally:
        if pgconn.status == ConnStatus.OK:
            pgconn.exit_pipeline_mode()
    failed = next((result for result in results if result.status == _FATAL_ERROR), None)
    if failed is not None:
        if commands is not None and commands.recover and pgconn.transaction_status == _INERROR:
            # Back to the savepoint, if it was taken: the caller's transaction stays usable.
            pgconn.exec_(commands.recover)
        raise _error(driver, failed)
    return results[len(opening)]


def _read_pipeline(pgconn: Any) -> list[Any]:
    """The first result of each command of a pipeline, up to its Sync."""
    _flush(pgconn)
    results: list[Any] = []
    first = None
    while True:
        result = _next_result(pgconn)
        if result is None:  # the end of one command's results
            results.append(first)
            first = None
        elif result.status == _PIPELINE_SYNC:
            return results
        elif first is None:
            first = result


def _flush(pgconn: Any) -> None:
    """Send what libpq holds (a non-blocking connection may hold some back), reading
    meanwhile so that the server never waits on a full socket."""
    while pgconn.flush():
        if _wait(pgconn.socket, write=True):
            pgconn.consume_input()


def _next_result(pgconn: Any) -> Any:
    """libpq's next result, waited for with the GIL released."""
    while pgconn.is_busy():
        _wait(pgconn.socket)
        pgconn.consume_input()
    return pgconn.get_result()


def _wait(fileno: int, *, write: bool = False) -> bool:
    """Wait until the socket can be read (or, with ``write``, written): True if readable."""
    if _POLL is None:  # Windows
        readable, _, _ = select.select([fileno], [fileno] if write else [], [])
        return bool(readable)
    poller = _POLL()
    poller.register(fileno, select.POLLIN | (select.POLLOUT if write else 0))
    events = poller.poll()
    return any(event & (select.POLLIN | select.POLLERR | select.POLLHUP) for _, event in events)


def _begin_command(driver: psycopg.Connection[Any]) -> bytes:
    """The ``BEGIN`` psycopg sends before a statement outside a transaction."""
    parts = [b"BEGIN"]
    if driver.isolation_level is not None:
        parts += [b"ISOLATION LEVEL", driver.isolation_level.name.replace("_", " ").encode()]
    if driver.read_only is not None:
        parts.append(b"READ ONLY" if driver.read_only else b"READ WRITE")
    if driver.deferrable is not None:
        parts.append(b"DEFERRABLE" if driver.deferrable else b"NOT DEFERRABLE")
    return b" ".join(parts)


def _error(driver: psycopg.Connection[Any], result: Any) -> psycopg.Error:
    """psycopg's exception for a failed result, as its cursor raises it: a lost connection
    is an ``OperationalError``."""
    if driver.pgconn.status == ConnStatus.BAD:
        message = (result.error_message or b"").decode(errors="replace").strip()
        return psycopg.OperationalError(message or "the connection was lost")
    return errors.error_from_result(result, encoding=driver.info.encoding)
