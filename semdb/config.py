"""Settings read from the environment, in one place.

| variable | meaning | default |
|---|---|---|
| ``SEMDB_DATABASE_URL`` | any PostgreSQL 14+ with pgvector 0.7+ | unset: the embedded server |
| ``SEMDB_READ_URL`` | a hot standby for searches (``semdb.create_read_engine``) | unset |
| ``SEMDB_HOME`` | where the embedded server keeps its data | ``./.semdb`` |
| ``SEMDB_CPU_PRECISION`` | CPU graph when none is asked for: auto, fp32, int8 | ``auto`` |
| ``SEMDB_CACHE_DIR`` | per-machine measurements | ``$XDG_CACHE_HOME/semdb`` |

``auto`` measures which CPU graph is faster on this machine (:mod:`semdb.embed.precision`);
the cache folder falls back to ``~/.cache/semdb`` without ``XDG_CACHE_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_VARIABLE = "SEMDB_DATABASE_URL"
HOME_VARIABLE = "SEMDB_HOME"
READ_URL_VARIABLE = "SEMDB_READ_URL"
CACHE_DIR_VARIABLE = "SEMDB_CACHE_DIR"
CPU_PRECISION_VARIABLE = "SEMDB_CPU_PRECISION"


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


def cache_dir() -> Path:
    """The folder for per-machine measurements semdb keeps between runs."""
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "semdb"


def cpu_precision_setting() -> str | None:
    """The CPU precision pinned for every process (None or ``auto``: chosen per machine)."""
    value = os.environ.get(CPU_PRECISION_VARIABLE, "").strip().lower()
    return None if value in ("", "auto") else value
