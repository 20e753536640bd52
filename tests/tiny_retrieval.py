"""Tiny retrieval data for training tests: real sentences, queries cut from their middles.

Each document is one sentence from the standard library's docstrings (the tiny model's
vocabulary comes from the same text); its query is four words from the middle of it. Enough
for a tiny model to learn something in a few dozen steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.data import RetrievalSet, pairs_to_set

from .tiny_model import corpus_sentences


def tiny_retrieval_set(count: int = 160, offset: int = 100) -> RetrievalSet:
    rows = []
    for sentence in corpus_sentences(offset + count)[offset:]:
        words = sentence.split()
        start = len(words) // 3
        rows.append((" ".join(words[start : start + 4]), sentence, []))
    return pairs_to_set(rows, source="tiny sentences")


def write_beir_folder(data: RetrievalSet, folder: Path, split: str = "test") -> Path:
    """Write ``data`` in BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as handle:
        for document_id, text in data.corpus.items():
            handle.write(json.dumps({"_id": document_id, "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as handle:
        for query_id, text in data.queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    with (folder / "qrels" / f"{split}.tsv").open("w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for query_id, relevant in data.qrels.items():
            for document_id, grade in relevant.items():
                handle.write(f"{query_id}\t{document_id}\t{grade}\n")
    return folder
