"""``semdb worker``: claim queued rows, embed them in batches, write the vectors in bulk.

Run any number of workers, on any number of hosts, against one database: entries are
claimed with ``FOR UPDATE SKIP LOCKED`` inside the transaction that writes their vectors,
so two workers never embed the same row and a worker killed mid-batch loses nothing (its
transaction rolls back, its entries are claimable again). A row whose stored vector is
already fresh (same content hash, same model) is skipped without embedding. A batch whose
embedding or whose write fails (a check constraint, a trigger of the application's, a lock
timeout) is retried row by row, each write in a savepoint of its own, to isolate the culprit;
failures are recorded in ``semdb.errors`` and retried with exponential backoff, up to
``max_attempts``, while the rest of the queue drains.

SIGTERM and SIGINT finish the batch in hand, then stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg
import sqlalchemy as sa

from semdb.db.url import libpq_uri
from semdb.errors import DimensionMismatchError, SyncError
from semdb.orm.types import encode_matrix
from semdb.protocols import TextEmbedder, model_tag
from semdb.sync.activity import BatchObserver, after_batch, snapshot
from semdb.sync.claim import Claimed, claim
from semdb.sync.registration import TargetChanged, hold_registration
from semdb.sync.registry import bind_model_version, registered, version_refusal
from semdb.sync.target import SyncTarget
from semdb.sync.write import (
    SCHEMA_CHANGED,
    BatchWriter,
    VectorWrite,
    finish,
    record_failures,
    worker_name,
    write_isolated,
    write_vectors,
)

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    """What a worker did, cumulative."""

    embedded: int = 0  # vectors written
    skipped: int = 0  # rows already fresh, or gone
    requeued: int = 0  # text changed while embedding: left queued
    failed: int = 0  # failed attempts recorded
    given_up: int = 0
    batches: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0
    by_column: dict[str, int] = field(default_factory=dict)


def fold_keyword_stats(connection: psycopg.Connection[Any], target: SyncTarget) -> None:
    """Fold the column's deferred BM25 upkeep, if it has any (one statement; nothing
    happens for a column without keyword statistics or kept in the writer's statement)."""
    from semdb.sync.keyword_stats import fold_statement

    with connection.transaction():
        connection.execute(
            fold_statement(target.table_schema, target.table_name, target.column_name)
        )


