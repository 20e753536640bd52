"""semdb: a semantic database on PostgreSQL and pgvector.

The runtime never imports torch or transformers; ONNX Runtime is loaded only by the embedder.
"""

from semdb.db import EmbeddedServer, create_engine, resolve_url
from semdb.errors import SemdbError

__version__ = "0.1.0"

__all__ = [
    "EmbeddedServer",
    "SemdbError",
    "__version__",
    "create_engine",
    "resolve_url",
]
