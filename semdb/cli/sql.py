"""``semdb sql``: run a SQL statement whose parameters are embedded texts.

    semdb sql "SELECT title FROM docs ORDER BY embedding <=> :q LIMIT 5" --embed q="cheap flights"

``--embed NAME=TEXT`` binds ``:NAME`` to the query vector of TEXT (in binary, typed
``vector(n)``), embedded by ``--model`` or else by the model the registered columns hold now
(``name@version`` after ``semdb model activate``); ``--param NAME=VALUE`` binds ``:NAME``
to a text value (cast it in SQL as needed). Values are always bound, never pasted into the
statement. ``--set NAME=VALUE`` sets a server setting for this statement's transaction only
(``set_config(..., true)``, the function form of ``SET LOCAL``), e.g.
``--set hnsw.iterative_scan=relaxed_order``.
"""

from __future__ import annotations

from typing import Any

import click
import numpy as np
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from semdb.cli.embedder import default_model, load_embedder, model_in_use, model_option
from semdb.db import create_engine
from semdb.errors import SemdbError


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name.isidentifier():
            raise SemdbError(
                f"{option} expects NAME=VALUE with NAME a parameter name, got {value!r}",
                fix=f'write e.g. {option} q="cheap flights" and use :q in the statement',
            )
        pairs[name] = text
    return pairs


def _settings(values: tuple[str, ...]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not all(part.isidentifier() for part in name.split(".")):
            raise SemdbError(
                f"--set expects NAME=VALUE with NAME a setting's name, got {value!r}",
                fix="write e.g. --set hnsw.iterative_scan=relaxed_order",
            )
        settings[name] = setting
    return settings


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        head = ", ".join(f"{x:.3f}" for x in value[:3])
        return f"[{head}, … {value.shape[0]} values]"
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()[:16] + ("…" if len(bytes(value)) > 8 else "")
    return "NULL" if value is None else str(value)


@click.command("sql")
@click.argument("statement")
@click.option(
    "--embed",
    "embeds",
    multiple=True,
    metavar="NAME=TEXT",
    help="Bind :NAME to the query vector of TEXT (repeatable).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind :NAME to a text value (repeatable).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="A setting for this statement only, e.g. hnsw.iterative_scan=relaxed_order.",
)
@model_option
@click.option("--max-rows", default=100, show_default=True, help="Rows to print at most.")
def sql_command(
    statement: str,
    embeds: tuple[str, ...],
    params: tuple[str, ...],
    settings: tuple[str, ...],
    model: str | None,
    provider: str,
    max_rows: int,
) -> None:
    """Run STATEMENT with embedded texts as parameters, print the rows as a table."""
    from semdb.orm.types import VectorType

    texts, values = _pairs(embeds, "--embed"), _pairs(params, "--param")
    local_settings = _settings(settings)
    both = set(texts) & set(values)
    if both:
        raise SemdbError(f"parameter {sorted(both)[0]!r} is given twice", fix="name each once")
    engine = create_engine()
    try:
        bindings: list[sa.BindParameter[Any]] = [
            sa.bindparam(name, value, type_=sa.Text) for name, value in values.items()
        ]
        defaulted: str | None = None
        if texts:
            defaulted = None if model else default_model(engine)
            embedder = load_embedder(model or defaulted or "", provider)
            for name, text in texts.items():
                vector = embedder.embed_query(text)
                bindings.append(
                    sa.bindparam(
                        name, vector, type_=VectorType(embedder.dimension, label=f":{name}")
                    )
                )
        query = sa.text(statement).bindparams(*bindings) if bindings else sa.text(statement)
        with engine.begin() as connection:
            for name, value in local_settings.items():
                connection.execute(
                    sa.select(sa.func.set_config(name, value, True)),
                )
            result = connection.execute(query)
            if defaulted is not None and model_in_use(connection) != defaulted:
                # An activation switched the column between loading the model and running
                # the statement (which now holds the table): the vectors would not compare.
                raise SemdbError(
                    f"the registered column switched from {defaulted} to "
                    f"{model_in_use(connection)} while the statement ran; nothing was kept",
                    fix="run the statement again (it embeds with the new model)",
                )
            if not result.returns_rows:
                click.echo(f"{result.rowcount} row(s) affected")
                return
            keys = list(result.keys())
            rows = result.fetchmany(max_rows + 1)
    except sa.exc.ArgumentError as exc:
        raise SemdbError(
            f"the statement and the parameters do not match: {exc}",
            fix="use :NAME in the statement for each --embed/--param NAME=...",
        ) from exc
    except sa.exc.DBAPIError as exc:
        if isinstance(exc, sa.exc.OperationalError) and exc.connection_invalidated:
            raise
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SemdbError(
            f"the database refused the statement: {detail}", fix="correct the SQL"
        ) from exc
    finally:
        engine.dispose()
    table = Table(*keys)
    for row in rows[:max_rows]:
        table.add_row(*(_show(value) for value in row))
    Console().print(table)
    if len(rows) > max_rows:
        click.echo(f"(more rows; showing the first {max_rows}, see --max-rows)", err=True)
