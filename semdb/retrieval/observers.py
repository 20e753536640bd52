"""Who is told about each search once it ran (the opt-in query log registers here).

``KnnSearch.run`` calls :func:`searched` when :data:`OBSERVERS` is not empty: a list check
is all a search pays when nothing observes. An observer gets the search, the connection it
ran on, the query vector, the result and the seconds it took; it must be quick (hand the
work to a thread) and must not raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SearchObserver = Callable[[Any, Any, Any, Any, float], None]
#: The observers, in registration order.
OBSERVERS: list[SearchObserver] = []


def searched(search: Any, connection: Any, vector: Any, result: Any, seconds: float) -> None:
    for observer in list(OBSERVERS):
        try:
            observer(search, connection, vector, result, seconds)
        except Exception:  # an observer never breaks a search
            log.exception("a search observer failed")