class Worker:
    """Embeds the queued rows of the registered columns of one model.

    ``columns``: names (``table.column`` or ``schema.table.column``) to limit the work to;
    default: every registered column of ``embedder.model_name``. ``lock_timeout_seconds``:
    how long writing a vector waits for a row lock the application holds before that row's
    write counts as failed (retried later with backoff).
    """

    def __init__(
        self,
        engine: sa.Engine,
        embedder: TextEmbedder,
        *,
        columns: Sequence[str] | None = None,
        batch_size: int = 128,
        poll_seconds: float = 1.0,
        max_attempts: int = 5,
        backoff_seconds: float = 2.0,
        backoff_cap_seconds: float = 600.0,
        idle_in_transaction_timeout_seconds: int = 600,
        lock_timeout_seconds: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise SyncError(f"batch_size must be positive, got {batch_size}", fix="use 64-512")
        if max_attempts < 1:
            raise SyncError(f"max_attempts must be positive, got {max_attempts}", fix="use 5")
        self.engine = engine
        self.uri = libpq_uri(engine.url)
        self.embedder = embedder
        self.model = model_tag(embedder)
        self.columns = list(columns or [])
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self.idle_timeout_ms = int(idle_in_transaction_timeout_seconds * 1000)
        # A row the application keeps locked fails its write after this long (recorded and
        # retried like any failed write) instead of holding the worker and its claims.
        self.lock_timeout_ms = max(1, int(lock_timeout_seconds * 1000))
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._connection: psycopg.Connection[Any] | None = None
        self.targets: list[SyncTarget] = []
        self._reload = False
        self._loaded = False
        #: Called with a BatchReport after each batch (semdb.sync.activity).
        self.observers: list[BatchObserver] = []

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, then return from :meth:`run` (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(
                self.uri,
                application_name=f"semdb worker {worker_name()}"[:63],
                options=f"-c idle_in_transaction_session_timeout={self.idle_timeout_ms} "
                f"-c lock_timeout={self.lock_timeout_ms}",
            )
            self.targets = self._load_targets(reload=self._loaded)
            self._loaded = True
        return self._connection

    def close(self) -> None:
        if self._connection is not None and not self._connection.closed:
            self._connection.close()
        self._connection = None

    def _load_targets(self, *, reload: bool = False) -> list[SyncTarget]:
        """The columns this worker embeds. A worker whose model version no column of its
        model holds is refused at start; later (``reload``: an activation moved the columns
        to another version meanwhile) it only says so and idles."""
        name, version = self.embedder.model_name, self.embedder.model_version
        refusal: SyncError | None = None
        with self.engine.begin() as connection:
            targets = []
            for target in registered(connection, names=self.columns or None):
                exists = connection.execute(
                    sa.text("SELECT to_regclass(:name) IS NOT NULL"),
                    {"name": f'"{_quote(target.table_schema)}"."{_quote(target.table_name)}"'},
                ).scalar()
                if exists:
                    targets.append(target)
                else:
                    log.warning("%s is registered but its table is gone: skipped", target.name)
            if not self.columns:  # every queued column of this model (and version)
                targets = [t for t in targets if t.model == name and t.sync == "queued"]
            # A column bound to no version yet is bound to this one now (or to the one its
            # stored vectors carry): one column, one model version.
            targets = [bind_model_version(connection, t, name, version) for t in targets]
            if not self.columns:
                # A column being switched to this very model is the shadow's work only.
                switching = {
                    t.shadow_of for t in targets if t.shadow_of and t.accepts(name, version)
                }
                ours = targets
                targets = [t for t in ours if t.accepts(name, version) and t.id not in switching]
                if ours and not targets:
                    refusal = version_refusal(ours[0], name, version, "this worker")
        # Raised once the binding is committed: the column keeps its version either way.
        if refusal is not None:
            if not reload:
                raise refusal
            log.warning("%s", refusal.one_line())
        for target in targets:
            if target.model == name and not target.accepts(name, version):
                raise version_refusal(target, name, version, "this worker")
            if not target.accepts(name, version):
                raise SyncError(
                    f"{target.name} is embedded with model {target.model_tag!r}; this worker "
                    f"runs {self.model!r}",
                    fix=f"start a worker with --model {target.model_tag}",
                )
            if target.dimension != self.embedder.dimension:
                raise DimensionMismatchError(
                    f"{target.name} holds {target.dimension}-dimensional vectors; the model "
                    f"{self.model} makes {self.embedder.dimension}",
                    fix="register the column with the model's dimension, or use its model",
                )
        if not targets:
            log.warning("no registered vector column uses model %s", self.embedder.model_name)
        return targets

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        *,
        until_empty: bool = False,
        max_batches: int | None = None,
        on_batch: Callable[[WorkerStats], None] | None = None,
    ) -> WorkerStats:
        """Work until stopped (or until the queue is empty, with ``until_empty``)."""
        started = time.perf_counter()
        reconnect_wait = self.poll_seconds
        try:
            self.connect()
            while not self.stopping:
                if max_batches is not None and self.stats.batches >= max_batches:
                    break
                try:
                    done = self.run_once()
                except psycopg.OperationalError as exc:
                    # The server went away, or ended this session (for instance after
                    # idle_in_transaction_session_timeout while an embedder hung): the claims
                    # were released with the session; reconnect and go on.
                    log.warning("lost the database connection (%s); reconnecting", exc)
                    self.close()
                    self._stop.wait(reconnect_wait)
                    reconnect_wait = min(reconnect_wait * 2, 30.0)
                    continue
                reconnect_wait = self.poll_seconds
                if on_batch is not None and done:
                    on_batch(self.stats)
                if self._reload:  # a column was switched or went away: read the registry
                    self._reload = False
                    self.targets = self._load_targets(reload=True)
                if done == 0:
                    if until_empty:
                        break
                    self._stop.wait(self.poll_seconds)
        finally:
            self.stats.seconds += time.perf_counter() - started
            self.close()
        return self.stats

    def run_once(self) -> int:
        """One batch for each column that has work; returns the entries settled or retried."""
        connection = self.connect()
        total = 0
        for target in list(self.targets):
            if self.stopping:
                break
            try:
                before, started = snapshot(self.stats), time.perf_counter()
                claimed = self._batch(connection, target)
                total += claimed
                fold_keyword_stats(connection, target)
                if claimed:
                    elapsed = time.perf_counter() - started
                    after_batch(self, connection, target, claimed, before, elapsed)
            except TargetChanged as exc:
                log.warning("%s", exc)
                self.targets.remove(target)
                self._reload = True
            except SCHEMA_CHANGED as exc:
                # the table changed under the worker: leave it, keep the others going
                log.warning("%s cannot be synced any more (%s): skipped", target.name, exc)
                self.targets.remove(target)
        return total

    def _batch(self, connection: psycopg.Connection[Any], target: SyncTarget) -> int:
        with connection.transaction():
            hold_registration(connection, target)
            claimed = claim(connection, target, limit=self.batch_size, model=self.model)
            if not claimed:
                return 0
            settled = [c.queue_id for c in claimed if c.missing or c.fresh]
            self.stats.skipped += len(settled)
            pending = [c for c in claimed if not (c.missing or c.fresh)]
            # failures retried with backoff, and those given up at once (a text over a
            # chunked column's max_chunks fails the same way every time)
            final: list[tuple[int, int, dict[str, Any], str]] = []
            ready: list[tuple[Claimed, Any]]
            if target.chunking is not None:  # a chunked column (semdb.sync.chunking)
                from semdb.sync.chunking import prepare_claimed, write_rows

                ready, failures, final = prepare_claimed(self, connection, target, pending)
                write: BatchWriter[Any] = write_rows
            else:
                vectors, failures = self._embed(pending, target)
                ready = [
                    (c, VectorWrite(c.key_values or (), vectors[c.queue_id], c.content_hash or b""))
                    for c in pending
                    if c.queue_id in vectors
                ]
                write = write_vectors
            written, refused = write_isolated(
                connection, target, [w for _, w in ready], self.model, write=write
            )
            for index, ((entry, _), ok) in enumerate(zip(ready, written, strict=True)):
                if index in refused:  # writing its vector failed: recorded as a failure
                    failures.append(_failure(entry, refused[index], writing=True))
                elif ok:
                    settled.append(entry.queue_id)
                    self.stats.embedded += 1
                else:
                    self.stats.requeued += 1
            finish(connection, settled)
            for failed, max_attempts in ((failures, self.max_attempts), (final, 1)):
                if failed:
                    self.stats.failed += len(failed)
                    self.stats.given_up += record_failures(
                        connection,
                        target,
                        failed,
                        max_attempts=max_attempts,
                        backoff_seconds=self.backoff_seconds,
                        backoff_cap_seconds=self.backoff_cap_seconds,
                    )
        self.stats.batches += 1
        self.stats.by_column[target.name] = self.stats.by_column.get(target.name, 0) + len(claimed)
        return len(claimed)

    def _embed(
        self, pending: list[Claimed], target: SyncTarget
    ) -> tuple[dict[int, bytes | None], list[tuple[int, int, dict[str, Any], str]]]:
        """Vectors by queue id (None for empty texts), and the failures."""
        vectors: dict[int, bytes | None] = {c.queue_id: None for c in pending if not c.document}
        texts = [c for c in pending if c.document]
        if not texts:
            return vectors, []
        try:
            vectors.update(self._encode(texts, target))
            return vectors, []
        except Exception as exc:
            if len(texts) == 1:
                return vectors, [_failure(texts[0], exc)]
            log.warning("a batch of %d failed (%s); retrying row by row", len(texts), exc)
        failures = []
        for entry in texts:
            try:
                vectors.update(self._encode([entry], target))
            except Exception as exc:
                failures.append(_failure(entry, exc))
        return vectors, failures

    def _encode(self, entries: list[Claimed], target: SyncTarget) -> dict[int, bytes | None]:
        started = time.perf_counter()
        matrix = self.embedder.embed([e.document or "" for e in entries], kind="document")
        self.stats.embed_seconds += time.perf_counter() - started
        if matrix.shape[0] != len(entries):
            raise SyncError(
                f"the embedder returned {matrix.shape[0]} vectors for {len(entries)} texts",
                fix="check the embedder",
            )
        encoded = encode_matrix(
            matrix, dimension=target.dimension, storage=target.storage, where=target.name
        )
        return {entry.queue_id: data for entry, data in zip(entries, encoded, strict=True)}


def _quote(name: str) -> str:
    return name.replace('"', '""')


def _failure(
    entry: Claimed, exc: BaseException | str, *, writing: bool = False
) -> tuple[int, int, dict[str, Any], str]:
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    if writing:
        error = f"writing the vector failed: {error}"
    return (entry.queue_id, entry.attempts, entry.key, error)


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM / SIGINT: finish the current batch, then stop (the main thread only)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current batch, then stopping", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
