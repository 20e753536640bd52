"""What the benchmarks share: the database, timing, and a table printer."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: SEMDB_BENCH_CACHE: another folder (a private copy while the shared one is rebuilt).
CACHE = Path(os.environ.get("SEMDB_BENCH_CACHE") or Path(__file__).resolve().parent / ".cache")


def engine() -> Any:
    """semdb's engine: SEMDB_DATABASE_URL, else an embedded server kept under bench/.cache."""
    os.environ.setdefault("SEMDB_HOME", str(CACHE / "semdb-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import semdb
    from semdb.db.migrate import upgrade

    made = semdb.create_engine()
    upgrade(made)
    return made


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    # A log or a pipe is not an 80-column terminal: wide tables keep their headers there.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
