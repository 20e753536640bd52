"""Inline sync: at flush, the changed rows' texts are embedded in one batch per model and
the vectors written in the same transaction as the rows.

>>> semdb.embed_on_flush(Session, embedder)          # every Session
>>> semdb.embed_on_flush(session_factory, embedder)  # one sessionmaker

Covers ORM flushes (``session.add``, attribute changes); bulk statements
(``session.execute(insert(Doc), rows)``) bypass flush: use queued sync for those tables.
A row is embedded when it is new or one of its source columns changed, unless its stored
content hash already matches (same text, same model). Rows whose vector the application set
itself in this flush are left as they are.

On an ``AsyncSession`` (``embed_on_flush(async_session, embedder)``, or a sessionmaker given
to ``async_sessionmaker(sync_session_class=...)``) the flush runs in SQLAlchemy's greenlet on
the event loop; the embedding is then awaited in a worker thread (SQLAlchemy's public
``AdaptedConnection.run_async``), so the loop serves other tasks while the texts are embedded.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import AdaptedConnection
from sqlalchemy.orm import Mapper, Session

from semdb.errors import DimensionMismatchError, SyncError
from semdb.orm.declaration import spec_of
from semdb.orm.document import content_hash, document_text
from semdb.orm.types import as_float32
from semdb.protocols import TextEmbedder, model_tag


@dataclass(frozen=True)
class _Declared:
    """An inline vector column of one mapper, as attribute keys."""

    vector: str
    model: str
    hash: str
    sources: tuple[str, ...]
    model_name: str
    dimension: int
    label: str
    table: sa.Table
    column_name: str
    # The SyncTarget of a chunked column (semdb.sync.chunking); not hashed (it holds a dict).
    chunked: Any = field(default=None, hash=False, compare=False)


_per_mapper: dict[Mapper[Any], tuple[_Declared, ...]] = {}


def embed_on_flush(target: Any, embedder: TextEmbedder) -> None:
    """Embed inline-synced columns of model ``embedder.model_name`` at every flush of
    ``target`` (the Session class, a sessionmaker, a scoped_session, one Session, or one
    AsyncSession: there the embedding runs in a worker thread, off the event loop).

    Call once per model; columns of other models need their own embedder.
    """
    target = _sync_target(target)
    listener = _listener_for(target)
    listener.embedders[embedder.model_name] = embedder


class _FlushListener:
    def __init__(self) -> None:
        self.embedders: dict[str, TextEmbedder] = {}

    def __call__(self, session: Session, flush_context: Any, instances: Any) -> None:
        session.info.pop(PENDING_CHUNKS, None)
        work: dict[str, list[tuple[Any, _Declared, str, bytes]]] = defaultdict(list)
        for obj in [*session.new, *session.dirty]:
            state = sa.inspect(obj)
            for declared in _declared(state.mapper):
                item = self._needs_embedding(state, obj, declared, session)
                if item is not None:
                    work[declared.model_name].append(item)
        for model_name, items in work.items():
            embedder = self.embedders.get(model_name)
            if embedder is None:
                raise SyncError(
                    f"{items[0][1].label} is synced inline with model {model_name!r}, and no "
                    "embedder for it is attached to this session",
                    fix=f"call semdb.embed_on_flush(Session, Embedder.load({model_name!r}))",
                )
            for declared in {item[1] for item in items}:
                _check_version(session, declared, embedder)
            embedder = _off_the_loop(session, embedder)
            chunked = [item for item in items if item[1].chunked is not None]
            if chunked:
                from semdb.sync.chunking import inline_embed

                inline_embed(session, embedder, chunked)
            self._embed(embedder, [item for item in items if item[1].chunked is None])

    def _needs_embedding(
        self, state: Any, obj: Any, declared: _Declared, session: Session
    ) -> tuple[Any, _Declared, str, bytes] | None:
        if state.attrs[declared.vector].history.added and getattr(obj, declared.vector) is not None:
            return None  # the application set the vector itself
        is_new = obj in session.new
        changed = is_new or any(state.attrs[s].history.has_changes() for s in declared.sources)
        if not changed:
            return None
        document = document_text([getattr(obj, source) for source in declared.sources])
        digest = content_hash(document)
        if (
            not is_new
            and bytes(getattr(obj, declared.hash) or b"") == digest
            and getattr(obj, declared.model) is not None
            and str(getattr(obj, declared.model)).split("@")[0] == declared.model_name
        ):
            return None
        return obj, declared, document, digest

    def _embed(
        self, embedder: TextEmbedder, items: list[tuple[Any, _Declared, str, bytes]]
    ) -> None:
        tag = model_tag(embedder)
        texts = [document for _, _, document, _ in items if document]
        vectors = embedder.embed(texts, kind="document") if texts else None
        if vectors is not None and vectors.shape[0] != len(texts):
            raise SyncError(
                f"the embedder returned {vectors.shape[0]} vectors for {len(texts)} texts",
                fix="check the embedder",
            )
        position = 0
        for obj, declared, document, digest in items:
            if embedder.dimension != declared.dimension:
                raise DimensionMismatchError(
                    f"{declared.label} holds {declared.dimension}-dimensional vectors; the "
                    f"embedder {tag} makes {embedder.dimension}",
                    fix="declare the column with this model's dimension, or load its model",
                )
            if document:
                assert vectors is not None
                vector = as_float32(
                    vectors[position], dimension=declared.dimension, where=declared.label
                )
                position += 1
            else:
                vector = None  # nothing to embed: no vector, but the (empty) text is recorded
            setattr(obj, declared.vector, vector)
            setattr(obj, declared.model, tag)
            setattr(obj, declared.hash, digest)


def _sync_target(target: Any) -> Any:
    """What SQLAlchemy's session events listen on: an AsyncSession's own sync Session."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    if isinstance(target, AsyncSession):
        return target.sync_session
    if isinstance(target, async_sessionmaker):
        raise SyncError(
            "embed_on_flush cannot listen on an async_sessionmaker (SQLAlchemy's session "
            "events belong to the sync Session inside each AsyncSession)",
            fix="make a sessionmaker(), call embed_on_flush(it, embedder), and pass it as "
            "async_sessionmaker(engine, sync_session_class=it); or pass one AsyncSession",
        )
    return target


