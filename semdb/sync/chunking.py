"""Splitting long texts into chunks, and writing a chunked column's vectors.

What every writer of a chunked column does (inline at flush, ``semdb worker``,
``semdb backfill``), in the writer's transaction:

1. split the row's document into windows counted with the model's own tokenizer
   (:class:`Splitter`), cut at a paragraph or sentence boundary near the window's edge;
2. read the content hashes of the row's stored chunks, and embed only the chunks whose text
   is new (an unchanged chunk, even one that moved, keeps its vector);
3. write the parent row (its vector: the first chunk's; hash-checked like every write) and,
   when it was written, its chunks in one statement: chunks past the new end are deleted,
   changed ones replaced, unchanged ones untouched.

A document that is empty or only whitespace has no chunk: the row is not found by a
chunked search (its parent vector is what an unchunked column would hold).
"""

from __future__ import annotations

import bisect
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from semdb.errors import ChunkLimitError, SyncError
from semdb.orm.chunks import VECTOR, Chunks, chunk_table_name, parent_key_name
from semdb.orm.document import content_hash
from semdb.orm.types import WireVector, encode_matrix
from semdb.protocols import TextEmbedder
from semdb.sync.target import SyncTarget, ident

#: A token is at most this many characters (WordPiece turns longer words into [UNK]): a text
#: longer than max_chunks x window x this is refused before it is tokenised.
MAX_CHARS_PER_TOKEN = 100


@dataclass(frozen=True)
class Chunk:
    """One window of a document: ``document[start:end]``."""

    number: int
    start: int
    end: int
    text: str
    content_hash: bytes


_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"[.!?;:][\"')\]]*\s+|\n\s*")
_SPACE = re.compile(r"\s+")


#: Where a window is cut, in order of preference: (boundary, share of the window's end
#: searched). A paragraph break in the last third, else a sentence end in the last half,
#: then the last three quarters, else a space in the last quarter, else the window's edge.
_CUTS = ((_PARAGRAPH, 1 / 3), (_SENTENCE, 1 / 2), (_SENTENCE, 3 / 4), (_SPACE, 1 / 4))


def _last_boundary(text: str, starts: list[int], fresh: int, edge: int) -> int | None:
    """The position right after the preferred boundary before token ``edge`` (the first
    token that does not fit), searched back from it (see :data:`_CUTS`), never inside the
    overlap (before token ``fresh``): a chunk always brings new text."""
    hi = starts[edge]
    for pattern, share in _CUTS:
        lo = starts[max(fresh + 1, edge - max(1, int((edge - fresh) * share)))]
        found = None
        for match in pattern.finditer(text, lo, hi):
            if lo < match.end() <= hi:
                found = match.end()
        if found is not None:
            return found
    return None


def _first_boundary(text: str, lo: int, hi: int) -> int | None:
    """The first position in [lo, hi) right after a sentence end or paragraph break."""
    for pattern in (_PARAGRAPH, _SENTENCE):
        match = pattern.search(text, lo, hi)
        if match is not None and match.end() < hi:
            return match.end()
    return None


