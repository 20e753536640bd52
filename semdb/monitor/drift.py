"""Drift: do the rows (and queries) arriving now look like those of the reference snapshot?

The statistic (docs/operations.md): a snapshot keeps a sample of the column's vectors, the
reference set R (:data:`REFERENCE_ROWS`), and the distances from other sampled rows
(:data:`PROBE_ROWS`) to their nearest neighbour in R. Later, the rows written since the
snapshot (their ``xmin`` is newer than the snapshot's transaction horizon) are probed the
same way, and the two distributions of nearest-neighbour distances are compared by the
population stability index over the reference's deciles:

    PSI = sum over bins (a - e) * ln(a / e)

(``e``: reference share, ``a``: current share, each floored at 1e-4). Rows from the domain
the reference came from land as near R as the reference's own probes did (PSI near 0); rows
from elsewhere land farther (PSI grows). The usual reading: below 0.1 no shift, 0.1-0.25 a
moderate one, above :data:`PSI_RETRAIN` (0.25) a significant one: retrain suggested. The
centroid shift (cosine distance between the mean vectors of R and of the new rows) is
reported beside it. Queries are compared the same way, when the query log held at least
:data:`MIN_PROBES` queries at snapshot time, against those logged since.

A snapshot is taken by ``semdb monitor --snapshot`` (:func:`take_snapshot`), and should be
taken when a model is activated or evaluated; nothing takes one automatically yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import Connection

from semdb.errors import MonitorError
from semdb.monitor.figures import has_table, run
from semdb.monitor.recall import distances
from semdb.orm.distance import Distance
from semdb.orm.types import decode_vector
from semdb.sync.target import SyncTarget, ident

REFERENCE_ROWS = 2000
PROBE_ROWS = 500
MIN_PROBES = 50
PSI_RETRAIN = 0.25
BINS = 10


@dataclass
class DriftSide:
    what: str  # "rows" or "queries"
    probes: int
    psi: float | None
    centroid_shift: float | None
    note: str | None = None

    @property
    def drifted(self) -> bool:
        return self.psi is not None and self.psi > PSI_RETRAIN


@dataclass
class Drift:
    snapshot_id: int
    taken_at: str
    model: str
    reason: str
    rows: DriftSide
    queries: DriftSide | None

    @property
    def retrain_suggested(self) -> bool:
        return self.rows.drifted or (self.queries is not None and self.queries.drifted)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = BINS) -> float:
    """Population stability index of ``current`` against ``reference`` over the reference's
    quantile bins (see the module)."""
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=bins)
    actual = np.bincount(np.searchsorted(edges, current, side="right"), minlength=bins)
    e = np.maximum(expected / max(len(reference), 1), 1e-4)
    a = np.maximum(actual / max(len(current), 1), 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))


def nearest_distances(distance: Distance, probes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    found = np.empty(len(probes))
    for start in range(0, len(probes), 256):
        block = distances(distance, probes[start : start + 256], reference)
        found[start : start + 256] = block.min(axis=1)
    return found


def centroid_shift(reference: np.ndarray, current: np.ndarray) -> float:
    a, b = reference.mean(axis=0), current.mean(axis=0)
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(1.0 - float(a @ b) / denominator) if denominator else 0.0


def _vectors(connection: Connection, statement: sql.Composable) -> np.ndarray:
    rows = [decode_vector(r[0]) for r in run(connection, statement)]
    found = [r for r in rows if r is not None]
    return np.vstack(found) if found else np.zeros((0, 0), np.float32)


def sample_rows(connection: Connection, target: SyncTarget, count: int, seed: int) -> np.ndarray:
    statement = sql.SQL(
        "SELECT {vector} FROM {table} AS t WHERE {vector} IS NOT NULL "
        "ORDER BY md5(ctid::text || {seed}) LIMIT {count}"
    ).format(
        vector=ident("t", target.column_name),
        table=target.table_ref,
        seed=sql.Literal(str(seed)),
        count=sql.Literal(count),
    )
    return _vectors(connection, statement)


def recent_rows(connection: Connection, target: SyncTarget, xmax: int, count: int) -> np.ndarray:
    """Vectors of the rows written (inserted, updated, embedded) most recently since the
    transaction horizon ``xmax`` (a 64-bit transaction id): ``age(xmin)`` counts the
    transactions since a row's version was written."""
    statement = sql.SQL(
        "SELECT {vector} FROM {table} AS t WHERE {vector} IS NOT NULL "
        "AND age(t.xmin) <= pg_snapshot_xmax(pg_current_snapshot())::text::bigint - {xmax} "
        "ORDER BY age(t.xmin) LIMIT {count}"
    ).format(
        vector=ident("t", target.column_name),
        table=target.table_ref,
        xmax=sql.Literal(int(xmax)),
        count=sql.Literal(count),
    )
    return _vectors(connection, statement)


