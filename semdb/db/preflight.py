"""Checks run when semdb connects: is this a PostgreSQL semdb can use?

semdb needs PostgreSQL 14 or newer and pgvector 0.7 or newer (halfvec, binary quantisation,
``<+>``); pgvector 0.8 adds iterative index scans, which filtered search uses when present.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from semdb.errors import ExtensionMissingError

MIN_SERVER_VERSION_NUM = 140000
MIN_PGVECTOR = (0, 7, 0)
PGVECTOR_INSTALL_FIX = (
    "install pgvector 0.7+ on that server (https://github.com/pgvector/pgvector#installation, "
    "or the pgvector/pgvector Docker image), or unset SEMDB_DATABASE_URL to use semdb's "
    "embedded server"
)


@dataclass(frozen=True)
class ServerInfo:
    """What the preflight learnt about the server and the database."""

    server_version: str
    server_version_num: int
    database: str
    pgvector_available: str | None  # the version the server could install
    pgvector_installed: str | None  # the version created in this database

    @property
    def iterative_scan(self) -> bool:
        """pgvector 0.8+ can continue an index scan until enough rows pass a filter."""
        version = self.pgvector_installed or self.pgvector_available
        return version is not None and parse_version(version) >= (0, 8, 0)


def parse_version(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def inspect_server(connection: Connection) -> ServerInfo:
    row = connection.execute(
        text(
            "SELECT current_setting('server_version'), "
            "current_setting('server_version_num')::int, current_database(), "
            "(SELECT default_version FROM pg_available_extensions WHERE name = 'vector'), "
            "(SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        )
    ).one()
    return ServerInfo(row[0], row[1], row[2], row[3], row[4])


def check_server(connection: Connection) -> ServerInfo:
    """Raise a :class:`ExtensionMissingError` with the fix when semdb cannot work here."""
    info = inspect_server(connection)
    where = f"database {info.database!r} (PostgreSQL {info.server_version})"
    if info.server_version_num < MIN_SERVER_VERSION_NUM:
        raise ExtensionMissingError(
            f"semdb needs PostgreSQL 14 or newer; {where} is older",
            fix="upgrade the server, or unset SEMDB_DATABASE_URL to use semdb's embedded server",
        )
    if info.pgvector_installed is None and info.pgvector_available is None:
        raise ExtensionMissingError(
            f"pgvector is not available on the server of {where}", fix=PGVECTOR_INSTALL_FIX
        )
    installed = info.pgvector_installed
    if installed is not None and parse_version(installed) < MIN_PGVECTOR:
        raise ExtensionMissingError(
            f"{where} has pgvector {info.pgvector_installed}; semdb needs 0.7 or newer",
            fix="run ALTER EXTENSION vector UPDATE (after installing a newer pgvector on the "
            "server if needed)",
        )
    if installed is None and parse_version(info.pgvector_available or "0") < MIN_PGVECTOR:
        raise ExtensionMissingError(
            f"the server of {where} offers pgvector {info.pgvector_available}; "
            "semdb needs 0.7 or newer",
            fix=PGVECTOR_INSTALL_FIX,
        )
    return info
