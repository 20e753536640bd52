"""The example searches the quickstart runs and prints, and the same searches as SQL.

Each :class:`Example` is data: a query text, optional equality filters, semantic or hybrid.
:func:`run_example` runs it through :func:`semdb.search` / :func:`semdb.hybrid_search`;
:func:`shell_command` writes the ``semdb sql`` command that runs the same search from a shell
(semdb embeds the text and binds the vector), in the form the plan semdb chose; and
:func:`psql_script` writes SQL that needs no embedder at all (the vector of a stored row), to
paste into ``semdb db psql``. Tests run all of them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from rich.console import Console
from rich.table import Table

from semdb.protocols import TextEmbedder
from semdb.retrieval import hybrid_search, search
from semdb.retrieval.results import SearchResult

K = 5
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class Example:
    title: str
    query: str
    filters: tuple[tuple[str, str], ...] = ()  # (column, value): column = value
    hybrid: bool = False


@dataclass(frozen=True)
class TableView:
    """How to show a quickstart table's rows: a label column, extra columns, the text."""

    table: sa.Table
    label: str  # e.g. "qualname"
    extra: tuple[str, ...]  # e.g. ("kind",)
    text: str  # e.g. "summary"

    @property
    def sql_name(self) -> sql.Composable:
        """The table's name as SQL: ``quickstart.stdlib_docs``, quoted where needed."""
        names = (self.table.schema, self.table.name) if self.table.schema else (self.table.name,)
        return sql.SQL(".").join(_name(name) for name in names)


STDLIB_EXAMPLES = (
    Example("Semantic search", "parse command line options"),
    Example(
        "Filtered: functions only",
        "wait for something to finish, with a timeout",
        filters=(("kind", "function"),),
    ),
    Example(
        "Filtered: one module", "send an email with an attachment", filters=(("module", "email"),)
    ),
    Example("Hybrid: BM25 + vector", "sha256 checksum of a file", hybrid=True),
)


def data_examples(queries: Sequence[str]) -> tuple[Example, ...]:
    """Examples for a data folder: its first queries, semantic then hybrid."""
    examples = [Example("Semantic search", query) for query in queries[:2]]
    if queries:
        examples.append(Example("Hybrid: BM25 + vector", queries[0], hybrid=True))
    return tuple(examples)


def where_of(view: TableView, example: Example) -> sa.ColumnElement[bool] | None:
    clauses = [view.table.c[column] == value for column, value in example.filters]
    return sa.and_(*clauses) if clauses else None


def run_example(
    connection: sa.Connection, view: TableView, example: Example, embedder: TextEmbedder
) -> SearchResult:
    column = view.table.c.embedding
    if example.hybrid:
        return hybrid_search(connection, column, example.query, embedder=embedder, k=K)
    return search(
        connection, column, example.query, embedder=embedder, k=K, where=where_of(view, example)
    )


def result_table(
    view: TableView, example: Example, result: SearchResult, *, width: int = 120
) -> Table:
    shown = "" if not example.filters else " where " + _filter_sql(example.filters).as_string()
    plan = result.plan
    caption = (
        f"plan: {plan.path} ({plan.reason})" if not example.hybrid else "score: both rankings fused"
    )
    table = Table(
        title=f"{example.title}: {example.query!r}{shown}",
        caption=caption,
        title_justify="left",
        caption_justify="left",
    )
    names = (view.label, *view.extra)
    widths = [
        min(48, max([len(name)] + [len(str(getattr(hit.row, name))) for hit in result]))
        for name in names
    ]
    table.add_column("#", justify="right", no_wrap=True, width=1)
    for name, column_width in zip(names, widths, strict=True):
        table.add_column(name, no_wrap=True, width=column_width, overflow="ellipsis")
    table.add_column("score" if example.hybrid else "distance", justify="right", width=8)
    # What is left of the line (3 characters of border and padding per column).
    left = width - (1 + 8 + sum(widths)) - 3 * (len(names) + 3) - 1
    table.add_column(view.text, overflow="ellipsis", no_wrap=True, width=max(10, left))
    for rank, hit in enumerate(result, start=1):
        row = hit.row
        value = hit.score if example.hybrid else hit.distance
        table.add_row(
            str(rank),
            *(str(getattr(row, name)) for name in (view.label, *view.extra)),
            f"{value:.4f}",
            _one_line(getattr(row, view.text)),
        )
    return table


