"""``semdb monitor``'s report: every figure of every registered vector column, and findings.

The report is read in one READ ONLY transaction: the monitor never writes (taking a drift
snapshot, :func:`snapshot`, is a separate, explicit step).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from semdb.errors import MonitorError, SchemaNotReadyError
from semdb.monitor import drift as drift_module
from semdb.monitor import figures, recall
from semdb.monitor.drift import PSI_RETRAIN, Drift
from semdb.monitor.figures import Coverage, IndexInfo, Queue, has_table
from semdb.monitor.recall import TARGET_RECALL, Recall
from semdb.sync.registry import registered
from semdb.sync.target import SyncTarget

#: A queue whose oldest entry waited this long, with nothing embedded lately, is stalled.
STALLED_SECONDS = 300.0


@dataclass
class ColumnReport:
    name: str
    id: int | None
    model: str
    dimension: int
    distance: str
    sync: str
    table_exists: bool = True
    coverage: Coverage | None = None
    queue: Queue | None = None
    indexes: list[IndexInfo] = field(default_factory=list)
    recall: Recall | None = None
    drift: Drift | None = None
    drift_note: str | None = None
    production_ndcg: float | None = None
    production_judged: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def index(self) -> IndexInfo | None:
        """The index searches use: the first valid one, else the first."""
        usable = [i for i in self.indexes if i.usable]
        found = usable or self.indexes
        return found[0] if found else None


@dataclass
class MonitorReport:
    columns: list[ColumnReport]
    workers_connected: int
    query_log_entries: int | None
    seconds: float
    message: str | None = None  # when there is nothing to report on

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {p}" for c in self.columns for p in c.problems]

    @property
    def retrain_suggested(self) -> bool:
        return any(c.drift is not None and c.drift.retrain_suggested for c in self.columns)

    def as_dict(self) -> dict[str, Any]:
        columns = []
        for column in self.columns:
            data = asdict(column)
            data["index"] = None if column.index is None else asdict(column.index)
            if column.index is not None:
                data["index"]["usable"] = column.index.usable
            data.pop("indexes")
            if column.drift is not None:
                data["drift"]["retrain_suggested"] = column.drift.retrain_suggested
            columns.append(data)
        return {
            "columns": columns,
            "workers_connected": self.workers_connected,
            "query_log_entries": self.query_log_entries,
            "problems": self.problems,
            "retrain_suggested": self.retrain_suggested,
            "seconds": round(self.seconds, 3),
            "message": self.message,
            "estimates": "rows come from pg_class.reltuples; with_vector, missing, empty, "
            f"stale and other_model are scaled from a sample of about {figures.SAMPLE_ROWS} "
            f"rows when the table has more than {figures.EXACT_COUNT_ROWS} (coverage."
            "estimated says so)",
        }


NO_COLUMNS = (
    "no vector column is registered in semdb.vector_columns: declare one with "
    "semdb.embedding_column and register it in a migration (op.create_embedding_sync)"
)


def monitor(
    engine: Engine,
    *,
    columns: list[str] | None = None,
    recall_queries: int = 0,
    k: int = 10,
    ef_search: int | None = None,
    exact: bool = False,
    ndcg_days: float = 7.0,
) -> MonitorReport:
    """Collect the report (see the module). ``recall_queries``: how many queries the recall
    measurement runs (0: none, the fast report); ``ef_search``: the setting searches run
    with (default: the database's ``hnsw.ef_search``, else pgvector's 40)."""
    started = time.perf_counter()
    with engine.connect() as connection:
        connection.execute(sa.text("SET TRANSACTION READ ONLY"))
        if not has_table(connection, "semdb.vector_columns"):
            raise SchemaNotReadyError(
                "this database has no semdb schema (semdb.vector_columns is missing): "
                "nothing to monitor",
                fix="run: semdb db upgrade, then register vector columns in your migrations",
            )
        targets = registered(connection, names=columns or None, shadows=False)
        monitored = has_table(connection, "semdb.sync_activity")
        has_log = has_table(connection, "semdb.query_log")
        reports = [
            column_report(
                connection,
                target,
                recall_queries=recall_queries,
                k=k,
                ef_search=ef_search,
                exact=exact,
                activity=monitored,
                has_log=has_log,
                ndcg_days=ndcg_days,
            )
            for target in targets
        ]
        workers = figures.connected_workers(connection)
        log_entries = None
        if has_log:
            log_entries = int(
                connection.execute(sa.text("SELECT count(*) FROM semdb.query_log")).scalar() or 0
            )
        connection.rollback()
    report = MonitorReport(reports, workers, log_entries, time.perf_counter() - started)
    if not targets:
        report.message = NO_COLUMNS
    if not monitored and targets:
        report.message = (
            "semdb's monitoring tables are missing (rows/s, query log, drift): run semdb db upgrade"
        )
    return report


def column_report(
    connection: Connection,
    target: SyncTarget,
    *,
    recall_queries: int,
    k: int,
    ef_search: int | None,
    exact: bool,
    activity: bool,
    has_log: bool,
    ndcg_days: float,
) -> ColumnReport:
    started = time.perf_counter()
    report = ColumnReport(
        target.name, target.id, target.model_tag, target.dimension, target.distance, target.sync
    )
    report.queue = figures.queue(connection, target, activity=activity)
    if not has_table(connection, figures.qualified(target)):
        report.table_exists = False
        report.problems.append(
            "its table is gone but it is still registered: drop the registration in a "
            "migration (op.drop_embedding_sync) or restore the table"
        )
        report.seconds = time.perf_counter() - started
        return report
    try:
        with connection.begin_nested():
            report.coverage = figures.coverage(connection, target, exact=exact)
    except sa.exc.DBAPIError as exc:
        report.problems.append(f"cannot read its rows: {_first_line(exc)}")
        report.seconds = time.perf_counter() - started
        return report
    report.indexes = figures.vector_indexes(connection, target)
    index = report.index
    if index is not None and index.valid and index.ready and index.matches_distance:
        index.planner_uses = _planner_uses(connection, target, index)
    if recall_queries > 0 and index is not None and index.usable:
        configured = ef_search or _configured_ef(connection, index)
        report.recall = recall.measure(
            connection,
            target,
            index,
            queries=recall_queries,
            k=k,
            table_rows=report.coverage.rows,
            ef_search=configured,
        )
    measured = drift_module.measure(connection, target)
    if isinstance(measured, str):
        report.drift_note = measured
    else:
        report.drift = measured
    if has_log:
        from semdb.monitor.query_log import production_ndcg

        quality = production_ndcg(connection, k=10, column_id=target.id, days=ndcg_days)
        report.production_ndcg, report.production_judged = quality.ndcg, quality.judged
    report.problems.extend(findings(report))
    report.seconds = time.perf_counter() - started
    return report


def _first_line(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)


def _configured_ef(connection: Connection, index: IndexInfo) -> int:
    name = "hnsw.ef_search" if index.method == "hnsw" else "ivfflat.probes"
    value = connection.execute(sa.text("SELECT current_setting(:n, true)"), {"n": name}).scalar()
    try:
        return int(value) if value else (40 if index.method == "hnsw" else 1)
    except ValueError:
        return 40 if index.method == "hnsw" else 1


def _planner_uses(connection: Connection, target: SyncTarget, index: IndexInfo) -> bool:
    """Can the index path's statement (as semdb.search runs it) use the index? (EXPLAIN with
    full scans and sorts discouraged: a valid index of the right operator class is used.)"""
    from semdb.retrieval import explain_search

    column = recall.declared_column(target, index)
    keys = [column.table.c[name] for name in target.key_columns]
    probe = [1.0] * target.dimension
    nested = connection.begin_nested()
    try:
        # Can it, rather than would it: on a small table a full scan is cheaper and chosen.
        for setting in ("enable_seqscan", "enable_sort"):
            connection.execute(sa.text("SELECT set_config(:s, 'off', true)"), {"s": setting})
        _plan, root = explain_search(
            connection, column, probe, k=10, plan="index", statement=sa.select(*keys)
        )
    except sa.exc.DBAPIError:
        return False
    finally:
        nested.rollback()  # the settings go with the savepoint
    return index.name in str(root)


def findings(report: ColumnReport) -> list[str]:
    """What an operator should act on (docs/operations.md says how)."""
    found: list[str] = []
    coverage, queue, index = report.coverage, report.queue, report.index
    approx = "about " if coverage is not None and coverage.estimated else ""
    if coverage is not None:
        if coverage.other_model:
            found.append(
                f"{approx}{coverage.other_model} vectors were made by another model than "
                f"{report.model}: re-embed them (semdb backfill --column {report.name})"
            )
        if coverage.stale:
            found.append(
                f"{approx}{coverage.stale} vectors are stale (their text changed since): "
                "check that triggers are in place and a worker runs (semdb backfill)"
            )
    if queue is not None:
        lately = queue.embedded_recently
        if (
            queue.depth
            and queue.oldest_seconds is not None
            and queue.oldest_seconds > STALLED_SECONDS
            and not lately
        ):
            found.append(
                f"{queue.depth} rows queued, the oldest for {_age(queue.oldest_seconds)}, and "
                "nothing embedded in the last minutes: is a worker running? "
                f"(semdb worker --model {report.model})"
            )
        if queue.given_up:
            found.append(
                f"{queue.given_up} rows given up on in the last day; most frequent error "
                f"({queue.top_error_count}x): {queue.top_error}"
            )
    if report.sync != "inline" or index is not None or coverage is not None:
        if index is None:
            found.append(
                "no vector index: every search is exact (a full scan); create one "
                "(op.create_vector_index in a migration)"
            )
        elif not index.valid or not index.ready:
            found.append(
                f"index {index.name} is not valid (a failed CREATE INDEX CONCURRENTLY?): "
                f"the planner ignores it; REINDEX INDEX CONCURRENTLY {index.name}"
            )
        elif not index.matches_distance:
            found.append(
                f"index {index.name} ({index.operator_class}) does not serve the column's "
                f"{report.distance} distance: searches cannot use it"
            )
        elif index.planner_uses is False:
            found.append(f"the planner does not use index {index.name} for the index path")
    if report.recall is not None and report.recall.recall < TARGET_RECALL:
        r = report.recall
        needed = (
            f"{r.setting} = {r.ef_needed} reaches {r.by_ef[r.ef_needed]:.2f}"
            if r.ef_needed is not None
            else f"no {r.setting} up to {max(r.by_ef)} reaches it: rebuild the index with "
            "larger m / ef_construction (or lists)"
        )
        found.append(
            f"recall@{r.k} of the index is {r.recall:.2f} at {r.setting} = {r.ef_search} "
            f"(< {TARGET_RECALL}); {needed}"
        )
    if report.drift is not None and report.drift.retrain_suggested:
        found.append(retrain_message(report))
    return found


def retrain_message(report: ColumnReport) -> str:
    assert report.drift is not None
    sides = [
        side
        for side in (report.drift.rows, report.drift.queries)
        if side is not None and side.drifted
    ]
    numbers = "; ".join(
        f"{side.what} since the snapshot: PSI {side.psi:.2f} > {PSI_RETRAIN} "
        f"(centroid shift {side.centroid_shift:.3f}, {side.probes} sampled)"
        for side in sides
    )
    return (
        f"retrain suggested: {numbers}, against the snapshot of {report.drift.taken_at} "
        f"({report.drift.model}). Train on the new data, evaluate, then switch: "
        f"semdb train <new data> -o runs/retrained; semdb eval runs/retrained/model <beir "
        f"folder> --baseline {report.model}; semdb model import runs/retrained/model; "
        f"semdb model activate <name@version> --column {report.name}; then semdb monitor "
        "--snapshot"
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def snapshot(
    engine: Engine, *, columns: list[str] | None = None, reason: str = "manual"
) -> dict[str, int]:
    """Take a drift reference snapshot of each (named) column; returns their ids by name."""
    taken = {}
    with engine.begin() as connection:
        targets = registered(connection, names=columns or None, shadows=False)
        if not targets:
            raise MonitorError(NO_COLUMNS)
        for target in targets:
            if not has_table(connection, figures.qualified(target)):
                raise MonitorError(
                    f"{target.name} is registered but its table is gone",
                    fix="name the columns to snapshot with --column",
                )
            taken[target.name] = drift_module.take_snapshot(connection, target, reason=reason)
    return taken
