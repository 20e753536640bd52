"""Container health check for semdb images: the configured database answers and holds
semdb's schema (``semdb db upgrade`` has run).

Exit status 0 when healthy, 1 otherwise, with one line saying why. It never falls back to the
embedded server (which ``semdb db status`` would start): in a container, SEMDB_DATABASE_URL
must point at the database.
"""

from __future__ import annotations

import os
import sys

import psycopg

from semdb.db.url import libpq_uri, parse_url
from semdb.errors import SemdbError

_SCHEMA_MIGRATED = "SELECT to_regclass('semdb.alembic_version') IS NOT NULL"


def main() -> int:
    text = os.environ.get("SEMDB_DATABASE_URL", "").strip()
    if not text:
        print("unhealthy: SEMDB_DATABASE_URL is not set", file=sys.stderr)
        return 1
    try:
        uri = libpq_uri(parse_url(text, source="SEMDB_DATABASE_URL"))
        with psycopg.connect(uri, connect_timeout=5) as connection:
            row = connection.execute(_SCHEMA_MIGRATED).fetchone()
    except SemdbError as exc:
        print(f"unhealthy: {exc.one_line()}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())  # libpq's hint is on a second line
        print(f"unhealthy: cannot reach the database: {reason}", file=sys.stderr)
        return 1
    if not row or not row[0]:
        print("unhealthy: semdb's schema is missing (run: semdb db upgrade)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
