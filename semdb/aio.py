"""semdb for asyncio applications: the same searches on ``AsyncSession`` and ``AsyncConnection``.

>>> engine = semdb.aio.create_async_engine()
>>> async with AsyncSession(engine) as session:
...     hits = await semdb.aio.search(session, Doc.embedding, "cheap flights",
...                                   embedder=embedder, k=10, where=Doc.lang == "en")

Each twin takes the arguments of its synchronous namesake and returns what it returns; the
plan choice, the k-rows guarantee and the errors are those of the synchronous API, which does
the work: it runs through SQLAlchemy's ``run_sync`` (its database I/O awaits on the event
loop). What would block the loop is embedding the query text: that runs in a worker thread
(ONNX Runtime releases the GIL), and texts that arrive together are embedded together, in one
ONNX Runtime call (:class:`QueryBatcher`: a batch closes after ``wait_ms`` or ``max_batch``
texts). Cancelling a search (``asyncio.CancelledError``, a timeout) cancels its statement on
the server through psycopg; the connection stays usable.

Writes: :func:`copy_rows` is the awaitable twin of :func:`semdb.copy_rows` (binary COPY through
psycopg's async connection), and inline sync (``semdb.embed_on_flush``) on an ``AsyncSession``
embeds the flushed rows in a worker thread.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine
from sqlalchemy.orm import Session

from semdb.errors import BindTypeError, SearchError
from semdb.orm import bulk
from semdb.orm.columns import vector_column
from semdb.protocols import TextEmbedder
from semdb.retrieval import PreparedSearch, SearchResult
from semdb.retrieval import hybrid_search as sync_hybrid_search
from semdb.retrieval import keyword_search as sync_keyword_search
from semdb.retrieval import more_like_this as sync_more_like_this
from semdb.retrieval import search as sync_search
from semdb.retrieval.nearest import connection_of
from semdb.retrieval.vectors import check_embedder, checked_vector
from semdb.sync.registry import check_query_model

AsyncBind = AsyncSession | AsyncConnection
T = TypeVar("T")


def create_async_engine(url: str | sa.URL | None = None, **kwargs: Any) -> AsyncEngine:
    """An asyncio engine (psycopg's async driver) on semdb's database: ``url``, else
    ``SEMDB_DATABASE_URL``, else the embedded server, checked as ``semdb.create_engine``
    checks it (server reachable, pgvector installed), with the fix in the error."""
    from semdb.db.engine import create_engine

    checked = create_engine(url)  # resolves (and starts the embedded server), preflight
    checked.dispose()
    kwargs.setdefault("pool_pre_ping", True)
    return sa_create_async_engine(checked.url, **kwargs)


# -- embedding off the loop, batched ----------------------------------------------------------


class QueryBatcher:
    """Query texts embedded in worker threads; texts that wait together share one call.

    Texts wait in a pool. Whenever one of the ``max_concurrent`` embedding slots is free, the
    oldest text leaves the pool with up to ``max_batch - 1`` others of a similar length (a
    batch is padded to its longest text: at most ``max_padding`` times the tokens it holds,
    counted in characters), and is embedded in a worker thread (ONNX Runtime releases the
    GIL). A text arriving at a free slot waits ``wait_ms`` for others (0: only the texts
    arriving in the same turn of the loop), so that batches form where requests queue up, and
    a lone request is not held back.

    Defaults, from ``python -m bench.async`` on all-MiniLM-L6-v2: on CUDA batches of 32 after
    2 ms; on a CPU batches of at most 8, no wait (2 cores: 8.1 ms of CPU a short query alone,
    5.2 ms in batches of 8 texts of about the same length, 8.9 ms in batches of 8 texts of
    any length, where half the tokens are padding).
    """

    def __init__(
        self,
        embedder: TextEmbedder,
        *,
        max_batch: int | None = None,
        wait_ms: float | None = None,
        max_concurrent: int | None = None,
        max_padding: float = 1.25,
    ) -> None:
        cuda = getattr(embedder, "provider", None) == "cuda"
        self.embedder = embedder
        self.max_batch = max_batch if max_batch is not None else (32 if cuda else 8)
        self.wait = (wait_ms if wait_ms is not None else (2.0 if cuda else 0.0)) / 1000
        # One embedding at a time per CPU stream of the embedder (each runs on one core).
        self.max_concurrent = max_concurrent or max(2, getattr(embedder, "streams", 2))
        self.max_padding = max_padding
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._scheduled = False
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def embed_query(self, text: str) -> np.ndarray:
        """The query vector of ``text`` (as ``embedder.embed_query`` gives it)."""
        if not isinstance(text, str):
            raise SearchError(f"the query text must be a string, got {type(text).__name__}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self.max_batch and self._running < self.max_concurrent:
            self._dispatch()  # a full batch does not wait
        elif not self._scheduled and self._running < self.max_concurrent:
            self._scheduled = True
            if self.wait:
                loop.call_later(self.wait, self._dispatch)
            else:
                loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        """Fill the free slots with batches from the pool."""
        self._scheduled = False
        self._pending = [item for item in self._pending if not item[1].done()]  # cancelled
        loop = asyncio.get_running_loop()
        while self._pending and self._running < self.max_concurrent:
            batch = self._take()
            self._running += 1
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)  # kept until done: the loop holds tasks weakly
            task.add_done_callback(self._done)

    def _take(self) -> list[tuple[str, asyncio.Future[np.ndarray]]]:
        """The oldest text and up to ``max_batch - 1`` others nearest to it in length, as long
        as the batch padded to its longest text stays within ``max_padding``."""
        oldest = self._pending[0]
        others = sorted(
            range(1, len(self._pending)),
            key=lambda i: abs(len(self._pending[i][0]) - len(oldest[0])),
        )
        chosen = [0]
        longest = total = max(len(oldest[0]), 1)
        for i in others:
            if len(chosen) >= self.max_batch:
                break
            size = max(len(self._pending[i][0]), 1)
            if (len(chosen) + 1) * max(longest, size) > self.max_padding * (total + size):
                continue
            chosen.append(i)
            longest, total = max(longest, size), total + size
        taken = set(chosen)
        batch = [self._pending[i] for i in sorted(taken)]
        self._pending = [item for i, item in enumerate(self._pending) if i not in taken]
        return batch

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)  # texts queued meanwhile

    async def _run(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        try:
            vectors = await asyncio.to_thread(
                self.embedder.embed, [text for text, _ in batch], kind="query"
            )
        except Exception as exc:  # every waiting search gets the embedder's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)


_batchers: weakref.WeakKeyDictionary[Any, dict[asyncio.AbstractEventLoop, QueryBatcher]] = (
    weakref.WeakKeyDictionary()
)


def batcher(embedder: TextEmbedder, **options: Any) -> QueryBatcher:
    """The :class:`QueryBatcher` of ``embedder`` on the running loop (one per loop). With
    ``options`` (``max_batch``, ``wait_ms``, ``max_concurrent``, ``max_padding``), a new one
    replaces it."""
    loop = asyncio.get_running_loop()
    per_loop = _batchers.setdefault(embedder, {})
    if loop not in per_loop or options:
        for old in [known for known in per_loop if known.is_closed()]:
            del per_loop[old]
        per_loop[loop] = QueryBatcher(embedder, **options)
    return per_loop[loop]


# -- the twins --------------------------------------------------------------------------------


async def search(bind: AsyncBind, column: Any, query: Any, **options: Any) -> SearchResult:
    """``await`` twin of :func:`semdb.search` (same arguments, same result)."""
    embedder = options.pop("embedder", None)
    vector = await _query_vector(bind, "search", column, query, embedder)
    return await _run(
        bind, lambda sync: _checked(sync, column, query, embedder, sync_search, vector, **options)
    )


async def hybrid_search(bind: AsyncBind, column: Any, text: str, **options: Any) -> SearchResult:
    """``await`` twin of :func:`semdb.hybrid_search`."""
    embedder = options.pop("embedder", None)
    vector = options.pop("vector", None)
    if vector is None and embedder is not None:
        vector = await _query_vector(bind, "hybrid_search", column, text, embedder)

    def run(sync: Any) -> SearchResult:
        if embedder is not None and isinstance(text, str):
            check_query_model(connection_of(sync), vector_column(column), embedder)
        return sync_hybrid_search(sync, column, text, vector=vector, **options)

    return await _run(bind, run)


async def keyword_search(bind: AsyncBind, column: Any, text: str, **options: Any) -> SearchResult:
    """``await`` twin of :func:`semdb.keyword_search`."""
    _check_bind(bind, "keyword_search")
    return await _run(bind, lambda sync: sync_keyword_search(sync, column, text, **options))


async def more_like_this(bind: AsyncBind, column: Any, row: Any, **options: Any) -> SearchResult:
    """``await`` twin of :func:`semdb.more_like_this`."""
    _check_bind(bind, "more_like_this")
    return await _run(bind, lambda sync: sync_more_like_this(sync, column, row, **options))


async def run_prepared(
    prepared: PreparedSearch, bind: AsyncBind, query: Any, **values: Any
) -> SearchResult:
    """``await`` twin of a :class:`semdb.PreparedSearch` run: ``prepared(bind, query, ...)``."""
    embedder = values.pop("embedder", None)
    column = prepared.column
    vector = await _query_vector(bind, "run_prepared", column, query, embedder)

    def run(sync: Any) -> SearchResult:
        if isinstance(query, str) and embedder is not None:
            check_query_model(connection_of(sync), vector_column(column), embedder)
        return prepared(sync, vector, **values)

    return await _run(bind, run)


async def copy_rows(
    bind: AsyncBind | AsyncEngine,
    target: Any,
    data: Mapping[str, Any] | Iterable[Any],
    *,
    model: str | None = None,
) -> int:
    """``await`` twin of :func:`semdb.copy_rows`: binary COPY through psycopg's async
    connection, in the session's (or connection's) transaction; an AsyncEngine: its own,
    committed. The checks and the encoding are the sync API's; they run in a worker thread
    (vectors encoded, content hashes computed), and the COPY yields to the loop as it goes."""
    if not isinstance(bind, AsyncEngine):
        _check_bind(bind, "copy_rows")
    table, columns = bulk.columns_of(target, data)  # on the loop: ORM attributes may load
    count = await asyncio.to_thread(bulk.encode_columns, table, columns, model)
    if not count:
        return 0
    if isinstance(bind, AsyncEngine):
        async with bind.begin() as connection:
            return await _copy(connection, table, columns, count)
    connection = await bind.connection() if isinstance(bind, AsyncSession) else bind
    return await _copy(connection, table, columns, count)


async def _copy(
    connection: AsyncConnection, table: sa.Table, columns: dict[str, Any], count: int
) -> int:
    names = list(columns)
    oids = await connection.run_sync(lambda sync: bulk.column_oids(sync, table, names))
    driver = (await connection.get_raw_connection()).driver_connection
    if not isinstance(driver, psycopg.AsyncConnection):
        raise BindTypeError(
            f"semdb.aio.copy_rows loads through psycopg's async driver, got {type(driver)!r}",
            fix="use a postgresql+psycopg:// URL (semdb.aio.create_async_engine)",
        )
    values = [columns[name] for name in names]
    async with driver.cursor() as cursor, cursor.copy(bulk.copy_statement(table, names)) as copy:
        copy.set_types(oids)
        for number, row in enumerate(zip(*values, strict=True)):
            await copy.write_row(row)
            if number % _ROWS_PER_TURN == _ROWS_PER_TURN - 1:
                await asyncio.sleep(0)  # rows are formatted on the loop: let others run
    return count


_ROWS_PER_TURN = 512


async def _query_vector(
    bind: AsyncBind, name: str, column: Any, query: Any, embedder: TextEmbedder | None
) -> Any:
    """The query as a vector: a text embedded off the loop (batched), else as given."""
    _check_bind(bind, name)
    if not isinstance(query, str):
        return query
    target = vector_column(column)
    if embedder is None:
        raise SearchError(
            f"searching {target.name} with text needs an embedder",
            fix="pass embedder=semdb.Embedder.load(...), or a query vector",
        )
    check_embedder(target, embedder)
    vector = await batcher(embedder).embed_query(query)
    return checked_vector(target, vector, argument="the embedded query")


def _checked(
    sync: Any,
    column: Any,
    query: Any,
    embedder: TextEmbedder | None,
    function: Callable[..., SearchResult],
    vector: Any,
    **options: Any,
) -> SearchResult:
    if isinstance(query, str) and embedder is not None:
        # The model the column holds now, read in the search's transaction (see the sync API).
        check_query_model(connection_of(sync), vector_column(column), embedder)
    return function(sync, column, vector, **options)


async def _run(bind: AsyncBind, function: Callable[[Any], T]) -> T:
    return await bind.run_sync(function)


def _check_bind(bind: Any, name: str) -> None:
    if isinstance(bind, (AsyncSession, AsyncConnection)):
        return
    if isinstance(bind, (Session, sa.Connection, sa.Engine)):
        raise BindTypeError(
            f"semdb.aio.{name} takes an AsyncSession or an AsyncConnection, got a "
            f"{type(bind).__name__}",
            fix=f"call semdb.{name.replace('run_prepared', 'PreparedSearch')} without await",
        )
    raise BindTypeError(
        f"semdb.aio.{name} takes an AsyncSession or an AsyncConnection, got {type(bind).__name__}",
        fix="pass an AsyncSession(engine) or await engine.connect()",
    )
