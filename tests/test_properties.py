"""Property-based tests (Hypothesis, against the real server) of inputs that cross semdb's
public API outside search: ``copy_rows`` data, names given to ``semdb`` commands, texts given
to the embedder. Each input either does what it says or fails with a clear semdb error, and
nothing else is written. (Search inputs: tests/test_search_properties.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semdb
from semdb.cli import cli
from semdb.errors import (
    DimensionMismatchError,
    InvalidTextError,
    NonFiniteVectorError,
    TextTypeError,
    VectorTypeError,
)

DIM = 32  # the tiny model's
PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "property_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str | None]
    embedding: Mapped[np.ndarray | None] = semdb.embedding_column(
        "body", model="tiny", dimension=DIM, sync="manual"
    )


@pytest.fixture(scope="module")
def rows_table(engine: sa.Engine) -> Iterator[sa.Engine]:
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


def stored_rows(connection: sa.Connection) -> list[Any]:
    return list(
        connection.execute(
            sa.select(Row.id, Row.embedding, Row.embedding_model).order_by(Row.id)
        ).all()
    )


# -- copy_rows ----------------------------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
special = st.sampled_from([float("nan"), float("inf"), float("-inf")])
vector = st.lists(finite, min_size=DIM, max_size=DIM).map(
    lambda values: np.asarray(values, dtype=np.float32)
)
poisoned = st.tuples(vector, st.integers(0, DIM - 1), special).map(
    lambda t: np.where(np.arange(DIM) == t[1], np.float32(t[2]), t[0]).astype(np.float32)
)
misshapen = st.integers(0, 2 * DIM).filter(lambda n: n != DIM).map(lambda n: np.ones(n, np.float32))
entry = st.one_of(
    st.none(),
    vector,
    vector.map(lambda v: [float(x) for x in v]),  # a list of floats works like an array
    poisoned,
    misshapen,
)


@PROPERTY
@given(column=st.lists(entry, min_size=1, max_size=8))
def test_copy_rows_loads_none_as_null_and_refuses_every_bad_vector(
    rows_table: sa.Engine, column: list[Any]
) -> None:
    shaped = [np.asarray(v, dtype=np.float32) if v is not None else None for v in column]
    wrong_shape = [i for i, v in enumerate(shaped) if v is not None and v.shape != (DIM,)]
    non_finite = [
        i
        for i, v in enumerate(shaped)
        if v is not None and i not in wrong_shape and not np.isfinite(v).all()
    ]
    ids = list(range(len(column)))
    with rows_table.connect() as connection:
        transaction = connection.begin()
        try:
            if wrong_shape:
                with pytest.raises(DimensionMismatchError, match=f"row {wrong_shape[0]} "):
                    semdb.copy_rows(connection, Row, {"id": ids, "embedding": column})
            elif non_finite:
                with pytest.raises(NonFiniteVectorError) as caught:
                    semdb.copy_rows(connection, Row, {"id": ids, "embedding": column})
                message = caught.value.one_line()
                assert "property_rows.embedding" in message
                assert f"row {non_finite[0]} has NaN" in message
            else:
                count = semdb.copy_rows(
                    connection, Row, {"id": ids, "embedding": column}, model="tiny@1"
                )
                assert count == len(column)
                stored = stored_rows(connection)
                assert [r.id for r in stored] == ids
                for row, given_vector in zip(stored, shaped, strict=True):
                    if given_vector is None:
                        assert row.embedding is None and row.embedding_model is None
                    else:
                        assert np.array_equal(row.embedding, given_vector)
                        assert row.embedding_model == "tiny@1"
        finally:
            transaction.rollback()
        assert stored_rows(connection) == []


@PROPERTY
@given(
    value=st.one_of(
        st.text(max_size=DIM),
        st.lists(st.text(max_size=3), min_size=DIM, max_size=DIM),
        st.lists(st.booleans(), min_size=DIM, max_size=DIM),
        st.lists(st.complex_numbers(allow_nan=False, max_magnitude=10), min_size=DIM, max_size=DIM),
        st.dictionaries(st.text(max_size=3), finite, max_size=3),
    )
)
def test_copy_rows_refuses_what_is_not_a_vector_of_real_numbers(
    rows_table: sa.Engine, value: Any
) -> None:
    with rows_table.connect() as connection:
        transaction = connection.begin()
        try:
            with pytest.raises((VectorTypeError, DimensionMismatchError)) as caught:
                semdb.copy_rows(connection, Row, {"id": [1, 2], "embedding": [None, value]})
            assert "row 1" in caught.value.one_line()
        finally:
            transaction.rollback()


# -- names given to semdb commands ------------------------------------------------------------

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
hostile_fragments = st.sampled_from(
    [
        "'; CREATE TABLE property_canary(); --",
        '"; DROP TABLE semdb.models; --',
        "$(touch property_canary)",
        "`touch property_canary`",
        "../../property_canary",
        "/tmp/property_canary",
        "name\n",
        "a/b",
        "..",
        ".",
        "%s%%s{}",
        "name@",
        "@1",
        "x" * 300,
        "ünïcödé",
        "tab\there",
    ]
)
hostile = st.one_of(
    hostile_fragments,
    st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    st.tuples(st.text(max_size=8), hostile_fragments).map("".join),
)


def database_state(engine: sa.Engine) -> tuple[Any, ...]:
    with engine.connect() as connection:
        return (
            connection.execute(sa.text("SELECT count(*) FROM semdb.models")).scalar(),
            connection.execute(sa.text("SELECT count(*) FROM semdb.vector_columns")).scalar(),
            connection.execute(sa.text("SELECT count(*) FROM semdb.activations")).scalar(),
            connection.execute(
                sa.text("SELECT count(*) FROM pg_class WHERE relname LIKE 'property_canary%'")
            ).scalar(),
        )


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model store (SEMDB_HOME) of its own; the commands run in tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SEMDB_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@PROPERTY
@given(
    name=hostile,
    command=st.sampled_from(["import", "register", "activate", "status", "worker", "backfill"]),
)
@example(name="name\n", command="import")  # "$" of a regular expression takes a last "\n"
@example(name="name\n", command="register")
@example(name="'; CREATE TABLE property_canary(); --", command="activate")
@example(name="x" * 300, command="register")  # longer than a file name may be
def test_hostile_names_given_to_commands_are_refused_cleanly(
    engine: sa.Engine, store: Path, tmp_path: Path, name: str, command: str
) -> None:
    """``semdb model import --name``, ``register``, ``activate``, ``status --column``,
    ``semdb worker --column`` and ``semdb backfill --column`` with a name that is not a safe
    name: exit status 1 (or 2 for what click reads as an option), one line naming the
    problem, no traceback; no file or folder made anywhere (the store included), no row or
    table in the database."""
    assume(not SAFE_NAME.fullmatch(name) and not name.startswith("-"))
    source = tmp_path / "model-folder"
    source.mkdir(exist_ok=True)
    arguments = {
        "import": ["model", "import", str(source), "--name", name, "--no-register"],
        "register": ["model", "register", name],
        "activate": ["model", "activate", name, "--column", "property_rows.embedding"],
        "status": ["model", "status", "--column", name],
        "worker": ["worker", "--column", name, "--until-empty"],
        "backfill": ["backfill", "--column", name],
    }[command]
    before_db = database_state(engine)
    before_files = files_under(tmp_path)
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code in (1, 2), (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.output.strip(), "no message"
    assert database_state(engine) == before_db
    assert files_under(tmp_path) == before_files
    if command in ("import", "register", "activate"):  # refused for its name, before any work
        # (".." or "/tmp/x" given to register is a folder: it must hold a bundle)
        refusals = ("is not allowed", "no such folder", "is not a semdb model bundle")
        assert any(refusal in result.output for refusal in refusals), result.output
    assert not list(tmp_path.rglob("property_canary*"))


# -- texts given to the embedder ----------------------------------------------------------------

texts = st.lists(
    st.one_of(
        st.text(max_size=200),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
        st.sampled_from(["", " ", "\n\t", "a" * 5000, "🙂" * 300, "\u202e\u0000x", "\ufeff"]),
    ),
    min_size=1,
    max_size=6,
)


@PROPERTY
@given(batch=texts)
def test_any_text_embeds_to_unit_vectors_that_round_trip_through_the_database(
    rows_table: sa.Engine, tiny_embedder: Any, batch: list[str]
) -> None:
    vectors = tiny_embedder.embed(batch, kind="document")
    assert vectors.shape == (len(batch), DIM) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # Alone or in a batch: the same vector (padding never leaks into the pooling).
    assert np.allclose(tiny_embedder.embed(batch[:1])[0], vectors[0], atol=1e-4)
    ids = list(range(len(batch)))
    with rows_table.connect() as connection:
        transaction = connection.begin()
        try:
            semdb.copy_rows(
                connection,
                Row,
                {"id": ids, "body": [t.replace("\x00", "") for t in batch], "embedding": vectors},
                model="tiny@1",
            )
            stored = stored_rows(connection)
            assert all(np.array_equal(r.embedding, vectors[r.id]) for r in stored)
        finally:
            transaction.rollback()


@PROPERTY
@given(
    bad=st.one_of(
        st.integers(),
        st.none(),
        st.binary(max_size=10),
        st.just("\ud800 lone surrogate"),
        st.lists(st.integers(), min_size=1, max_size=3),
    )
)
def test_what_is_not_a_text_is_refused_by_the_embedder(tiny_embedder: Any, bad: Any) -> None:
    with pytest.raises((TextTypeError, InvalidTextError)):
        tiny_embedder.embed(["fine", bad])
