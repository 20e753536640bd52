"""Operating semdb: coverage, queue lag, index health (recall), drift, metrics, query log.

>>> report = semdb.monitor.monitor(engine, recall_queries=100)
>>> report.problems, report.retrain_suggested
>>> semdb.monitor.snapshot(engine)                 # a drift reference, after activation
>>> semdb.query_log.enable(engine, sample=0.1)     # opt-in sampled query log

``semdb monitor`` prints the same report (``--json``, ``--prometheus``, ``--watch``).
Knows the database, the ORM declarations and the retrieval layer; never ONNX Runtime.
See docs/operations.md for what each figure means and what to do about it.
"""

from semdb.errors import MonitorError
from semdb.monitor import query_log
from semdb.monitor.report import ColumnReport, MonitorReport, monitor, snapshot

__all__ = ["ColumnReport", "MonitorError", "MonitorReport", "monitor", "query_log", "snapshot"]
