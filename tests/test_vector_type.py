"""VectorType: binary binding, dimension checks, round trips; document text and hash."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from psycopg import pq

from semdb.errors import DimensionMismatchError, NonFiniteVectorError, VectorTypeError
from semdb.orm import VectorType
from semdb.orm.document import content_hash, content_hash_sql, document_sql, document_text
from semdb.orm.types import encode_matrix, encode_vector


def trace_of(connection: sa.Connection, statement: sa.Executable) -> str:
    """libpq's own trace of the messages sent for one statement."""
    raw = connection.connection.dbapi_connection
    with tempfile.NamedTemporaryFile("w+") as handle:
        raw.pgconn.trace(handle.fileno())
        raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            connection.execute(statement)
        finally:
            raw.pgconn.untrace()
        return Path(handle.name).read_text()


def test_query_vectors_are_bound_in_binary(engine: sa.Engine) -> None:
    vector = np.array([1.0, 2.0, 3.0], np.float32)
    statement = sa.select(sa.bindparam("q", vector, type_=VectorType(3)).label("v"))
    with engine.connect() as connection:
        trace = trace_of(connection, statement)
        assert connection.execute(statement).scalar_one().tolist() == [1.0, 2.0, 3.0]
    bind = next(line for line in trace.splitlines() if "\tBind\t" in line)
    # one parameter, format code 1 (binary), 16 bytes: dimension 3, unused 0, three floats
    assert '"" "" 1 1 1 16 ' in bind, bind
    assert "[1,2,3]" not in bind


def test_plain_sqlalchemy_engines_bind_in_binary_too(
    engine: sa.Engine, database_url: sa.URL
) -> None:
    """No per-connection registration needed: the statement casts to the vector type."""
    plain = sa.create_engine(database_url)  # no semdb registration on its connections
    try:
        statement = sa.select(sa.bindparam("q", [0.5, -1.0], type_=VectorType(2)))
        with plain.connect() as connection:
            value = connection.execute(statement).scalar_one()
            trace = trace_of(connection, statement)
        assert '"" "" 1 1 1 12 ' in next(line for line in trace.splitlines() if "\tBind\t" in line)
        assert value.dtype == np.float32 and value.tolist() == [0.5, -1.0]
    finally:
        plain.dispose()


def test_round_trip_is_exact_for_float32_and_close_for_halfvec(engine: sa.Engine) -> None:
    rng = np.random.default_rng(1)
    vector = rng.normal(size=384).astype(np.float32)
    with engine.connect() as connection:
        back = connection.execute(
            sa.select(sa.bindparam("v", vector, type_=VectorType(384)))
        ).scalar_one()
        half = connection.execute(
            sa.select(sa.bindparam("v", vector, type_=VectorType(384, "halfvec")))
        ).scalar_one()
    assert np.array_equal(back, vector)
    assert half.dtype == np.float32 and np.allclose(half, vector, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("value", "culprit"),
    [
        (np.zeros(4, np.float32), "holds 3-dimensional vectors; got one with 4"),
        (np.zeros((2, 3), np.float32), "one vector"),
        (np.array([1.0, np.nan, 0.0]), "NaN"),
        (np.array([1.0, np.inf, 0.0]), "NaN or infinite"),
        ("not a vector", "sequence of numbers"),
        (["1", "2", "3"], "sequence of numbers"),
        ([True, False, True], "sequence of numbers"),
        (np.ones(3, dtype=complex), "sequence of numbers"),
    ],
)
def test_wrong_vectors_are_refused_before_they_are_sent(
    engine: sa.Engine, value: object, culprit: str
) -> None:
    type_ = VectorType(3, label="docs.embedding")
    with engine.connect() as connection:
        with pytest.raises(sa.exc.StatementError) as caught:
            connection.execute(sa.select(sa.bindparam("v", value, type_=type_)))
    expected = {"NaN": NonFiniteVectorError, "sequence of numbers": VectorTypeError}
    assert isinstance(
        caught.value.orig,
        next((e for k, e in expected.items() if culprit.startswith(k)), DimensionMismatchError),
    )
    assert culprit in str(caught.value.orig)
    assert "docs.embedding" in str(caught.value.orig) or "sequence" in culprit


def test_halfvec_refuses_values_beyond_its_range() -> None:
    with pytest.raises(DimensionMismatchError, match="halfvec"):
        encode_vector([1e6, 0.0], dimension=2, storage="halfvec")


def test_matrix_encoding_matches_row_encoding_and_names_bad_rows() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(5, 8)).astype(np.float32)
    assert encode_matrix(vectors, dimension=8) == [encode_vector(v, dimension=8) for v in vectors]
    vectors[3, 1] = np.nan
    with pytest.raises(NonFiniteVectorError, match="row 3"):
        encode_matrix(vectors, dimension=8)
    with pytest.raises(DimensionMismatchError, match="8-dimensional"):
        encode_matrix(np.zeros((2, 5)), dimension=8)


@pytest.mark.parametrize(
    "values",
    [
        ["Title", "Body text"],
        ["Only a title", None],
        [None, None],
        ["", "empty title"],
        ["ünïcödé ✓ 漢字", "emoji 🚀 and\nnewlines\ttabs"],
        ["quote ' and \" and \\ backslash", "%(param)s :name $1"],
    ],
)
def test_document_and_hash_agree_between_python_and_sql(
    engine: sa.Engine, values: list[str | None]
) -> None:
    columns = [sa.literal(v, sa.Text) if v is not None else sa.null() for v in values]
    document = document_sql(columns)
    with engine.connect() as connection:
        text_sql, hash_sql = connection.execute(
            sa.select(document, content_hash_sql(document))
        ).one()
    assert text_sql == document_text(values)
    assert bytes(hash_sql) == content_hash(document_text(values))
