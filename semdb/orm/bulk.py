"""Bulk loading: binary COPY into an ORM-mapped (or Core) table, vectors as numpy float32.

>>> semdb.copy_rows(session, Doc, {"id": ids, "title": titles, "embedding": vectors},
...                 model="all-MiniLM-L6-v2@1")
>>> semdb.copy_rows(connection, Doc, [{"id": 1, "title": "..."}, ...])    # rows, no vectors

Columnar input (one sequence or array per column) is the fast path; a list of dicts or ORM
objects is accepted too. Vectors are encoded once, as a whole (n, dimension) array, into
pgvector's binary format; every other value goes through psycopg's binary dumpers. When the
vectors are given with ``model`` (``name@version``) and the source text columns are loaded
as well, the model and content-hash companions are filled in, so queued sync does not embed
those rows again. Runs inside the caller's transaction (an Engine: its own, committed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from semdb.errors import (
    BindTypeError,
    DeclarationError,
    DimensionMismatchError,
    VectorTypeError,
)
from semdb.orm.declaration import spec_of
from semdb.orm.document import content_hash, document_text
from semdb.orm.types import VectorType, encode_matrix

_BYTEA_OID = 17


def copy_rows(
    bind: Session | Connection | Engine,
    target: Any,
    data: Mapping[str, Any] | Iterable[Any],
    *,
    model: str | None = None,
) -> int:
    """COPY ``data`` into ``target`` (an ORM class or a Table) in binary; returns the row count."""
    if type(bind).__name__ in ("AsyncSession", "AsyncConnection", "AsyncEngine"):
        raise BindTypeError(
            f"semdb.copy_rows takes a Session, a Connection or an Engine, got a "
            f"{type(bind).__name__}",
            fix="await the twin in semdb.aio: await semdb.aio.copy_rows(session, ...)",
        )
    table, columns = columns_of(target, data)
    count = encode_columns(table, columns, model)
    if not count:
        return 0
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            return _copy(connection, table, columns, count)
    connection = bind.connection() if isinstance(bind, Session) else bind
    return _copy(connection, table, columns, count)


def columns_of(
    target: Any, data: Mapping[str, Any] | Iterable[Any]
) -> tuple[sa.Table, dict[str, Any]]:
    """The table of ``target`` and ``data`` as one sequence per column name (read from ORM
    objects where given: call it where their attributes can be loaded)."""
    table = _table_of(target)
    return table, _columnar(table, target, data)


def encode_columns(table: sa.Table, columns: dict[str, Any], model: str | None) -> int:
    """Check the columns (one length, vectors as :func:`copy_rows` takes them), encode the
    vectors and add the companions, in place; returns the row count (0: nothing to load).
    Pure computation, no database: ``semdb.aio.copy_rows`` runs it in a worker thread."""
    if not columns:
        return 0
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DeclarationError(
            f"the columns given to copy_rows have different lengths: {lengths}",
            fix="give every column one value per row",
        )
    count = next(iter(lengths.values()))
    _add_companions(table, columns, model, count)
    return count


def copy_statement(table: sa.Table, names: Sequence[str]) -> sql.Composed:
    """``COPY table (names) FROM STDIN (FORMAT BINARY)``, the identifiers quoted."""
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(*([table.schema] if table.schema else []), table.name),
        sql.SQL(", ").join(sql.Identifier(name) for name in names),
    )


def _table_of(target: Any) -> sa.Table:
    if isinstance(target, sa.Table):
        return target
    table = getattr(target, "__table__", None)
    if isinstance(table, sa.Table):
        return table
    raise DeclarationError(
        f"copy_rows loads an ORM-mapped class or a Table, got {target!r}",
        fix="pass the mapped class (Doc) or its table (Doc.__table__)",
    )


def _attribute_to_column(table: sa.Table, target: Any) -> dict[str, str]:
    """Attribute keys -> column names (they differ when mapped_column(name=...) is used)."""
    names = {str(column.key): str(column.name) for column in table.c}
    if not isinstance(target, sa.Table):
        mapper = sa.inspect(target)
        for attribute in mapper.column_attrs:
            names[attribute.key] = attribute.columns[0].name
    return names


def _columnar(table: sa.Table, target: Any, data: Any) -> dict[str, Any]:
    names = _attribute_to_column(table, target)
    items: list[tuple[str, Any]]
    if isinstance(data, Mapping):
        items = list(data.items())
    else:
        rows = list(data)
        if not rows:
            return {}
        if not isinstance(rows[0], Mapping):  # ORM objects
            keys = [k for k in names if k in vars(rows[0])]
            rows = [{k: getattr(row, k) for k in keys} for row in rows]
        keys = list(dict.fromkeys(key for row in rows for key in row))
        items = [(key, [row.get(key) for row in rows]) for key in keys]
    columns: dict[str, Any] = {}
    for key, values in items:
        name = str(names.get(key, key))
        if name not in table.c:
            raise DeclarationError(
                f"{table.fullname} has no column {key!r}",
                fix=f"use one of: {', '.join(table.c.keys())}",
            )
        columns[name] = values
    return columns


def _add_companions(
    table: sa.Table, columns: dict[str, Any], model: str | None, count: int
) -> None:
    for column in table.c:
        spec = spec_of(column)
        if spec is None or column.name not in columns:
            continue
        encoded = _encode_column(columns[column.name], spec, f"{table.fullname}.{column.name}")
        columns[column.name] = encoded
        if model is None:
            continue
        # Companions only where a vector is given: a row loaded without one (None) is left
        # for the sync to embed.
        model_name = spec.model_column_name(column.name)
        hash_name = spec.hash_column_name(column.name)
        columns.setdefault(model_name, [None if v is None else model for v in encoded])
        if all(source in columns for source in spec.sources) and hash_name not in columns:
            sources = [columns[source] for source in spec.sources]
            columns[hash_name] = [
                None if vector is None else content_hash(document_text(list(values)))
                for vector, values in zip(encoded, zip(*sources, strict=True), strict=True)
            ]


def _encode_column(values: Any, spec: Any, where: str) -> list[bytes | None]:
    """A vector column's values in pgvector's binary format; None (a row without a vector)
    stays None. Every present vector is checked: its dimension, and NaN or infinity
    (:class:`NonFiniteVectorError` naming the column and the row)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        _check_kind(values, where)
        return list(
            encode_matrix(values, dimension=spec.dimension, storage=spec.storage, where=where)
        )
    values = list(values)
    present = [i for i, value in enumerate(values) if value is not None]
    encoded: list[bytes | None] = [None] * len(values)
    if not present:
        return encoded
    vectors = [_row_vector(values[i], spec.dimension, f"{where}, row {i}") for i in present]
    rows = encode_matrix(
        np.stack(vectors).astype(np.float32, copy=False),
        dimension=spec.dimension,
        storage=spec.storage,
        where=where,
        rows=present,
    )
    for i, row in zip(present, rows, strict=True):
        encoded[i] = row
    return encoded


