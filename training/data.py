"""Training data: queries, documents, and which documents answer which query.

Every source ends in one shape, a :class:`RetrievalSet` (the BEIR layout in memory):

- :func:`load_beir`: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``);
- :func:`load_jsonl`: one JSON object per line, ``{"query": ..., "positive": ...}`` and
  optionally ``"negative"`` (a text) or ``"negatives"`` (a list of texts);
- :func:`load_sql`: an SQL query over the user's database whose first column is the query
  and second the document (a third, optional, a known negative), for example
  ``SELECT question, answer FROM faq``; it runs in a read-only transaction.

Texts are deduplicated (:meth:`RetrievalSet.deduplicated`: the same words in the same order,
whitespace and case aside, are one text) and :meth:`RetrievalSet.split` makes a seeded
train/validation split by query, so that no query text is in both.

This module imports neither torch nor the database driver at import time.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from semdb.errors import DatasetError
from semdb.evaluation import beir
from semdb.evaluation.beir import normalise_text, read_jsonl

QUERY_KEYS = ("query", "anchor", "question")
POSITIVE_KEYS = ("positive", "document", "answer", "passage")


@dataclass(frozen=True)
class Pair:
    """One training example: a query, a document that answers it, and known negatives."""

    anchor: str
    positive: str
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class DedupeReport:
    """What :meth:`RetrievalSet.deduplicated` merged."""

    queries_merged: int
    documents_merged: int

    def __str__(self) -> str:
        return (
            f"{self.queries_merged} duplicate queries and "
            f"{self.documents_merged} duplicate documents merged"
        )


@dataclass
class RetrievalSet:
    """Queries, a corpus, relevance judgements (qrels) and known negatives, all by id.

    ``qrels[query_id][document_id]`` is a relevance grade > 0; documents a query does not
    list are not relevant to it. ``negatives[query_id]`` lists documents known (or mined)
    not to answer it, hardest first.
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    negatives: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for query_id, relevant in self.qrels.items():
            if query_id not in self.queries:
                raise DatasetError(f"the qrels name a query {query_id!r} with no text")
            for document_id in relevant:
                if document_id not in self.corpus:
                    raise DatasetError(
                        f"the qrels name a document {document_id!r} (for query {query_id!r}) "
                        "that is not in the corpus"
                    )

    @property
    def query_ids(self) -> list[str]:
        """The queries that have at least one relevant document, in a stable order."""
        return [query_id for query_id, relevant in self.qrels.items() if relevant]

    def __len__(self) -> int:
        return sum(len(relevant) for relevant in self.qrels.values())

    def pairs(self) -> list[Pair]:
        """One pair per (query, relevant document), with the query's known negatives."""
        result = []
        for query_id in self.query_ids:
            negatives = tuple(self.corpus[d] for d in self.negatives.get(query_id, ()))
            for document_id in self.qrels[query_id]:
                result.append(
                    Pair(self.queries[query_id], self.corpus[document_id], negatives=negatives)
                )
        return result

    def subset(self, query_ids: Iterable[str]) -> RetrievalSet:
        """The same corpus with only these queries (and their qrels and negatives)."""
        keep = list(query_ids)
        return RetrievalSet(
            queries={q: self.queries[q] for q in keep},
            corpus=self.corpus,
            qrels={q: dict(self.qrels[q]) for q in keep},
            negatives={q: list(self.negatives[q]) for q in keep if q in self.negatives},
        )

    def split(
        self, validation_fraction: float = 0.05, *, seed: int = 42, max_validation: int = 1000
    ) -> tuple[RetrievalSet, RetrievalSet]:
        """A seeded (train, validation) split by query; both keep the whole corpus.

        The same seed gives the same split on every machine and Python version. The
        validation part has ``validation_fraction`` of the queries, at most
        ``max_validation``, and at least one when there are two queries or more.
        """
        if not 0.0 <= validation_fraction < 1.0:
            raise DatasetError(f"validation_fraction must be in [0, 1), not {validation_fraction}")
        ids = sorted(self.query_ids)
        random.Random(seed).shuffle(ids)
        count = min(round(len(ids) * validation_fraction), max_validation)
        if validation_fraction > 0 and count == 0 and len(ids) >= 2:
            count = 1
        chosen = set(ids[:count])
        validation = [q for q in self.query_ids if q in chosen]
        train = [q for q in self.query_ids if q not in chosen]
        return self.subset(train), self.subset(validation)

    def with_negatives(self, negatives: Mapping[str, Sequence[str]]) -> RetrievalSet:
        """A copy whose known negatives are ``negatives`` (for example, mined ones)."""
        for query_id, documents in negatives.items():
            for document_id in documents:
                if document_id not in self.corpus:
                    raise DatasetError(
                        f"negative {document_id!r} (for query {query_id!r}) is not in the corpus"
                    )
        return replace(self, negatives={q: list(d) for q, d in negatives.items()})

    def deduplicated(self) -> tuple[RetrievalSet, DedupeReport]:
        """Merge queries with the same text, and documents with the same text.

        Texts are compared with whitespace collapsed and case folded. The first id seen
        stays; qrels are merged (highest grade wins) and negatives that became relevant are
        dropped.
        """
        query_alias = _aliases(self.queries)
        document_alias = _aliases(self.corpus)
        corpus = {d: t for d, t in self.corpus.items() if document_alias[d] == d}
        queries = {q: t for q, t in self.queries.items() if query_alias[q] == q}
        qrels: dict[str, dict[str, int]] = {}
        for query_id, relevant in self.qrels.items():
            merged = qrels.setdefault(query_alias[query_id], {})
            for document_id, grade in relevant.items():
                target = document_alias[document_id]
                merged[target] = max(grade, merged.get(target, 0))
        negatives: dict[str, list[str]] = {}
        for query_id, documents in self.negatives.items():
            target_query = query_alias[query_id]
            kept = negatives.setdefault(target_query, [])
            for document_id in documents:
                target = document_alias[document_id]
                if target not in qrels.get(target_query, {}) and target not in kept:
                    kept.append(target)
        report = DedupeReport(
            queries_merged=len(self.queries) - len(queries),
            documents_merged=len(self.corpus) - len(corpus),
        )
        return RetrievalSet(queries, corpus, qrels, negatives), report

    def fingerprint(self) -> str:
        """A short hash of the corpus texts (and ids), to name caches of corpus vectors."""
        digest = hashlib.sha256()
        for document_id, text in self.corpus.items():
            digest.update(document_id.encode())
            digest.update(b"\x00")
            digest.update(text.encode())
            digest.update(b"\x01")
        return digest.hexdigest()[:16]


