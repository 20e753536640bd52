"""Reading a BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

A document's text is its title and text joined by a space (the title may be empty); texts
are stored with whitespace collapsed (:func:`normalise_text`). Relevance judgements keep
only grades above 0. Every problem is a :class:`~semdb.errors.DatasetError` naming the file
and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semdb.errors import DatasetError


@dataclass(frozen=True)
class BeirSplit:
    """One split of a BEIR folder: the judged queries, the whole corpus and the qrels.

    ``qrels[query_id][document_id]`` is a relevance grade > 0.
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def query_ids(self) -> list[str]:
        """The queries that have at least one relevant document, in the qrels' order."""
        return [query_id for query_id, relevant in self.qrels.items() if relevant]


def normalise_text(text: str) -> str:
    """Whitespace collapsed; the form texts are stored and compared in."""
    return " ".join(text.split())


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON lines file."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}", fix="check the path") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}, line {number}, is not valid JSON ({exc.msg})",
                    fix="write one JSON object per line",
                ) from exc
            if not isinstance(record, dict):
                raise DatasetError(
                    f"{path}, line {number}, is a JSON {type(record).__name__}, not an object",
                    fix="write one JSON object per line",
                )
            yield number, record


def load_beir_corpus(folder: str | Path) -> dict[str, str]:
    """The documents of a BEIR-layout folder (``corpus.jsonl``): id -> title and text joined
    by a space (the title may be empty), whitespace normalised."""
    path = Path(folder) / "corpus.jsonl"
    if not path.is_file():
        raise DatasetError(
            f"{folder} is not a BEIR folder: corpus.jsonl is missing",
            fix="give a folder with corpus.jsonl (and queries.jsonl, qrels/<split>.tsv)",
        )
    corpus: dict[str, str] = {}
    for number, record in read_jsonl(path):
        document_id = _field(record, "_id", path, number)
        title = str(record.get("title") or "")
        text = str(record.get("text") or "")
        corpus[document_id] = normalise_text(f"{title} {text}")
    return corpus


def qrels_splits(folder: str | Path) -> list[str]:
    """The qrels splits a BEIR folder has (``["test", "train"]``), sorted."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def load_beir(folder: str | Path, split: str = "train") -> BeirSplit:
    """Load a BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    Only the queries named in the split's qrels with a grade above 0 are kept.
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for required in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not required.is_file():
            available = qrels_splits(folder)
            hint = f" (qrels splits here: {', '.join(available)})" if available else ""
            raise DatasetError(
                f"{folder} is not a BEIR folder: {required.name} is missing{hint}",
                fix="give a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv",
            )
    qrels = _read_qrels(qrels_path)
    corpus = load_beir_corpus(folder)
    queries: dict[str, str] = {}
    wanted = set(qrels)
    for number, record in read_jsonl(folder / "queries.jsonl"):
        query_id = _field(record, "_id", folder / "queries.jsonl", number)
        if query_id in wanted:
            queries[query_id] = normalise_text(str(record.get("text") or ""))
    missing_queries = [q for q in qrels if q not in queries]
    if missing_queries:
        raise DatasetError(
            f"{qrels_path} names {len(missing_queries)} queries missing from queries.jsonl "
            f"(first: {missing_queries[0]!r})"
        )
    missing_documents = sorted({d for r in qrels.values() for d in r if d not in corpus})
    if missing_documents:
        raise DatasetError(
            f"{qrels_path} names {len(missing_documents)} documents missing from corpus.jsonl "
            f"(first: {missing_documents[0]!r})"
        )
    return BeirSplit(queries=queries, corpus=corpus, qrels=qrels)


def _field(record: dict[str, Any], key: str, path: Path, number: int) -> str:
    value = record.get(key)
    if value is None or str(value) == "":
        raise DatasetError(
            f"{path}, line {number}, has no {key!r} (keys: {', '.join(record) or 'none'})"
        )
    return str(value)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            if len(row) != 3:
                raise DatasetError(
                    f"{path}, line {number}, has {len(row)} columns; qrels have 3 "
                    "(query-id, corpus-id, score), separated by tabs"
                )
            query_id, document_id, score = row
            try:
                grade = int(float(score))
            except ValueError as exc:
                raise DatasetError(
                    f"{path}, line {number}: the score {score!r} is not a number"
                ) from exc
            if grade > 0:
                qrels.setdefault(query_id, {})[document_id] = grade
    if not qrels:
        raise DatasetError(f"{path} has no relevant (score > 0) query-document pair")
    return qrels