def _off_the_loop(session: Session, embedder: TextEmbedder) -> TextEmbedder:
    """The embedder to call in this flush: on an AsyncSession (its connection is an asyncio
    driver's, adapted), one whose calls are awaited in a worker thread."""
    adapted = session.connection().connection.dbapi_connection
    if isinstance(adapted, AdaptedConnection):
        return _ThreadedEmbedder(embedder, adapted)
    return embedder


class _ThreadedEmbedder:
    """``embedder`` with ``embed`` run by ``asyncio.to_thread`` and awaited through the
    flush's connection (SQLAlchemy's ``AdaptedConnection.run_async``): the flush's greenlet
    waits, the event loop does not. ONNX Runtime releases the GIL while it computes."""

    def __init__(self, inner: TextEmbedder, adapted: AdaptedConnection) -> None:
        self.inner = inner
        self.adapted = adapted

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    def __getattr__(self, name: str) -> Any:  # tokenizer, max_tokens, prefixes, provider
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str], *, kind: Any = "document") -> Any:
        texts = list(texts)

        async def in_a_thread(_driver: Any) -> Any:
            return await asyncio.to_thread(self.inner.embed, texts, kind=kind)

        return self.adapted.run_async(in_a_thread)

    def embed_query(self, text: str) -> Any:
        return self.embed([text], kind="query")[0]


# The model version each registered inline column is bound to, per engine, once read
# committed ("" for a column the registry does not know: declared in Python only).
_bound: weakref.WeakKeyDictionary[sa.Engine, dict[tuple[str, str, str], str]] = (
    weakref.WeakKeyDictionary()
)


def _check_version(session: Session, declared: _Declared, embedder: TextEmbedder) -> None:
    """One column, one model version: a registered column bound to no version is bound to
    the embedder's at its first flush (in the flush's transaction); an embedder of another
    version is refused. Read once per engine and column after that."""
    from semdb.sync.registry import (
        bind_model_version,
        find,
        has_registry,
        version_refusal,
    )

    connection = session.connection()
    schema = declared.table.schema or connection.dialect.default_schema_name or "public"
    key = (schema, declared.table.name, declared.column_name)
    known = _bound.setdefault(connection.engine, {})
    version = known.get(key)
    if version is None:
        target = find(connection, *key) if has_registry(connection) else None
        if target is None or target.model != embedder.model_name:
            known[key] = ""  # the declaration's own checks apply
            return
        if target.model_version is not None:
            known[key] = target.model_version  # committed: bound for good (inline columns
            # are never switched by activations)
        else:
            target = bind_model_version(
                connection, target, embedder.model_name, embedder.model_version
            )
        if target.model_version != embedder.model_version:
            raise version_refusal(
                target, embedder.model_name, embedder.model_version, "this session's embedder"
            )
        return
    if version and version != embedder.model_version:
        target = find(connection, *key)
        if target is not None:
            raise version_refusal(
                target, embedder.model_name, embedder.model_version, "this session's embedder"
            )


def _listener_for(target: Any) -> _FlushListener:
    existing = _listeners.get(id(target))
    if existing is not None and existing[0] is target:
        return existing[1]
    listener = _FlushListener()
    event.listen(target, "before_flush", listener)
    event.listen(target, "after_flush", _write_pending_chunks)
    _listeners[id(target)] = (target, listener)
    return listener


_listeners: dict[int, tuple[Any, _FlushListener]] = {}
PENDING_CHUNKS = "semdb.pending_chunks"  # = semdb.sync.chunking.PENDING


def _write_pending_chunks(session: Session, flush_context: Any) -> None:
    """After the rows are written: the chunks of the chunked columns embedded at this flush."""
    if session.info.get(PENDING_CHUNKS):
        from semdb.sync.chunking import inline_write

        inline_write(session, session.info.pop(PENDING_CHUNKS))


def _declared(mapper: Mapper[Any]) -> tuple[_Declared, ...]:
    cached = _per_mapper.get(mapper)
    if cached is not None:
        return cached
    found = []
    key_of = {column: prop.key for prop in mapper.column_attrs for column in prop.columns}
    for column in mapper.columns:
        spec = spec_of(column)
        if spec is None or spec.sync != "inline":
            continue
        table = column.table
        try:
            sources = tuple(key_of[table.c[name]] for name in spec.sources)
            model_key = key_of[table.c[spec.model_column_name(column.name)]]
            hash_key = key_of[table.c[spec.hash_column_name(column.name)]]
        except KeyError as exc:
            raise SyncError(
                f"{table.name}.{column.name}: a source or companion column is not mapped "
                f"({exc.args[0]})",
                fix="map every source column and the companions semdb adds",
            ) from exc
        chunked = None
        if spec.chunking is not None:
            from semdb.sync.target import SyncTarget

            chunked = SyncTarget.from_column(column)
        found.append(
            _Declared(
                vector=key_of[column],
                model=model_key,
                hash=hash_key,
                sources=sources,
                model_name=spec.model,
                dimension=spec.dimension,
                label=f"{table.name}.{column.name}",
                table=table,
                column_name=column.name,
                chunked=chunked,
            )
        )
    _per_mapper[mapper] = tuple(found)
    return _per_mapper[mapper]