class Splitter:
    """Splits documents for one model: windows of its tokenizer's tokens."""

    def __init__(
        self, tokenizer: Any, *, window: int, overlap: int, max_chunks: int, label: str = ""
    ) -> None:
        self.tokenizer = tokenizer
        self.window = window
        self.overlap = min(overlap, window - 1)
        self.max_chunks = max_chunks
        self.label = label

    @classmethod
    def for_embedder(
        cls, embedder: TextEmbedder, chunking: Chunks, *, label: str = "the column"
    ) -> Splitter:
        tokenizer, model_max, reserved = _tokenizer_of(embedder, label)
        chunking.check_model(embedder.model_name, model_max)
        window = min(chunking.max_tokens or model_max, model_max - reserved)
        if window < 8:
            raise SyncError(
                f"{label}: model {embedder.model_name!r} leaves {window} tokens for text",
                fix="use a model with a longer window",
            )
        return cls(
            tokenizer,
            window=window,
            overlap=chunking.overlap,
            max_chunks=chunking.max_chunks,
            label=label,
        )

    def split(self, text: str) -> list[Chunk]:
        """The chunks of ``text`` (none for an empty or whitespace-only text)."""
        if not text.strip():
            return []
        if len(text) > self.max_chunks * self.window * MAX_CHARS_PER_TOKEN:
            raise self._too_long(f"{len(text)} characters")
        offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
        starts = [start for start, _ in offsets]
        count = len(starts)
        if count <= self.window:
            return [self._chunk(0, 0, len(text), text)]
        spans: list[tuple[int, int]] = []
        first, fresh, char_start = 0, 0, 0
        while True:
            if count - first <= self.window:
                spans.append((char_start, len(text)))
                break
            if len(spans) + 1 >= self.max_chunks:
                raise self._too_long(f"{count} tokens")
            edge = first + self.window  # the first token that does not fit
            cut = _last_boundary(text, starts, fresh, edge) or starts[edge]
            spans.append((char_start, cut))
            after = fresh = bisect.bisect_left(starts, cut)  # first token of the next text
            following = max(after - self.overlap, first + 1)
            char_start = min(starts[following], cut)
            if self.overlap:  # start the overlap at a sentence when one begins inside it
                boundary = _first_boundary(text, char_start, cut)
                if boundary is not None:
                    char_start = boundary
                    following = bisect.bisect_left(starts, char_start)
            first = following
        return [self._chunk(n, start, end, text) for n, (start, end) in enumerate(spans)]

    def _chunk(self, number: int, start: int, end: int, text: str) -> Chunk:
        piece = text[start:end]
        return Chunk(number, start, end, piece, content_hash(piece))

    def _too_long(self, size: str) -> ChunkLimitError:
        return ChunkLimitError(
            f"{self.label}: a text of {size} needs more than max_chunks={self.max_chunks} "
            f"chunks of {self.window} tokens",
            fix=f"declare {self.label} with Chunks(max_chunks=...) above {self.max_chunks}, "
            "or shorten the text",
        )


_TOKENIZERS: weakref.WeakKeyDictionary[Any, tuple[Any, int, int]] = weakref.WeakKeyDictionary()


def _tokenizer_of(embedder: TextEmbedder, label: str) -> tuple[Any, int, int]:
    """The model's tokenizer without truncation, its max tokens, and the tokens a text
    cannot use (special tokens and the document prefix)."""
    try:
        known = _TOKENIZERS.get(embedder)
    except TypeError:
        known = None
    if known is not None:
        return known
    wrapped = getattr(embedder, "tokenizer", None)
    inner = getattr(wrapped, "tokenizer", wrapped)  # semdb's TextTokenizer, or the tokenizer
    model_max = getattr(embedder, "max_tokens", None) or getattr(wrapped, "max_tokens", None)
    if inner is None or not hasattr(inner, "to_str") or not model_max:
        raise SyncError(
            f"{label} is chunked, and the embedder {embedder!r} does not expose its model's "
            "tokenizer (chunks are counted in the model's own tokens)",
            fix="use semdb.Embedder, or give the embedder .tokenizer (a tokenizers.Tokenizer) "
            "and .max_tokens",
        )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(inner.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    prefix = str(getattr(embedder, "document_prefix", "") or "")
    reserved = len(tokenizer.encode("").ids)
    if prefix:
        reserved += len(tokenizer.encode(prefix, add_special_tokens=False).ids)
    found = (tokenizer, int(model_max), reserved)
    try:
        _TOKENIZERS[embedder] = found
    except TypeError:
        pass
    return found


# -- the work of one batch ---------------------------------------------------------------------


KEEP = object()  # the parent's stored vector stays (its first chunk did not change)


@dataclass
class ChunkedRow:
    """One parent row's new chunks and vectors."""

    key_values: tuple[Any, ...]
    document: str
    content_hash: bytes
    chunks: list[Chunk] = field(default_factory=list)
    vectors: dict[int, np.ndarray[Any, Any]] = field(default_factory=dict)  # new, by number
    parent_vector: Any = None  # np.ndarray, None (no text) or KEEP
    error: BaseException | None = None


def stored_hashes(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    keys: Sequence[tuple[Any, ...]],
    model: str,
) -> dict[tuple[Any, ...], dict[int, bytes]]:
    """The content hash of each stored chunk of these parents made by ``model``."""
    if not keys:
        return {}
    names = [ident(parent_key_name(k)) for k in target.key_columns]
    key_list = sql.SQL(", ").join(names)
    wanted = sql.SQL(", ").join(
        sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in target.key_columns))
        for _ in keys
    )
    statement = sql.SQL(
        "SELECT {keys}, chunk, content_hash FROM {table} "
        "WHERE model = %s AND ({keys}) IN ({wanted})"
    ).format(keys=key_list, table=chunk_table_ref(target), wanted=wanted)
    parameters: list[Any] = [model]
    for key in keys:
        parameters.extend(key)
    found: dict[tuple[Any, ...], dict[int, bytes]] = {}
    width = len(target.key_columns)
    for row in connection.execute(statement, parameters):
        found.setdefault(tuple(row[:width]), {})[int(row[width])] = bytes(row[width + 1])
    return found


