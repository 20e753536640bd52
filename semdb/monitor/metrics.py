"""Prometheus metrics: the text format of a monitor report, and a worker's /metrics.

``semdb monitor --prometheus`` prints :func:`report_text` (for a node exporter's textfile
collector, or a cron job pushing to a Pushgateway). ``semdb worker --metrics-port N``
serves :class:`WorkerMetrics` with ``prometheus_client``'s own HTTP server: counters and a
batch latency histogram fed by the worker's batch observer, and the queue's depth and lag
read from the database when Prometheus scrapes. No time series are kept here: Prometheus
keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from semdb.monitor.report import MonitorReport
from semdb.sync.activity import BatchReport


class _ReportCollector(Collector):
    def __init__(self, report: MonitorReport) -> None:
        self.report = report

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}

        def gauge(name: str, help_text: str, labels: dict[str, str], value: float) -> None:
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, help_text, labels=list(labels))
            family.add_metric(list(labels.values()), float(value))

        for column in self.report.columns:
            c = {"column": column.name}
            gauge(
                "semdb_table_exists",
                "1 if the registered column's table exists",
                c,
                column.table_exists,
            )
            if column.coverage is not None:
                cov = column.coverage
                gauge(
                    "semdb_rows", "rows of the table (pg_class.reltuples when large)", c, cov.rows
                )
                gauge(
                    "semdb_rows_estimated",
                    "1 if the row figures are scaled from a sample",
                    c,
                    cov.estimated,
                )
                for name, value, text in (
                    ("with_vector", cov.with_vector, "rows with a vector"),
                    ("missing", cov.missing, "rows with text but no vector"),
                    ("stale", cov.stale, "vectors whose text changed since"),
                    ("other_model", cov.other_model, "vectors made by another model"),
                ):
                    gauge(f"semdb_rows_{name}", text, c, value)
            if column.queue is not None:
                q = column.queue
                gauge("semdb_queue_depth", "rows waiting to be embedded", c, q.depth)
                gauge("semdb_queue_retrying", "queued rows waiting for a retry", c, q.retrying)
                gauge(
                    "semdb_queue_oldest_seconds",
                    "age of the oldest queued row",
                    c,
                    q.oldest_seconds or 0.0,
                )
                gauge("semdb_errors_given_up", "rows given up on in the last day", c, q.given_up)
                if q.rate is not None:
                    gauge(
                        "semdb_embedded_rows_per_second",
                        "rows embedded per second over the last minutes",
                        c,
                        q.rate,
                    )
            index = column.index
            gauge("semdb_index_present", "1 if the column has a vector index", c, index is not None)
            if index is not None:
                i = {**c, "index": index.name, "method": index.method}
                gauge("semdb_index_usable", "1 if valid and usable by the planner", i, index.usable)
                gauge("semdb_index_size_bytes", "size of the vector index", i, index.size_bytes)
            if column.recall is not None:
                for ef, measured in sorted(column.recall.by_ef.items()):
                    gauge(
                        "semdb_index_recall_by_setting",
                        "recall@k of the index path vs exact search",
                        {**c, "setting": column.recall.setting, "value": str(ef)},
                        measured,
                    )
                gauge(
                    "semdb_index_recall_now",
                    "recall@k at the setting searches use",
                    c,
                    column.recall.recall,
                )
            if column.drift is not None:
                for side in (column.drift.rows, column.drift.queries):
                    if side is not None and side.psi is not None:
                        s = {**c, "side": side.what}
                        gauge(
                            "semdb_drift_psi",
                            "PSI of nearest-neighbour distances vs the reference snapshot",
                            s,
                            side.psi,
                        )
                        gauge(
                            "semdb_drift_centroid_shift",
                            "cosine distance of the mean vectors vs the reference snapshot",
                            s,
                            side.centroid_shift or 0.0,
                        )
                gauge(
                    "semdb_retrain_suggested",
                    "1 if drift passed the threshold",
                    c,
                    column.drift.retrain_suggested,
                )
            if column.production_ndcg is not None:
                gauge(
                    "semdb_production_ndcg",
                    "mean nDCG@10 of logged searches with feedback",
                    c,
                    column.production_ndcg,
                )
        gauge(
            "semdb_workers_connected",
            "semdb worker sessions connected",
            {},
            self.report.workers_connected,
        )
        yield from families.values()


def report_text(report: MonitorReport) -> str:
    """The report in Prometheus' text exposition format."""
    registry = CollectorRegistry()
    registry.register(_ReportCollector(report))
    return generate_latest(registry).decode()


class _QueueCollector(Collector):
    """Queue depth and lag per column, read from the database on each scrape."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "semdb_queue_depth", "rows waiting to be embedded", labels=["column"]
        )
        lag = GaugeMetricFamily(
            "semdb_queue_oldest_seconds", "age of the oldest queued row (lag)", labels=["column"]
        )
        up = GaugeMetricFamily("semdb_database_up", "1 if the last scrape read the queue")
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    sa.text(
                        "SELECT v.table_schema || '.' || v.table_name || '.' || v.column_name, "
                        "count(q.id), coalesce(extract(epoch FROM now() - min(q.enqueued_at)), 0) "
                        "FROM semdb.vector_columns v LEFT JOIN semdb.queue q "
                        "ON q.column_id = v.id GROUP BY 1 ORDER BY 1"
                    )
                ).all()
        except sa.exc.DBAPIError:
            up.add_metric([], 0.0)
            yield up
            return
        for name, count, oldest in rows:
            depth.add_metric([name], float(count))
            lag.add_metric([name], float(oldest))
        up.add_metric([], 1.0)
        yield from (depth, lag, up)


class WorkerMetrics:
    """A worker's metrics: add as an observer (``worker.observers.append(metrics)``)."""

    def __init__(self, engine: sa.Engine | None = None) -> None:
        self.registry = CollectorRegistry()
        self.embedded = Counter(
            "semdb_worker_embedded_rows", "vectors written", ["column"], registry=self.registry
        )
        self.failed = Counter(
            "semdb_worker_failed_rows",
            "failed attempts recorded",
            ["column"],
            registry=self.registry,
        )
        self.given_up = Counter(
            "semdb_worker_given_up_rows", "rows given up on", ["column"], registry=self.registry
        )
        self.batch = Histogram(
            "semdb_worker_batch_seconds",
            "seconds per batch (claim, embed, write)",
            ["column"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        if engine is not None:
            self.registry.register(_QueueCollector(engine))

    def __call__(self, report: BatchReport) -> None:
        self.embedded.labels(report.column).inc(report.embedded)
        self.failed.labels(report.column).inc(report.failed)
        self.given_up.labels(report.column).inc(report.given_up)
        self.batch.labels(report.column).observe(report.seconds)

    def serve(self, port: int, address: str = "0.0.0.0") -> Any:
        """Serve /metrics on ``port`` from a daemon thread; returns (server, thread)."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=address, registry=self.registry)

    def text(self) -> str:
        return generate_latest(self.registry).decode()