def shell_command(view: TableView, example: Example, *, model: str, path: str = "index") -> str:
    """The ``semdb sql`` command that runs ``example`` the way semdb's plan did."""
    label = _name(view.label)
    if example.hybrid:
        statement = sql.SQL(
            "SELECT (h.item).{label}, h.score FROM semdb.hybrid_search("
            "NULL::{table}, 'embedding', :q, :text, {k}) AS h"
        ).format(label=label, table=view.sql_name, k=K)
        arguments = [
            "--embed",
            _assign("q", example.query),
            "--param",
            _assign("text", example.query),
        ]
    else:
        where = (
            sql.SQL(" WHERE {}").format(_filter_sql(example.filters))
            if example.filters
            else sql.SQL("")
        )
        order = "embedding <=> :q" if path == "index" else "cosine_distance(embedding, :q)"
        statement = sql.SQL(
            "SELECT {columns} FROM {table}{where} ORDER BY {order} LIMIT {k}"
        ).format(
            columns=sql.SQL(", ").join(_name(c) for c in (view.label, *view.extra)),
            table=view.sql_name,
            where=where,
            order=sql.SQL(order),
            k=K,
        )
        arguments = ["--embed", _assign("q", example.query)]
        if example.filters and path == "index":
            arguments = ["--set", "hnsw.iterative_scan=relaxed_order", *arguments]
    words = ["semdb", "sql", _shell_word(statement.as_string()), *arguments]
    return " ".join([*words, "--model", _shell_word(model)])


_PSQL = """\
-- the {k} rows nearest to {anchor}, filtered (an HNSW scan that goes on until
-- {k} rows pass the filter: pgvector 0.8's iterative scan, for this transaction only)
BEGIN;
SET LOCAL hnsw.iterative_scan = relaxed_order;
SELECT {label}, embedding <=> {vector} AS distance
FROM {table}
WHERE {where}
ORDER BY embedding <=> {vector}
LIMIT {k};
COMMIT;

-- hybrid search (BM25 + vector, the column's fusion): the function the
-- migrations installed, given a query vector and a query text
SELECT (h.item).{label}, h.score, h.semantic_rank, h.keyword_rank
FROM semdb.hybrid_search(NULL::{table}, 'embedding', {vector}, {query}, {k}) AS h;
"""


def psql_script(
    view: TableView, anchor: str, query: str, filters: Sequence[tuple[str, str]]
) -> str:
    """SQL for psql with no embedder: neighbours of a stored row, filtered; hybrid search with
    that row's vector and a query text."""
    label = _name(view.label)
    vector = sql.SQL("(SELECT embedding FROM {table} WHERE {label} = {anchor})").format(
        table=view.sql_name, label=label, anchor=sql.Literal(anchor)
    )
    where = sql.SQL(" AND ").join(
        [_filter_sql(filters), sql.SQL("{} <> {}").format(label, sql.Literal(anchor))]
        if filters
        else [sql.SQL("{} <> {}").format(label, sql.Literal(anchor))]
    )
    return (
        sql.SQL(_PSQL)
        .format(
            k=K,
            anchor=sql.Literal(anchor),
            label=label,
            vector=vector,
            table=view.sql_name,
            where=where,
            query=sql.Literal(query),
        )
        .as_string()
    )


def print_examples(
    console: Console,
    connection: sa.Connection,
    view: TableView,
    examples: Sequence[Example],
    embedder: TextEmbedder,
    *,
    model: str,
) -> dict[str, list[Any]]:
    """Run, print, and return each example's labels (for tests and the report)."""
    shown: dict[str, list[Any]] = {}
    commands = []
    for example in examples:
        result = run_example(connection, view, example, embedder)
        console.print(result_table(view, example, result, width=console.width))
        console.print()
        shown[f"{example.title}: {example.query}"] = [getattr(h.row, view.label) for h in result]
        commands.append(shell_command(view, example, model=model, path=result.plan.path))
    console.rule("The same searches from a shell (semdb embeds the text, binds the vector)")
    for command in commands:
        console.print(command, markup=False, highlight=False, soft_wrap=True)
    return shown


def _shell_word(text: str) -> str:
    """``text`` as one shell word, in double quotes when that is safe (easier to read than
    shlex's quoting of SQL's single quotes)."""
    if shlex.quote(text) == text:
        return text
    if not any(char in text for char in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def _assign(name: str, value: str) -> str:
    return f"{name}={_shell_word(value)}"


def _filter_sql(filters: Sequence[tuple[str, str]]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(_name(column), sql.Literal(value)) for column, value in filters
    )


def _name(name: str) -> sql.Composable:
    """A column or table name as SQL, quoted only when it must be (easier to read)."""
    return sql.SQL(name) if _PLAIN_NAME.fullmatch(name) else sql.Identifier(name)


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())