def prepare(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    rows: Sequence[tuple[tuple[Any, ...], str, bytes]],
    embedder: TextEmbedder,
    model: str,
    splitter: Splitter,
) -> list[ChunkedRow]:
    """Split the rows ``(key, document, content hash)`` and embed their new chunks. A row
    that cannot be split or embedded carries its ``error``; the others go on."""
    work = [ChunkedRow(tuple(key), document, digest) for key, document, digest in rows]
    for row in work:
        try:
            row.chunks = splitter.split(row.document)
        except SyncError as exc:
            row.error = exc
    live = [row for row in work if row.error is None]
    stored = stored_hashes(connection, target, [r.key_values for r in live], model)
    embed_rows(live, stored, embedder)
    return work


def embed_rows(
    rows: Sequence[ChunkedRow],
    stored: dict[tuple[Any, ...], dict[int, bytes]],
    embedder: TextEmbedder,
) -> None:
    """Embed the chunks whose text no stored chunk of their row has (one batch; a failing
    batch is retried row by row, so one bad row fails alone)."""
    needed: list[tuple[ChunkedRow, int, str]] = []
    for row in rows:
        old = stored.get(row.key_values, {})
        old_hashes = set(old.values())
        for chunk in row.chunks:
            reusable = (
                old.get(0) == chunk.content_hash
                if chunk.number == 0
                else chunk.content_hash in old_hashes
            )
            if not reusable:
                needed.append((row, chunk.number, chunk.text))
        if not row.chunks:  # whitespace: the parent vector an unchunked column would hold
            if row.document:
                needed.append((row, -1, row.document))
    try:
        _embed(needed, embedder)
    except Exception as exc:
        if len({id(row) for row, _, _ in needed}) <= 1:
            for row, _, _ in needed:
                row.error = exc
        else:
            for row in rows:
                mine = [item for item in needed if item[0] is row]
                try:
                    _embed(mine, embedder)
                except Exception as exc:
                    row.error = exc
    for row in rows:
        if row.error is not None:
            continue
        if not row.chunks:
            row.parent_vector = row.vectors.pop(-1, None)
        else:
            row.parent_vector = row.vectors.get(0, KEEP)


def _embed(needed: Sequence[tuple[ChunkedRow, int, str]], embedder: TextEmbedder) -> None:
    if not needed:
        return
    matrix = embedder.embed([text for _, _, text in needed], kind="document")
    if matrix.shape[0] != len(needed):
        raise SyncError(
            f"the embedder returned {matrix.shape[0]} vectors for {len(needed)} texts",
            fix="check the embedder",
        )
    for (row, number, _), vector in zip(needed, matrix, strict=True):
        row.vectors[number] = np.asarray(vector, dtype=np.float32)


# -- SQL -----------------------------------------------------------------------------------------


