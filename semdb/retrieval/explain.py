"""``EXPLAIN`` as a SQLAlchemy construct (a compiler extension), and reading its JSON plan.

>>> connection.execute(Explain(select(Doc).where(...))).scalar()   # the plan, as JSON
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement


class Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON[, ANALYZE]) <statement>``.

    Not cached (``inherit_cache = False``): SQLAlchemy compiles it on each use, which costs
    less than the EXPLAIN's round trip, and a cache key would need SQLAlchemy's private
    traversal attributes.
    """

    inherit_cache = False

    def __init__(self, statement: Executable, *, analyze: bool = False) -> None:
        self.statement = statement
        self.analyze = analyze


@compiles(Explain, "postgresql")
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    options = "FORMAT JSON, ANALYZE, BUFFERS OFF" if element.analyze else "FORMAT JSON"
    inner = compiler.process(element.statement, **kw)  # type: ignore[arg-type]
    return f"EXPLAIN ({options}) {inner}"


def plan_root(explained: Any) -> dict[str, Any]:
    """The top plan node of what ``EXPLAIN (FORMAT JSON)`` returned."""
    document = explained
    if isinstance(document, str):
        import json

        document = json.loads(document)
    if isinstance(document, list):
        document = document[0]
    plan: dict[str, Any] = document["Plan"]
    return plan


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan, depth first."""
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)