def _aliases(texts: Mapping[str, str]) -> dict[str, str]:
    first_by_key: dict[str, str] = {}
    alias = {}
    for item_id, text in texts.items():
        key = normalise_text(text).casefold()
        alias[item_id] = first_by_key.setdefault(key, item_id)
    return alias


def text_id(text: str) -> str:
    """A stable id for a text (for sources that give texts without ids)."""
    return hashlib.sha1(normalise_text(text).casefold().encode()).hexdigest()[:16]


# --- sources ------------------------------------------------------------------------------


def load_beir(folder: str | Path, split: str = "train") -> RetrievalSet:
    """Load a BEIR-layout folder (:func:`semdb.evaluation.beir.load_beir`) as a
    :class:`RetrievalSet`: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""
    loaded = beir.load_beir(folder, split)
    return RetrievalSet(queries=loaded.queries, corpus=loaded.corpus, qrels=loaded.qrels)


def pairs_to_set(rows: Iterable[tuple[str, str, Sequence[str]]], *, source: str) -> RetrievalSet:
    """Build a :class:`RetrievalSet` from (query, positive, negatives) texts; ids from texts."""
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negatives: dict[str, list[str]] = {}
    for query, positive, negative_texts in rows:
        query_id = text_id(query)
        queries.setdefault(query_id, normalise_text(query))
        document_id = text_id(positive)
        corpus.setdefault(document_id, normalise_text(positive))
        qrels.setdefault(query_id, {})[document_id] = 1
        for negative in negative_texts:
            negative_id = text_id(negative)
            corpus.setdefault(negative_id, normalise_text(negative))
            listed = negatives.setdefault(query_id, [])
            if negative_id not in listed:
                listed.append(negative_id)
    if not qrels:
        raise DatasetError(f"{source} gave no (query, document) pair")
    # A text given as a negative for a query and as its positive elsewhere is no negative.
    for query_id, listed in negatives.items():
        listed[:] = [d for d in listed if d not in qrels[query_id]]
    return RetrievalSet(queries, corpus, qrels, negatives)


def load_jsonl(path: str | Path) -> RetrievalSet:
    """Load pairs or triplets from JSON lines.

    Each line: a query under one of ``query``/``anchor``/``question``, its document under
    ``positive``/``document``/``answer``/``passage``, and optionally ``negative`` (a text)
    or ``negatives`` (a list of texts).
    """
    path = Path(path)

    def rows() -> Iterator[tuple[str, str, Sequence[str]]]:
        for number, record in read_jsonl(path):
            query = _first_text(record, QUERY_KEYS, path, number)
            positive = _first_text(record, POSITIVE_KEYS, path, number)
            negatives: list[str] = []
            if "negative" in record and record["negative"] is not None:
                negatives.append(_as_text(record["negative"], "negative", path, number))
            listed = record.get("negatives")
            if listed is not None:
                if not isinstance(listed, list):
                    raise DatasetError(
                        f"{path}, line {number}: 'negatives' must be a list of texts"
                    )
                negatives.extend(_as_text(n, "negatives", path, number) for n in listed)
            yield query, positive, [n for n in negatives if n.strip()]

    return pairs_to_set(rows(), source=str(path))


def _first_text(record: dict[str, Any], keys: Sequence[str], path: Path, number: int) -> str:
    for key in keys:
        if key in record:
            text = _as_text(record[key], key, path, number)
            if not text.strip():
                raise DatasetError(f"{path}, line {number}: {key!r} is empty")
            return text
    raise DatasetError(
        f"{path}, line {number}, has none of the keys {', '.join(keys)} "
        f"(it has: {', '.join(record) or 'none'})",
        fix=f"name the field {keys[0]!r} (or {', '.join(keys[1:])})",
    )


def _as_text(value: Any, key: str, path: Path, number: int) -> str:
    if not isinstance(value, str):
        raise DatasetError(
            f"{path}, line {number}: {key!r} is a {type(value).__name__}, not a text"
        )
    return value


def load_sql(query: str, url: str | None = None) -> RetrievalSet:
    """Pairs (or triplets) from an SQL query over the user's database, read-only.

    The first column is the query text, the second its document, an optional third a known
    negative: ``SELECT question, answer FROM faq``. Rows with an empty or NULL query or
    document are skipped. The database is ``url``, else SEMDB_DATABASE_URL, else the
    embedded server. The statement runs in a READ ONLY transaction, so it cannot change data.
    """
    import psycopg

    from semdb.db import connect, create_engine

    engine = create_engine(url)
    try:
        with connect(engine) as connection, connection.begin():
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            # The driver's own cursor, without parameters: the user's SQL goes to the server
            # exactly as written (no placeholder parsing of '%' or ':name').
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(query)
            except psycopg.Error as exc:
                message = str(exc).strip().splitlines()[0]
                raise DatasetError(
                    f"the training query failed: {message}",
                    fix="run it in psql first (semdb db psql); it must be a SELECT",
                ) from exc
            if cursor.description is None:
                raise DatasetError(
                    "the training query returns no rows (it is not a SELECT)",
                    fix="give a SELECT whose first column is the query and second the document",
                )
            columns = [column.name for column in cursor.description]
            if not 2 <= len(columns) <= 3:
                raise DatasetError(
                    f"the training query returns {len(columns)} columns "
                    f"({', '.join(columns)}); it needs 2 (query, document) or 3 "
                    "(query, document, negative)",
                    fix="select the query text first and the document text second",
                )
            rows = [tuple(row) for row in cursor.fetchall()]
    finally:
        engine.dispose()

    def texts() -> Iterator[tuple[str, str, Sequence[str]]]:
        for row in rows:
            query_text, positive = row[0], row[1]
            if not _usable(query_text) or not _usable(positive):
                continue
            negative = row[2] if len(row) == 3 else None
            yield str(query_text), str(positive), [str(negative)] if _usable(negative) else []

    return pairs_to_set(texts(), source="the training query")


def _usable(value: object) -> bool:
    return value is not None and bool(str(value).strip())


def load_source(source: str, *, split: str = "train", url: str | None = None) -> RetrievalSet:
    """Load training data named as on the command line.

    ``source`` is a BEIR folder, a ``.jsonl`` file, or an SQL query (text starting with
    SELECT or WITH).
    """
    stripped = source.strip()
    if not stripped:
        raise DatasetError("no training data given", fix="give a folder, file or query")
    if stripped.split(None, 1)[0].upper() in {"SELECT", "WITH", "VALUES", "TABLE"}:
        return load_sql(stripped, url)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_beir(path, split)
    if path.is_file():
        return load_jsonl(path)
    raise DatasetError(
        f"{source!r} is neither a folder, a file nor an SQL query",
        fix="give a BEIR folder, a .jsonl file, or a query such as "
        "'SELECT question, answer FROM faq'",
    )