def chunk_table_ref(target: SyncTarget) -> sql.Identifier:
    return ident(target.table_schema, chunk_table_name(target.table_name, target.column_name))


def parent_write_statement(target: SyncTarget) -> sql.Composed:
    """The hash-checked UPDATE of the parent (its vector kept when its first chunk is)."""
    keys = sql.SQL(" AND ").join(
        sql.SQL("t.{} = {}").format(ident(name), sql.Placeholder()) for name in target.key_columns
    )
    return sql.SQL(
        "UPDATE {table} AS t SET {vector} = CASE WHEN {keep} THEN t.{vector} ELSE {cast} END, "
        "{model} = {value}, {hash} = {value} WHERE {keys} AND {current} = {value} RETURNING true"
    ).format(
        table=target.table_ref,
        vector=ident(target.column_name),
        keep=sql.Placeholder(),
        cast=target.vector_cast_sql(),
        model=ident(target.model_column),
        hash=ident(target.hash_column),
        value=sql.Placeholder(),
        keys=keys,
        current=target.hash_sql("t"),
    )


def chunks_write_statement(target: SyncTarget) -> sql.Composed:
    """One parent's chunks: past the end deleted, changed ones replaced, the rest untouched;
    a chunk given no new vector takes the stored vector of the chunk with its text."""
    names = [ident(parent_key_name(k)) for k in target.key_columns]
    match = sql.SQL(" AND ").join(
        sql.SQL("c.{} = {}").format(name, sql.Placeholder(f"k{i}")) for i, name in enumerate(names)
    )
    values = sql.SQL(", ").join(sql.Placeholder(f"k{i}") for i in range(len(names)))
    key_list = sql.SQL(", ").join(names)
    vector_type = sql.SQL("{}({})").format(sql.SQL(target.storage), sql.Literal(target.dimension))
    return sql.SQL(
        """
        WITH old AS (
            SELECT DISTINCT ON (c.content_hash) c.content_hash, c.{vector}
            FROM {table} AS c WHERE {match} AND c.model = %(model)s
            ORDER BY c.content_hash, c.chunk
        ), gone AS (
            DELETE FROM {table} AS c WHERE {match} AND c.chunk >= %(count)s
        )
        INSERT INTO {table} AS c ({keys}, chunk, char_start, char_end, {vector}, model,
                                  content_hash)
        SELECT {values}, x.chunk, x.char_start, x.char_end,
               coalesce(CAST(x.vector AS {vector_type}), old.{vector}), %(model)s, x.content_hash
        FROM unnest(%(numbers)s::integer[], %(starts)s::integer[], %(ends)s::integer[],
                    %(hashes)s::bytea[], %(vectors)s::text[])
             AS x(chunk, char_start, char_end, content_hash, vector)
        LEFT JOIN old ON old.content_hash = x.content_hash
        ON CONFLICT ({keys}, chunk) DO UPDATE SET
            char_start = excluded.char_start, char_end = excluded.char_end,
            {vector} = excluded.{vector}, model = excluded.model,
            content_hash = excluded.content_hash
        WHERE (c.char_start, c.char_end, c.model, c.content_hash)
              IS DISTINCT FROM (excluded.char_start, excluded.char_end, excluded.model,
                                excluded.content_hash)
        """
    ).format(
        vector=ident(VECTOR),
        table=chunk_table_ref(target),
        match=match,
        keys=key_list,
        values=values,
        vector_type=vector_type,
    )


def _vector_text(vector: np.ndarray[Any, Any]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector.tolist()) + "]"


def chunk_parameters(row: ChunkedRow, model: str) -> dict[str, Any]:
    parameters: dict[str, Any] = {f"k{i}": value for i, value in enumerate(row.key_values)}
    parameters.update(
        model=model,
        count=len(row.chunks),
        numbers=[c.number for c in row.chunks],
        starts=[c.start for c in row.chunks],
        ends=[c.end for c in row.chunks],
        hashes=[c.content_hash for c in row.chunks],
        vectors=[
            _vector_text(row.vectors[c.number]) if c.number in row.vectors else None
            for c in row.chunks
        ],
    )
    return parameters


