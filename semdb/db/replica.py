"""Searches on read replicas (hot standbys), writes on the primary, and read-your-writes.

>>> primary = semdb.create_engine()                 # SEMDB_DATABASE_URL: writes, queue, workers
>>> replica = semdb.create_read_engine()            # SEMDB_READ_URL: a hot standby, searches
>>> with Session(primary) as session:
...     session.add(Doc(title="new")); session.commit()
...     lsn = semdb.commit_lsn(session)             # where the primary's WAL stands now
>>> with Session(replica) as session:
...     semdb.wait_for_replay(session, lsn, timeout=5.0)   # the replica has replayed it
...     semdb.search(session, Doc.embedding, "new", embedder=embedder)

A search sets its planner settings for its own statement only (``set_config(..., true)``
inside a savepoint) and writes nothing, so it runs on a standby as on a primary. The query
log is written by the engine it is enabled on: enable it on the primary's engine.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from semdb.config import READ_URL_VARIABLE, read_url_setting
from semdb.db.engine import connect, create_engine
from semdb.db.preflight import check_server
from semdb.db.url import display_url, parse_url
from semdb.errors import ConfigurationError, ExtensionMissingError, ReplicaLagError

#: How long :func:`wait_for_replay` waits by default, in seconds.
DEFAULT_WAIT_SECONDS = 5.0


def create_read_engine(
    read_url: str | URL | None = None,
    *,
    allow_primary: bool = False,
    preflight: bool = True,
    **kwargs: Any,
) -> Engine:
    """An engine on a read replica: ``read_url``, else ``SEMDB_READ_URL``.

    The preflight checks that the server is a hot standby (``pg_is_in_recovery()``; a
    primary is refused unless ``allow_primary``) and that pgvector is installed in its
    database (a standby cannot install it: it comes from the primary).
    """
    if read_url is None:
        text = read_url_setting()
        if text is None:
            raise ConfigurationError(
                f"no read replica is configured ({READ_URL_VARIABLE} is unset)",
                fix=f"set {READ_URL_VARIABLE} to a hot standby's URL, or pass read_url=",
            )
        url = parse_url(text, source=READ_URL_VARIABLE)
    elif isinstance(read_url, URL):
        url = read_url
    else:
        url = parse_url(read_url, source="the read URL")
    engine = create_engine(url, preflight=False, **kwargs)
    if preflight:
        with connect(engine) as connection:
            check_replica(connection, allow_primary=allow_primary)
    return engine


def check_replica(connection: Connection, *, allow_primary: bool = False) -> None:
    """Raise with the fix when ``connection``'s server cannot serve semdb's searches as a
    read replica."""
    where = display_url(connection.engine.url)
    info = check_server(connection)
    if info.pgvector_installed is None:
        raise ExtensionMissingError(
            f"the read replica {where} has no pgvector in database {info.database!r}",
            fix="run CREATE EXTENSION vector on the primary (semdb db upgrade does); the "
            "replica receives it, or point the read URL at a replica of semdb's database",
        )
    standby = connection.execute(sa.text("SELECT pg_is_in_recovery()")).scalar()
    if not standby and not allow_primary:
        raise ConfigurationError(
            f"the read URL {where} points at a primary server, not a hot standby",
            fix="point it at a replica, or pass allow_primary=True to search the primary "
            "through it on purpose",
        )


def commit_lsn(bind: Session | Connection | Engine) -> str:
    """The primary's WAL position now (``pg_current_wal_lsn()``): call it after a commit;
    a replica that has replayed up to it sees that commit."""
    statement = sa.text("SELECT pg_current_wal_lsn()::text")
    if isinstance(bind, Engine):
        with connect(bind) as connection:
            return str(connection.execute(statement).scalar_one())
    return str(bind.execute(statement).scalar_one())


def replay_lsn(bind: Session | Connection) -> str | None:
    """How far a standby has replayed (``pg_last_wal_replay_lsn()``); None on a primary."""
    value = bind.execute(sa.text("SELECT pg_last_wal_replay_lsn()::text")).scalar()
    return None if value is None else str(value)


def wait_for_replay(
    bind: Session | Connection, lsn: str, *, timeout: float = DEFAULT_WAIT_SECONDS
) -> float:
    """Wait until the replica ``bind`` runs on has replayed the WAL up to ``lsn`` (from
    :func:`commit_lsn`); returns the seconds waited. On a primary it returns at once.

    Call it before the search, outside a REPEATABLE READ snapshot (in READ COMMITTED, the
    default, each statement sees what was replayed before it began). Raises
    :class:`ReplicaLagError` after ``timeout`` seconds.
    """
    if timeout < 0:
        raise ConfigurationError(f"timeout must be >= 0, got {timeout!r}", fix="pass seconds")
    check = sa.text(
        "SELECT pg_is_in_recovery(), "
        "coalesce(pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn), false), "
        "pg_last_wal_replay_lsn()::text"
    )
    started = time.monotonic()
    pause = 0.0005
    while True:
        standby, caught_up, replayed = bind.execute(check, {"lsn": lsn}).one()
        if not standby or caught_up:
            return time.monotonic() - started
        waited = time.monotonic() - started
        if waited >= timeout:
            raise ReplicaLagError(
                f"the read replica had replayed the WAL to {replayed or 'nothing'}, not yet to "
                f"{lsn}, after {waited:.1f} s",
                fix="wait longer (timeout=), search the primary for this read, or check the "
                "replica's replication (pg_stat_wal_receiver on it, pg_stat_replication on "
                "the primary)",
            )
        time.sleep(min(pause, max(0.0, timeout - waited)))
        pause = min(pause * 2, 0.02)


def lag_bytes(primary: Connection, replica: Connection) -> int:
    """How many bytes of WAL the replica has still to replay, compared with the primary now."""
    current = commit_lsn(primary)
    replayed = replay_lsn(replica)
    if replayed is None:
        return 0
    value = primary.execute(
        sa.text("SELECT CAST(:a AS pg_lsn) - CAST(:b AS pg_lsn)"), {"a": current, "b": replayed}
    ).scalar_one()
    return max(0, int(value))
