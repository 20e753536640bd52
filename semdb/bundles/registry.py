"""The model registry in the database (``semdb.models``): which bundles may have written vectors.

A row is identified by (name, version); ``onnx_sha256`` pins the exact fp32 weights, so one
(name, version) can never silently mean two different models. ``metrics`` is a JSON object
that training fills with its evaluation results.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, RowMapping
from sqlalchemy.dialects.postgresql import JSONB

from semdb.bundles.bundle import Bundle
from semdb.db.schema import SCHEMA, models
from semdb.errors import BundleError, SchemaNotReadyError


@dataclass(frozen=True)
class RegisteredModel:
    """One row of ``semdb.models``."""

    id: int
    name: str
    version: str
    dimension: int
    pooling: str
    normalize: bool
    max_tokens: int
    onnx_sha256: str
    metrics: Mapping[str, Any]
    created_at: datetime
    active: bool


def register_bundle(
    connectable: Engine | Connection, bundle: Bundle, *, activate: bool = False
) -> RegisteredModel:
    """Record ``bundle`` in the registry (idempotent) and return its row.

    Registering the same (name, version) again with the same weights does nothing; with other
    weights it is an error: a version names exactly one set of weights.
    """
    manifest = bundle.manifest
    with _transaction(connectable) as connection:
        _check_schema(connection)
        existing = _row(connection, manifest.name, manifest.version)
        if existing is not None and existing.onnx_sha256 != bundle.onnx_sha256:
            raise BundleError(
                f"model {manifest.name} version {manifest.version} is already registered with "
                f"other weights (sha256 {existing.onnx_sha256[:12]}..., this bundle "
                f"{bundle.onnx_sha256[:12]}...)",
                fix="give the new bundle another version",
            )
        if existing is None:
            connection.execute(
                sa.insert(models).values(
                    name=manifest.name,
                    version=manifest.version,
                    dimension=manifest.dimension,
                    pooling=manifest.pooling,
                    normalize=manifest.normalize,
                    max_tokens=manifest.max_tokens,
                    onnx_sha256=bundle.onnx_sha256,
                )
            )
        if activate:
            _activate(connection, manifest.name, manifest.version)
        row = _row(connection, manifest.name, manifest.version)
        assert row is not None
        return row


def list_registered(connectable: Engine | Connection) -> list[RegisteredModel]:
    """Every registered model, by name then creation time."""
    with _transaction(connectable) as connection:
        _check_schema(connection)
        rows = connection.execute(sa.select(models).order_by(models.c.name, models.c.created_at))
        return [_registered(row._mapping) for row in rows]


def get_registered(connectable: Engine | Connection, name: str, version: str) -> RegisteredModel:
    with _transaction(connectable) as connection:
        _check_schema(connection)
        row = _row(connection, name, version)
    if row is None:
        raise BundleError(
            f"model {name} version {version} is not registered in this database",
            fix=f"register it: semdb model register {name}@{version}",
        )
    return row


def record_metrics(
    connectable: Engine | Connection, name: str, version: str, metrics: Mapping[str, Any]
) -> RegisteredModel:
    """Merge ``metrics`` (a JSON-able mapping) into the model's ``metrics`` column."""
    get_registered(connectable, name, version)
    with _transaction(connectable) as connection:
        connection.execute(
            sa.update(models)
            .where(models.c.name == name, models.c.version == version)
            .values(
                metrics=models.c.metrics.op("||", return_type=JSONB)(
                    sa.literal(dict(metrics), type_=JSONB)
                )
            )
        )
    return get_registered(connectable, name, version)


def activate(connectable: Engine | Connection, name: str, version: str) -> RegisteredModel:
    """Make ``version`` the one active version of ``name`` (the others become inactive)."""
    get_registered(connectable, name, version)
    with _transaction(connectable) as connection:
        _activate(connection, name, version)
    return get_registered(connectable, name, version)


def _activate(connection: Connection, name: str, version: str) -> None:
    connection.execute(
        sa.update(models).where(models.c.name == name, models.c.active).values(active=False)
    )
    connection.execute(
        sa.update(models)
        .where(models.c.name == name, models.c.version == version)
        .values(active=True)
    )


def _row(connection: Connection, name: str, version: str) -> RegisteredModel | None:
    row = connection.execute(
        sa.select(models).where(models.c.name == name, models.c.version == version)
    ).first()
    return None if row is None else _registered(row._mapping)


def _registered(mapping: RowMapping) -> RegisteredModel:
    """The row as a RegisteredModel (columns added later by other parts are left out)."""
    return RegisteredModel(**{f.name: mapping[f.name] for f in fields(RegisteredModel)})


def _check_schema(connection: Connection) -> None:
    if not sa.inspect(connection).has_table(models.name, schema=SCHEMA):
        raise SchemaNotReadyError(
            f"the database has no {SCHEMA}.{models.name} table (semdb's schema is not created)",
            fix="run: semdb db upgrade",
        )


@contextmanager
def _transaction(connectable: Engine | Connection) -> Iterator[Connection]:
    """A transaction on an engine, or the caller's connection (in its own transaction)."""
    if isinstance(connectable, Connection):
        if connectable.in_transaction():
            yield connectable
        else:
            with connectable.begin():
                yield connectable
        return
    from semdb.db.engine import connect

    with connect(connectable) as connection, connection.begin():
        yield connection