def write_chunks(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    rows: Sequence[ChunkedRow],
    model: str,
) -> None:
    """Write the chunks of parents already written (in the caller's transaction)."""
    if not rows:
        return
    with connection.cursor() as cursor:
        cursor.executemany(
            chunks_write_statement(target), [chunk_parameters(row, model) for row in rows]
        )


def write_rows(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    rows: Sequence[ChunkedRow],
    model: str,
) -> list[bool]:
    """Write the parents (hash-checked) and, for those written, their chunks; True where
    the row was written (False: its text changed meanwhile)."""
    if not rows:
        return []
    parameters = []
    for row in rows:
        keep = row.parent_vector is KEEP
        vector = None
        if not keep and row.parent_vector is not None:
            (data,) = encode_matrix(
                row.parent_vector[None, :],
                dimension=target.dimension,
                storage=target.storage,
                where=target.name,
            )
            vector = WireVector(data)
        parameters.append(
            (keep, vector, model, row.content_hash, *row.key_values, row.content_hash)
        )
    written: list[bool] = []
    with connection.cursor() as cursor:
        cursor.executemany(parent_write_statement(target), parameters, returning=True)
        while True:
            written.append(cursor.fetchone() is not None)
            if not cursor.nextset():
                break
    write_chunks(connection, target, [r for r, ok in zip(rows, written, strict=True) if ok], model)
    return written


def splitter_for(target: SyncTarget, embedder: TextEmbedder) -> Splitter:
    assert target.chunking is not None
    return Splitter.for_embedder(embedder, Chunks.from_dict(target.chunking), label=target.name)


# -- the worker's batch and backfill's page ------------------------------------------------


Failure = tuple[int, int, dict[str, Any], str]  # queue id, attempts before, key, error


def prepare_claimed(
    worker: Any,
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    pending: Sequence[Any],
) -> tuple[list[tuple[Any, ChunkedRow]], list[Failure], list[Failure]]:
    """Split and embed the claimed entries (:class:`semdb.sync.claim.Claimed`) of a chunked
    column for ``semdb worker``; the worker writes them as it writes any column
    (:func:`semdb.sync.write.write_isolated` with :func:`write_rows`).

    Returns ``(ready, failures, final)``: the entries with their rows to write, the entries
    whose embedding failed (retried with backoff), and those over ``max_chunks`` (given up
    at once: the same text fails the same way)."""
    import time

    started = time.perf_counter()
    rows = prepare(
        connection,
        target,
        [(c.key_values or (), c.document or "", c.content_hash or b"") for c in pending],
        worker.embedder,
        worker.model,
        splitter_for(target, worker.embedder),
    )
    worker.stats.embed_seconds += time.perf_counter() - started
    ready = [(c, r) for c, r in zip(pending, rows, strict=True) if r.error is None]
    failures: list[Failure] = []
    final: list[Failure] = []
    for entry, row in zip(pending, rows, strict=True):
        if row.error is not None:
            failed = final if isinstance(row.error, ChunkLimitError) else failures
            failed.append(
                (
                    entry.queue_id,
                    entry.attempts,
                    entry.key,
                    f"{type(row.error).__name__}: {row.error}",
                )
            )
    return ready, failures, final


def prepare_page(
    connection: psycopg.Connection[Any],
    target: SyncTarget,
    texts: Sequence[tuple[tuple[Any, ...], str, bytes]],
    embedder: TextEmbedder,
    model: str,
) -> tuple[list[ChunkedRow], list[tuple[tuple[Any, ...], str]]]:
    """Split and embed one backfill page: the rows to write (with :func:`write_rows`), and
    ``(key, error)`` for each row over ``max_chunks`` (recorded, skipped). Any other error
    (the embedder's) is raised, as an unchunked page's is."""
    rows = prepare(connection, target, texts, embedder, model, splitter_for(target, embedder))
    refused: list[tuple[tuple[Any, ...], str]] = []
    for row in rows:
        if row.error is None:
            continue
        if not isinstance(row.error, ChunkLimitError):
            raise row.error
        refused.append((row.key_values, f"{type(row.error).__name__}: {row.error}"))
    return [row for row in rows if row.error is None], refused


