"""Where each query goes: the test hold-out, and K folds for cross-validation, by query.

A query and its relevant documents are never on both sides of a split: queries that share a
relevant document are one group, and groups, not queries, are dealt out (seeded) to folds.
Every part keeps the whole corpus (documents of other folds stay possible negatives, as in
any retrieval split); what a fold never sees in training is its validation queries and, as
positives, their documents.
"""

from __future__ import annotations

import random
from pathlib import Path

from semdb.errors import SelectionError
from training.data import RetrievalSet, load_beir, load_source


def query_groups(data: RetrievalSet) -> list[list[str]]:
    """The queries in groups that share no relevant document with another group."""
    parent = {q: q for q in data.query_ids}

    def root(query: str) -> str:
        while parent[query] != query:
            parent[query] = parent[parent[query]]
            query = parent[query]
        return query

    owner: dict[str, str] = {}
    for query_id in data.query_ids:
        for document_id in data.qrels[query_id]:
            if document_id in owner:
                parent[root(query_id)] = root(owner[document_id])
            else:
                owner[document_id] = query_id
    groups: dict[str, list[str]] = {}
    for query_id in data.query_ids:
        groups.setdefault(root(query_id), []).append(query_id)
    return sorted(groups.values(), key=lambda g: g[0])


def check_folds(data: RetrievalSet, folds: int) -> None:
    """Refuse a number of folds the data cannot fill, before anything trains."""
    if folds < 2:
        raise SelectionError(
            f"--folds {folds}: cross-validation needs at least 2 folds",
            fix="give --folds 2 or more, or leave it out to validate on one held-out split",
        )
    queries, groups = len(data.query_ids), len(query_groups(data))
    if folds > queries:
        raise SelectionError(
            f"--folds {folds} is more than the {queries} training queries",
            fix=f"give --folds {min(5, queries)} or fewer",
        )
    if folds > groups:
        raise SelectionError(
            f"--folds {folds}: the {queries} training queries share documents, and form only "
            f"{groups} groups that can be kept apart",
            fix=f"give --folds {groups} or fewer",
        )


def query_folds(
    data: RetrievalSet, folds: int, *, seed: int = 42
) -> list[tuple[RetrievalSet, RetrievalSet]]:
    """K (train, validation) pairs: each query is in exactly one validation part."""
    check_folds(data, folds)
    groups = query_groups(data)
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    parts: list[list[str]] = [[] for _ in range(folds)]
    for group in groups:
        min(parts, key=len).extend(group)
    result = []
    for index in range(folds):
        held_out = set(parts[index])
        train = [q for q in data.query_ids if q not in held_out]
        validation = [q for q in data.query_ids if q in held_out]
        result.append((data.subset(train), data.subset(validation)))
    return result


def sample_queries(data: RetrievalSet, count: int, *, seed: int) -> RetrievalSet:
    """At most ``count`` of the queries (seeded), for validation parts too big to score often."""
    if len(data.query_ids) <= count:
        return data
    chosen = sorted(data.query_ids)
    random.Random(seed).shuffle(chosen)
    keep = set(chosen[:count])
    return data.subset([q for q in data.query_ids if q in keep])


def hold_out_test(
    source: str,
    *,
    split: str = "train",
    test_split: str = "test",
    test_fraction: float = 0.1,
    seed: int = 42,
) -> tuple[RetrievalSet, RetrievalSet, str]:
    """(search data, test data, where the test came from), deduplicated.

    A BEIR folder with ``qrels/<test_split>.tsv`` gives its test split (its queries are
    removed from the search data if the two share any); any other source gives up a seeded
    ``test_fraction`` of its queries. The test part is scored once, after the search.
    """
    folder = Path(source)
    if folder.is_dir() and (folder / "qrels" / f"{test_split}.tsv").is_file():
        pool, _ = load_beir(folder, split).deduplicated()
        test = load_beir(folder, test_split)
        overlap = set(pool.query_ids) & set(test.query_ids)
        pool = pool.subset([q for q in pool.query_ids if q not in overlap])
        return pool, test, f"{folder.name}/qrels/{test_split}.tsv"
    if not 0.0 < test_fraction < 1.0:
        raise SelectionError(
            f"--test-fraction {test_fraction} must be between 0 and 1",
            fix="hold out 0.1 of the queries for the test score, for example",
        )
    data, _ = load_source(source, split=split).deduplicated()
    if len(data.query_ids) < 3:
        raise SelectionError(
            f"{len(data.query_ids)} queries: too few to hold out a test part and still search",
            fix="give more (query, document) pairs",
        )
    pool, test = data.split(test_fraction, seed=seed + 1, max_validation=len(data.query_ids))
    return pool, test, f"{test_fraction:g} of the queries, held out (seed {seed + 1})"
