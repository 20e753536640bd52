"""Settings read from the environment, in one place.

| variable | meaning | default |
|---|---|---|
| ``SEMDB_DATABASE_URL`` | any PostgreSQL 14+ with pgvector 0.7+ | unset: the embedded server |
| ``SEMDB_READ_URL`` | a hot standby for searches (``semdb.create_read_engine``) | unset |
| ``SEMDB_HOME`` | where the embedded server keeps its data | ``./.semdb`` |
"""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_VARIABLE = "SEMDB_DATABASE_URL"
HOME_VARIABLE = "SEMDB_HOME"
READ_URL_VARIABLE = "SEMDB_READ_URL"


def database_url_setting() -> str | None:
    """The database URL the user configured, or None to use the embedded server."""
    value = os.environ.get(DATABASE_URL_VARIABLE, "").strip()
    return value or None


def read_url_setting() -> str | None:
    """The URL of a read replica for searches, or None."""
    value = os.environ.get(READ_URL_VARIABLE, "").strip()
    return value or None


def semdb_home() -> Path:
    """The folder for semdb's local state (the embedded server's data, among others)."""
    return Path(os.environ.get(HOME_VARIABLE) or ".semdb").expanduser().absolute()
