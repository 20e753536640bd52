"""semdb: a semantic database on PostgreSQL and pgvector.

The runtime never imports torch or transformers; ONNX Runtime is loaded only by the embedder
(``semdb.Embedder`` is imported on first use, so ``import semdb`` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semdb.bundles import Bundle
from semdb.db import EmbeddedServer, create_engine, resolve_url
from semdb.db.replica import commit_lsn, create_read_engine, wait_for_replay
from semdb.errors import SemdbError
from semdb.monitor import query_log
from semdb.orm import (
    HNSW,
    Chunks,
    Distance,
    IVFFlat,
    VectorType,
    copy_rows,
    embedding_column,
)
from semdb.retrieval import (
    PreparedSearch,
    explain_search,
    hybrid_search,
    keyword_search,
    more_like_this,
    search,
)
from semdb.sync import Worker, backfill, embed_on_flush
from semdb.sync.keyword_stats import (
    install_keyword_stats,
    refresh_keyword_stats,
    uninstall_keyword_stats,
)

if TYPE_CHECKING:
    from semdb.embed import Embedder

__version__ = "0.1.0"

__all__ = [
    "HNSW",
    "Bundle",
    "Chunks",
    "Distance",
    "EmbeddedServer",
    "Embedder",
    "IVFFlat",
    "PreparedSearch",
    "SemdbError",
    "VectorType",
    "Worker",
    "__version__",
    "backfill",
    "commit_lsn",
    "copy_rows",
    "create_engine",
    "create_read_engine",
    "embed_on_flush",
    "embedding_column",
    "explain_search",
    "hybrid_search",
    "install_keyword_stats",
    "keyword_search",
    "more_like_this",
    "query_log",
    "resolve_url",
    "search",
    "refresh_keyword_stats",
    "uninstall_keyword_stats",
    "wait_for_replay",
]


def __getattr__(name: str) -> Any:
    if name == "Embedder":
        from semdb.embed import Embedder

        return Embedder
    raise AttributeError(f"module 'semdb' has no attribute {name!r}")