def missing_chunks_sql(target: SyncTarget) -> sql.Composed:
    """A row with text but no chunk (a column chunked after its vectors were made)."""
    match = sql.SQL(" AND ").join(
        sql.SQL("c.{} = t.{}").format(ident(parent_key_name(k)), ident(k))
        for k in target.key_columns
    )
    return sql.SQL(
        "(NOT EXISTS (SELECT 1 FROM {table} AS c WHERE {match}) AND {document} ~ '[^[:space:]]')"
    ).format(table=chunk_table_ref(target), match=match, document=target.document_sql("t"))


# -- inline sync (semdb.embed_on_flush) -----------------------------------------------------------


def _driver(session: Any) -> psycopg.Connection[Any]:
    """The session's psycopg connection (its transaction), through SQLAlchemy's public API."""
    driver = session.connection().connection.driver_connection
    if isinstance(driver, psycopg.AsyncConnection):
        raise SyncError(
            "chunked columns are not synced inline on an AsyncSession (their chunks are "
            "written through psycopg's sync connection)",
            fix='declare the column with sync="queued" and run semdb worker, or write these '
            "rows through a sync Session",
        )
    if not isinstance(driver, psycopg.Connection):
        raise SyncError(
            "chunked columns are synced inline through psycopg 3",
            fix="use a postgresql+psycopg:// URL",
        )
    return driver


def inline_embed(session: Any, embedder: TextEmbedder, items: Sequence[Any]) -> None:
    """Before a flush: split and embed the chunked columns' changed rows (``items``: the
    inline listener's ``(obj, declared, document, digest)``); their chunks are written after
    the flush (:func:`inline_write`), when the rows exist."""
    from sqlalchemy import inspect

    from semdb.errors import DimensionMismatchError
    from semdb.protocols import model_tag

    _driver(session)  # refused before anything is embedded where chunks cannot be written
    tag = model_tag(embedder)
    by_target: dict[int, list[tuple[Any, Any, ChunkedRow]]] = {}
    for obj, declared, document, digest in items:
        if embedder.dimension != declared.dimension:
            raise DimensionMismatchError(
                f"{declared.label} holds {declared.dimension}-dimensional vectors; the "
                f"embedder {tag} makes {embedder.dimension}",
                fix="declare the column with this model's dimension, or load its model",
            )
        state = inspect(obj)
        key = tuple(state.mapper.primary_key_from_instance(obj)) if state.persistent else ()
        by_target.setdefault(id(declared), []).append(
            (obj, declared, ChunkedRow(key, document, digest))
        )
    pending = session.info.setdefault(PENDING, [])
    for entries in by_target.values():
        declared = entries[0][1]
        target: SyncTarget = declared.chunked
        splitter = splitter_for(target, embedder)
        rows = [row for _, _, row in entries]
        for row in rows:
            row.chunks = splitter.split(row.document)  # an error fails the flush
        persistent = [row.key_values for row in rows if row.key_values]
        stored = stored_hashes(_driver(session), target, persistent, tag) if persistent else {}
        embed_rows(rows, stored, embedder)
        for obj, _, row in entries:
            if row.error is not None:
                raise row.error
            if row.parent_vector is not KEEP:
                setattr(obj, declared.vector, row.parent_vector)
            setattr(obj, declared.model, tag)
            setattr(obj, declared.hash, row.content_hash)
            pending.append((obj, target, row, tag))


PENDING = "semdb.pending_chunks"


def inline_write(session: Any, pending: Sequence[tuple[Any, SyncTarget, ChunkedRow, str]]) -> None:
    """After a flush: write the chunks prepared by :func:`inline_embed`."""
    from sqlalchemy import inspect

    connection = _driver(session)
    for obj, target, row, tag in pending:
        row.key_values = tuple(inspect(obj).mapper.primary_key_from_instance(obj))
        write_chunks(connection, target, [row], tag)
