"""What workers did, batch by batch: a counter in the database and hooks for metrics.

After each batch that settled entries, a worker calls :func:`after_batch`, which

- adds the batch to ``semdb.sync_activity`` (one upsert per column, worker and minute, in a
  transaction of its own after the batch's: a failure here never undoes embedded vectors),
  from which ``semdb monitor`` computes rows embedded per second on any host; rows older
  than :data:`KEEP` are deleted by the workers, at most once a minute each;
- calls the worker's observers (``Worker.observers``) with a :class:`BatchReport`, which is
  how ``semdb worker --metrics-port`` counts for Prometheus (:mod:`semdb.monitor.metrics`).

A database migrated before ``0006_monitor`` has no ``semdb.sync_activity``: the worker logs
it once and goes on without the counter.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from semdb.sync.target import SyncTarget
from semdb.sync.write import worker_name

if TYPE_CHECKING:
    from semdb.sync.worker import Worker, WorkerStats

log = logging.getLogger(__name__)

#: How long the per-minute activity rows are kept.
KEEP = "1 day"
PRUNE_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class BatchReport:
    """One batch of one column, as observers see it."""

    column: str
    claimed: int
    embedded: int
    failed: int
    given_up: int
    seconds: float


BatchObserver = Callable[[BatchReport], None]

UPSERT = (
    "INSERT INTO semdb.sync_activity AS a "
    "(column_id, worker, minute, embedded, failed, batches, batch_seconds) "
    "VALUES (%s, %s, date_trunc('minute', now()), %s, %s, 1, %s) "
    "ON CONFLICT (column_id, worker, minute) DO UPDATE SET "
    "embedded = a.embedded + EXCLUDED.embedded, failed = a.failed + EXCLUDED.failed, "
    "batches = a.batches + 1, batch_seconds = a.batch_seconds + EXCLUDED.batch_seconds"
)
PRUNE = "DELETE FROM semdb.sync_activity WHERE minute < now() - CAST(%s AS interval)"

# Per worker: whether the table is there (False once known missing); the last prune time.
_state: weakref.WeakKeyDictionary[Worker, dict[str, Any]] = weakref.WeakKeyDictionary()


def snapshot(stats: WorkerStats) -> tuple[int, int, int]:
    """The counters a batch report is the difference of."""
    return stats.embedded, stats.failed, stats.given_up


def after_batch(
    worker: Worker,
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    claimed: int,
    before: tuple[int, int, int],
    seconds: float,
) -> None:
    """Record one settled batch (see the module); never raises a database error."""
    embedded, failed, given_up = (
        now - then for now, then in zip(snapshot(worker.stats), before, strict=True)
    )
    report = BatchReport(target.name, claimed, embedded, failed, given_up, seconds)
    state = _state.setdefault(worker, {"table": True, "pruned": 0.0})
    if state["table"] and target.id is not None:
        try:
            with connection.transaction():
                connection.execute(
                    UPSERT, (target.id, worker_name(), embedded, failed, float(seconds))
                )
                if time.monotonic() - state["pruned"] > PRUNE_EVERY_SECONDS:
                    state["pruned"] = time.monotonic()
                    connection.execute(PRUNE, (KEEP,))
        except psycopg.errors.UndefinedTable:
            state["table"] = False
            log.warning(
                "semdb.sync_activity is missing (run semdb db upgrade): rows/s will not be "
                "recorded for semdb monitor"
            )
        except psycopg.errors.ReadOnlySqlTransaction:
            state["table"] = False
    for observer in list(getattr(worker, "observers", ())):
        try:
            observer(report)
        except Exception:  # a metrics hook must never stop the worker
            log.exception("a batch observer failed")