def logged_queries(
    connection: Connection, target: SyncTarget, count: int, since: Any = None
) -> np.ndarray:
    if not has_table(connection, "semdb.query_log"):
        return np.zeros((0, target.dimension), np.float32)
    rows = connection.execute(
        sa.text(
            "SELECT query FROM semdb.query_log WHERE column_id = :id AND query IS NOT NULL "
            "AND (CAST(:since AS timestamptz) IS NULL OR logged_at > :since) "
            "ORDER BY seq DESC LIMIT :n"
        ),
        {"id": target.id, "since": since, "n": count},
    ).scalars()
    vectors = [np.frombuffer(v, dtype=np.float32) for v in rows]
    vectors = [v for v in vectors if v.shape[0] == target.dimension]
    return np.vstack(vectors) if vectors else np.zeros((0, target.dimension), np.float32)


def take_snapshot(connection: Connection, target: SyncTarget, *, reason: str = "manual") -> int:
    """Store a reference snapshot of ``target`` (see the module); returns its id."""
    if not has_table(connection, "semdb.drift_snapshots"):
        raise MonitorError(
            "semdb.drift_snapshots is missing from this database", fix="run: semdb db upgrade"
        )
    distance = Distance.parse(target.distance)
    sample = sample_rows(connection, target, REFERENCE_ROWS + PROBE_ROWS, seed=1)
    if len(sample) < 2 * MIN_PROBES:
        raise MonitorError(
            f"{target.name} has {len(sample)} rows with a vector: too few for a drift "
            f"reference (at least {2 * MIN_PROBES})",
            fix="take the snapshot once the column is embedded (semdb worker / semdb backfill)",
        )
    probes_count = min(PROBE_ROWS, len(sample) // 4)
    probes, reference = sample[:probes_count], sample[probes_count:]
    row_distances = np.sort(nearest_distances(distance, probes, reference)).astype(np.float32)
    queries = logged_queries(connection, target, PROBE_ROWS)
    query_distances = None
    if len(queries) >= MIN_PROBES:
        query_distances = np.sort(nearest_distances(distance, queries, reference)).astype(
            np.float32
        )
    xmax = int(
        connection.execute(
            sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        ).scalar_one()
    )
    snapshot_id = connection.execute(
        sa.text(
            "INSERT INTO semdb.drift_snapshots (column_id, model, snapshot_xmax, reason, "
            "dimension, reference, row_distances, query_distances) "
            "VALUES (:column, :model, :xmax, :reason, :dimension, :reference, :rows, :queries) "
            "RETURNING id"
        ),
        {
            "column": target.id,
            "model": target.model_tag,
            "xmax": xmax,
            "reason": reason,
            "dimension": target.dimension,
            "reference": reference.astype(np.float32).tobytes(),
            "rows": row_distances.tobytes(),
            "queries": None if query_distances is None else query_distances.tobytes(),
        },
    ).scalar_one()
    return int(snapshot_id)


def measure(connection: Connection, target: SyncTarget) -> Drift | str:
    """Drift against the column's latest snapshot, or why it cannot be measured."""
    if not has_table(connection, "semdb.drift_snapshots"):
        return "semdb.drift_snapshots is missing: run semdb db upgrade"
    snapshot = connection.execute(
        sa.text(
            "SELECT id, taken_at, model, reason, snapshot_xmax, dimension, reference, "
            "row_distances, query_distances FROM semdb.drift_snapshots "
            "WHERE column_id = :id ORDER BY taken_at DESC, id DESC LIMIT 1"
        ),
        {"id": target.id},
    ).first()
    if snapshot is None:
        return "no reference snapshot: take one with semdb monitor --snapshot"
    if snapshot.dimension != target.dimension or snapshot.model.partition("@")[0] != target.model:
        return (
            f"the snapshot was taken for model {snapshot.model}; the column now holds "
            f"{target.model_tag}: take a new one with semdb monitor --snapshot"
        )
    distance = Distance.parse(target.distance)
    reference = np.frombuffer(snapshot.reference, dtype=np.float32).reshape(-1, target.dimension)
    rows_reference = np.frombuffer(snapshot.row_distances, dtype=np.float32)
    recent = recent_rows(connection, target, snapshot.snapshot_xmax, PROBE_ROWS)
    rows = _side("rows", distance, reference, rows_reference, recent)
    queries = None
    if snapshot.query_distances is not None:
        logged = logged_queries(connection, target, PROBE_ROWS, since=snapshot.taken_at)
        query_reference = np.frombuffer(snapshot.query_distances, dtype=np.float32)
        queries = _side("queries", distance, reference, query_reference, logged)
    return Drift(
        int(snapshot.id),
        snapshot.taken_at.isoformat(timespec="seconds"),
        str(snapshot.model),
        str(snapshot.reason),
        rows,
        queries,
    )


def _side(
    what: str,
    distance: Distance,
    reference: np.ndarray,
    reference_distances: np.ndarray,
    current: np.ndarray,
) -> DriftSide:
    if len(current) < MIN_PROBES:
        return DriftSide(
            what,
            len(current),
            None,
            None,
            f"{len(current)} {what} since the snapshot: too few to judge (< {MIN_PROBES})",
        )
    found = nearest_distances(distance, current, reference)
    return DriftSide(
        what,
        len(current),
        psi(reference_distances.astype(np.float64), found),
        centroid_shift(reference, current),
    )
