"""The database layer: where the database is, the embedded server, the preflight, schema.

Knows SQLAlchemy and psycopg; never ONNX Runtime or torch.
"""

from semdb.db.embedded import EmbeddedServer
from semdb.db.engine import connect, create_engine, resolve_url
from semdb.db.preflight import ServerInfo, check_server, inspect_server
from semdb.db.url import display_url, libpq_uri, parse_url

__all__ = [
    "EmbeddedServer",
    "ServerInfo",
    "check_server",
    "connect",
    "create_engine",
    "display_url",
    "inspect_server",
    "libpq_uri",
    "parse_url",
    "resolve_url",
]
