"""The opt-in sampled query log, relevance feedback, and nDCG in production.

>>> semdb.query_log.enable(engine, sample=0.1)            # 10% of searches on this engine
>>> hits = semdb.search(session, Doc.embedding, "cheap flights", embedder=embedder)
>>> hits.query_id                                       # an int when this search was logged
>>> semdb.query_log.feedback(engine, hits.query_id, clicked=[doc.id])
>>> semdb.query_log.production_ndcg(engine, k=10)       # (mean nDCG@10, queries judged)

What is logged, in ``semdb.query_log``: the time, the column, the query vector (float32
bytes), the filter (its SQL, values as placeholders), the plan, the latency, k, the rows
returned and their keys (when the search selected the key columns or ORM objects). The log
is a ring of ``capacity`` entries (the oldest is overwritten), so it never outgrows it.

Logging never slows a search by a round trip: a sampled search puts its entry on an
in-process queue (a few microseconds), and one thread per engine writes them in batches on
a connection of its own, with ``synchronous_commit = off``. On a read-only server (a hot
standby, ``default_transaction_read_only``) the writer notices, logs one warning and turns
the log off for that engine; nothing is written and no search fails. Searches run by
``semdb monitor`` itself are never logged.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import itertools
import json
import logging
import queue
import random
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql

from semdb.errors import SemdbError
from semdb.evaluation.metrics import ndcg_at_k
from semdb.retrieval import observers

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 100_000
FLUSH_ENTRIES = 256
FLUSH_SECONDS = 0.5

_suppressed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "semdb_query_log_suppressed", default=False
)


@contextlib.contextmanager
def not_logged() -> Iterator[None]:
    """Searches run inside are not logged (the monitor's own)."""
    token = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(token)


@dataclass
class _Entry:
    id: int
    logged_at: float
    search: Any
    vector: Any
    plan: str
    latency_ms: float
    rows: int
    results: list[list[Any]] | None


#: Put on a writer's queue: write what is pending now.
_FLUSH = object()

INSERT = sa.text(
    "INSERT INTO semdb.query_log AS l (slot, seq, id, logged_at, column_id, column_name, "
    "query, filter, plan, latency_ms, k, rows, results) "
    "SELECT s % :capacity, s, :id, to_timestamp(:logged_at), :column_id, :column_name, "
    ":query, :filter, :plan, :latency_ms, :k, :rows, CAST(:results AS jsonb) "
    "FROM nextval('semdb.query_log_ids') AS s "
    "ON CONFLICT (slot) DO UPDATE SET seq = EXCLUDED.seq, id = EXCLUDED.id, "
    "logged_at = EXCLUDED.logged_at, column_id = EXCLUDED.column_id, "
    "column_name = EXCLUDED.column_name, query = EXCLUDED.query, filter = EXCLUDED.filter, "
    "plan = EXCLUDED.plan, latency_ms = EXCLUDED.latency_ms, k = EXCLUDED.k, "
    "rows = EXCLUDED.rows, results = EXCLUDED.results"
)
PRUNE_FEEDBACK = sa.text(
    "DELETE FROM semdb.query_feedback f WHERE NOT EXISTS "
    "(SELECT 1 FROM semdb.query_log l WHERE l.id = f.query_id) "
    "AND f.given_at < now() - interval '1 hour'"
)


class _Writer:
    """One engine's log: the sampling decision, the queue and the thread that writes."""

    def __init__(self, engine: Engine, sample: float, capacity: int) -> None:
        self.engine = engine
        self.sample = sample
        self.capacity = capacity
        self.queue: queue.SimpleQueue[_Entry | object | None] = queue.SimpleQueue()
        self.active = True
        self.written = 0
        self.dropped = 0
        self._columns: dict[Any, tuple[int | None, str]] = {}
        self._submitted = itertools.count(1)
        self.submitted = 0  # entries queued (the last value drawn from _submitted)
        self.processed = 0  # entries written or dropped (the writer thread's count)
        self._thread = threading.Thread(target=self._loop, name="semdb-query-log", daemon=True)
        self._thread.start()

    # -- in the searching thread ---------------------------------------------------------

    def observe(self, search: Any, vector: Any, result: Any, seconds: float) -> None:
        if not self.active or random.random() >= self.sample:
            return
        entry_id = random.getrandbits(62) + 1
        result.query_id = entry_id
        self.submitted = next(self._submitted)
        self.queue.put(
            _Entry(
                entry_id,
                time.time(),
                search,
                vector,
                result.plan.path
                + (" (fell back to exact)" if result.plan.fell_back_to_exact else ""),
                seconds * 1000.0,
                len(result),
                _keys(search, result),
            )
        )

    # -- in the writer thread ------------------------------------------------------------

    def _loop(self) -> None:
        if not self._writable():
            self.active = False
            self._drain()
            return
        pending: list[_Entry] = []
        deadline = time.monotonic() + FLUSH_SECONDS
        last_prune = 0.0
        while True:
            timeout = max(deadline - time.monotonic(), 0.0)
            now = False  # write what is pending at once (a flush, or stopping)
            try:
                entry = self.queue.get(timeout=timeout)
            except queue.Empty:
                entry = _FLUSH
            stop = entry is None
            if isinstance(entry, _Entry):
                pending.append(entry)
            else:
                now = True
            if pending and (now or len(pending) >= FLUSH_ENTRIES or time.monotonic() >= deadline):
                prune = time.monotonic() - last_prune > 3600
                self._write(pending, prune=prune)
                self.processed += len(pending)
                if prune:
                    last_prune = time.monotonic()
                pending = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + FLUSH_SECONDS
            if stop or not self.active:
                self._drain()
                return

    def _drain(self) -> None:
        while True:
            try:
                if isinstance(self.queue.get_nowait(), _Entry):
                    self.processed += 1
            except queue.Empty:
                break

    def _writable(self) -> bool:
        try:
            with self.engine.connect() as connection:
                read_only, has_log = connection.execute(
                    sa.text(
                        "SELECT pg_is_in_recovery() "
                        "OR current_setting('transaction_read_only')::bool, "
                        "to_regclass('semdb.query_log') IS NOT NULL"
                    )
                ).one()
        except sa.exc.DBAPIError as exc:
            log.warning("the query log cannot reach its database (%s): it is off", exc)
            return False
        if read_only:
            log.warning("the query log's database is read only (a standby?): the log is off")
            return False
        if not has_log:
            log.warning("semdb.query_log is missing (run semdb db upgrade): the log is off")
            return False
        return True

    def _write(self, entries: list[_Entry], *, prune: bool) -> None:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SET LOCAL synchronous_commit = off"))
                rows = [self._row(connection, entry) for entry in entries]
                connection.execute(INSERT, rows)
                if prune:
                    connection.execute(PRUNE_FEEDBACK)
                connection.commit()
            self.written += len(entries)
        except sa.exc.DBAPIError as exc:
            self.dropped += len(entries)
            log.debug("query log write failed", exc_info=True)
            message = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
            if "read-only" in message or "read only" in message or "does not exist" in message:
                self.active = False
                log.warning("the query log cannot write (%s): it is off", message)
            else:
                log.warning("the query log dropped %d entries: %s", len(entries), message)

    def _row(self, connection: sa.Connection, entry: _Entry) -> dict[str, Any]:
        target = entry.search.target
        column_id, column_name = self._column(connection, target)
        where = entry.search.where
        filter_sql = None
        if where is not None:
            filter_sql = str(where.compile(dialect=postgresql.dialect()))[:2000]  # type: ignore[no-untyped-call]
        return {
            "capacity": self.capacity,
            "id": entry.id,
            "logged_at": entry.logged_at,
            "column_id": column_id,
            "column_name": column_name,
            "query": np.asarray(entry.vector, dtype=np.float32).tobytes(),
            "filter": filter_sql,
            "plan": entry.plan,
            "latency_ms": entry.latency_ms,
            "k": entry.search.k,
            "rows": entry.rows,
            "results": None if entry.results is None else json.dumps(entry.results, default=str),
        }

    def _column(self, connection: sa.Connection, target: Any) -> tuple[int | None, str]:
        """The registry id of the searched column (None when only declared in Python), and
        its ``schema.table.column`` name."""
        key = (target.table.schema, target.table.name, target.column.name)
        if key not in self._columns:
            schema = target.table.schema or connection.dialect.default_schema_name or "public"
            found = connection.execute(
                sa.text(
                    "SELECT id FROM semdb.vector_columns WHERE table_schema = :s "
                    "AND table_name = :t AND column_name = :c AND shadow_of IS NULL"
                ),
                {"s": schema, "t": target.table.name, "c": target.column.name},
            ).scalar()
            self._columns[key] = (found, f"{schema}.{target.table.name}.{target.column.name}")
        return self._columns[key]

    def flush(self, timeout: float = 10.0) -> None:
        wanted, deadline = self.submitted, time.monotonic() + timeout
        self.queue.put(_FLUSH)
        while self.processed < wanted and time.monotonic() < deadline:
            if not self._thread.is_alive():
                break
            time.sleep(0.01)

    def stop(self) -> None:
        self.active = False
        self.queue.put(None)
        self._thread.join(timeout=5.0)


_writers: weakref.WeakKeyDictionary[Engine, _Writer] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _sync_engine(engine: Any) -> Engine:
    found: Engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine: its engine
    return found


def _observe(search: Any, connection: Any, vector: Any, result: Any, seconds: float) -> None:
    if _suppressed.get():
        return
    writer = _writers.get(connection.engine)
    if writer is not None:
        writer.observe(search, vector, result, seconds)


def enable(engine: Any, *, sample: float = 0.1, capacity: int = DEFAULT_CAPACITY) -> None:
    """Log ``sample`` (0-1) of the searches run on ``engine``'s connections, keeping the
    latest ``capacity`` entries. Enabling again changes the sample."""
    if not 0.0 <= float(sample) <= 1.0:
        raise SemdbError(f"sample must be from 0 to 1, got {sample!r}", fix="e.g. sample=0.1")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise SemdbError(f"capacity must be a positive integer, got {capacity!r}", fix="100000")
    engine = _sync_engine(engine)
    with _lock:
        writer = _writers.get(engine)
        if writer is not None and writer.active and writer.capacity == capacity:
            writer.sample = float(sample)
        else:
            if writer is not None:
                writer.stop()
            _writers[engine] = _Writer(engine, float(sample), capacity)
        if _observe not in observers.OBSERVERS:
            observers.OBSERVERS.append(_observe)


def disable(engine: Any) -> None:
    """Stop logging ``engine``'s searches (entries already queued are written)."""
    engine = _sync_engine(engine)
    with _lock:
        writer = _writers.pop(engine, None)
        if not _writers and _observe in observers.OBSERVERS:
            observers.OBSERVERS.remove(_observe)
    if writer is not None:
        writer.stop()


def enabled(engine: Any) -> bool:
    writer = _writers.get(_sync_engine(engine))
    return writer is not None and writer.active


def flush(engine: Any, timeout: float = 10.0) -> None:
    """Wait until the entries queued so far are written (tests, shutdown)."""
    writer = _writers.get(_sync_engine(engine))
    if writer is not None:
        writer.flush(timeout)


@atexit.register
def _stop_all() -> None:
    for writer in list(_writers.values()):
        writer.stop()


def _keys(search: Any, result: Any) -> list[list[Any]] | None:
    """The primary keys of the rows returned, when the search selected them."""
    names = [column.key for column in search.target.key]
    keys: list[list[Any]] = []
    for hit in result:
        row = hit.row
        if isinstance(row, sa.Row):
            values = [getattr(row, name, _MISSING) for name in names]
            if any(value is _MISSING for value in values):
                return None
            keys.append(values)
        else:
            try:
                identity = sa.inspect(row).identity
            except sa.exc.NoInspectionAvailable:
                return None
            if identity is None:
                return None
            keys.append(list(identity))
    return keys


_MISSING = object()


def _key(value: Any) -> str:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return json.dumps(values, default=str)


def feedback(engine: Any, query_id: int, *, clicked: Iterable[Any], relevance: int = 1) -> int:
    """Record that the rows with keys ``clicked`` (a key value, or a tuple for composite
    keys) were relevant to the logged search ``query_id`` (``result.query_id``). Returns how
    many were recorded; a search no longer in the log (overwritten) records nothing."""
    if query_id is None:
        return 0
    rows = [{"query": int(query_id), "key": _key(c), "relevance": int(relevance)} for c in clicked]
    if not rows:
        return 0
    with _sync_engine(engine).begin() as connection:
        known = connection.execute(
            sa.text("SELECT 1 FROM semdb.query_log WHERE id = :q"), {"q": int(query_id)}
        ).first()
        if known is None:
            return 0
        connection.execute(
            sa.text(
                "INSERT INTO semdb.query_feedback (query_id, key, relevance) "
                "VALUES (:query, CAST(:key AS jsonb), :relevance) "
                "ON CONFLICT (query_id, key) DO UPDATE SET relevance = EXCLUDED.relevance, "
                "given_at = now()"
            ),
            rows,
        )
    return len(rows)


@dataclass
class ProductionQuality:
    ndcg: float | None  # mean nDCG@k over the logged searches with feedback
    judged: int  # logged searches with feedback and recorded results
    k: int


def production_ndcg(
    connection_or_engine: Any,
    *,
    k: int = 10,
    column_id: int | None = None,
    days: float = 7.0,
) -> ProductionQuality:
    """Mean nDCG@k of the logged searches of the last ``days`` that got feedback: the
    ranking is the rows the search returned, the judgements the clicked rows (a clicked row
    the search did not return counts as missed)."""
    statement = sa.text(
        "SELECT l.id, l.results, jsonb_object_agg(f.key::text, f.relevance) "
        "FROM semdb.query_log l JOIN semdb.query_feedback f ON f.query_id = l.id "
        "WHERE l.results IS NOT NULL AND l.logged_at > now() - make_interval(secs => :secs) "
        "AND (CAST(:column AS integer) IS NULL OR l.column_id = :column) "
        "GROUP BY l.id, l.results"
    )
    parameters = {"secs": days * 86400.0, "column": column_id}
    if isinstance(connection_or_engine, sa.Connection):
        found = connection_or_engine.execute(statement, parameters).all()
    else:
        with _sync_engine(connection_or_engine).connect() as connection:
            found = connection.execute(statement, parameters).all()
    scores = []
    for _id, results, judged in found:
        ranking = [_key(key) for key in results]
        relevant = {json.dumps(json.loads(key)): int(grade) for key, grade in judged.items()}
        scores.append(ndcg_at_k(ranking, relevant, k))
    return ProductionQuality(float(np.mean(scores)) if scores else None, len(scores), k)