def _row_vector(value: Any, dimension: int, where: str) -> np.ndarray:
    """One row's vector as a 1-d array of ``dimension`` numbers (NaN checked by the caller)."""
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):
        value = value.to_numpy()
    if isinstance(value, (str, bytes)):
        raise VectorTypeError(
            f"{where} is a {type(value).__name__}, not a vector",
            fix="pass a sequence of numbers (a 1-d float32 array), or None for no vector",
        )
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise VectorTypeError(
            f"{where} is not a vector of numbers ({type(value).__name__})",
            fix="pass a sequence of numbers (a 1-d float32 array), or None for no vector",
        ) from exc
    _check_kind(array, where)
    if array.ndim != 1 or array.shape[0] != dimension:
        raise DimensionMismatchError(
            f"{where} holds {dimension}-dimensional vectors; got one of shape {array.shape}",
            fix=f"embed with the model the column was declared with ({dimension} dimensions)",
        )
    return array


def _check_kind(array: np.ndarray, where: str) -> None:
    """Real numbers only: strings, booleans, complex numbers and objects are refused."""
    if array.dtype.kind not in "fiu":
        raise VectorTypeError(
            f"{where} holds {array.dtype} values, not real numbers",
            fix="pass float32 vectors (what the embedder returns), or None for no vector",
        )


def _copy(connection: Connection, table: sa.Table, columns: dict[str, Any], count: int) -> int:
    driver: psycopg.Connection[Any] = connection.connection.dbapi_connection  # type: ignore[assignment]
    names = list(columns)
    oids = column_oids(connection, table, names)
    statement = copy_statement(table, names)
    values = [columns[name] for name in names]
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(oids)
        write_row = copy.write_row
        for row in zip(*values, strict=True):
            write_row(row)
    return count


def column_oids(connection: Connection, table: sa.Table, names: Sequence[str]) -> list[int]:
    """The type oid psycopg must dump each column as; vectors go as their wire bytes."""
    oids = []
    rows = connection.execute(
        sa.text(
            "SELECT attname, atttypid::int FROM pg_attribute "
            "WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 AND NOT attisdropped"
        ),
        {"table": _regclass_name(connection, table)},
    ).all()
    by_name = {name: oid for name, oid in rows}
    for name in names:
        if isinstance(table.c[name].type, VectorType) or spec_of(table.c[name]) is not None:
            oids.append(_BYTEA_OID)  # pre-encoded: vector_recv reads the bytes as they are
        else:
            oids.append(by_name[name])
    return oids


def _regclass_name(connection: Connection, table: sa.Table) -> str:
    preparer = connection.dialect.identifier_preparer
    return str(preparer.format_table(table))
