"""Keeping vectors in sync with the text they are made from.

The row's journey, by file: :mod:`~semdb.sync.inline` (embedded at flush, same transaction),
or :mod:`~semdb.sync.triggers` (changed rows queued) -> :mod:`~semdb.sync.claim` (a worker
claims them, SKIP LOCKED) -> the embedder -> :mod:`~semdb.sync.write` (vectors written,
entries settled) in :mod:`~semdb.sync.worker`'s loop; :mod:`~semdb.sync.backfill` catches up
on rows that are missing or stale. :mod:`~semdb.sync.registry` and
:mod:`~semdb.sync.target` say which columns exist, for workers on any host.

Takes an embedder (anything shaped like :class:`semdb.protocols.TextEmbedder`); never
imports torch.
"""

from semdb.sync.backfill import BackfillStats, backfill
from semdb.sync.inline import embed_on_flush
from semdb.sync.registry import register, registered
from semdb.sync.target import SyncTarget
from semdb.sync.worker import Worker, WorkerStats

__all__ = [
    "BackfillStats",
    "SyncTarget",
    "Worker",
    "WorkerStats",
    "backfill",
    "embed_on_flush",
    "register",
    "registered",
]
