"""Declaring embedding columns: type, companions, indexes, and what reaches the database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateIndex, CreateTable

import semdb
from semdb.errors import DeclarationError
from semdb.orm import HNSW, Distance, IVFFlat, VectorType, embedding_column, vector_column

from .vector_data import unique_name

DIALECT = postgresql.dialect()


def ddl(table: sa.Table) -> str:
    parts = [str(CreateTable(table).compile(dialect=DIALECT))]
    parts += [
        str(CreateIndex(ix).compile(dialect=DIALECT))
        for ix in sorted(table.indexes, key=lambda i: i.name or "")
    ]
    return "\n".join(parts)


def make_model(table_name: str, **options: object) -> type:
    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = table_name
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        embedding: Mapped[np.ndarray | None] = embedding_column(
            "title",
            "body",
            model="tiny",
            dimension=4,
            **options,  # type: ignore[arg-type]
        )
        body: Mapped[str | None]  # declared after the vector on purpose

    return Doc


def test_declaration_adds_companions_and_an_hnsw_index_with_the_operator_class() -> None:
    Doc = make_model("docs_a", distance="cosine", index=HNSW(m=8, ef_construction=32))
    table = Doc.__table__
    assert [c.name for c in table.c] == [
        "id",
        "title",
        "embedding",
        "embedding_model",
        "embedding_hash",
        "body",
    ]
    assert isinstance(table.c.embedding.type, VectorType)
    assert Doc.embedding_model is not None and Doc.embedding_hash is not None
    text = ddl(table)
    assert "embedding VECTOR(4)" in text
    assert "embedding_model TEXT" in text and "embedding_hash BYTEA" in text
    assert (
        "CREATE INDEX ix_docs_a_embedding_hnsw ON docs_a USING hnsw "
        "(embedding vector_cosine_ops) WITH (m = 8, ef_construction = 32)"
    ) in text


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"distance": "l2", "index": IVFFlat(lists=7)},
            "USING ivfflat (embedding vector_l2_ops) WITH (lists = 7)",
        ),
        ({"distance": "inner_product"}, "USING hnsw (embedding vector_ip_ops)"),
        ({"distance": "l1"}, "USING hnsw (embedding vector_l1_ops)"),
        ({"storage": "halfvec"}, "USING hnsw (embedding halfvec_cosine_ops)"),
        (
            {"index": HNSW(halfvec=True)},
            "USING hnsw (CAST(embedding AS HALFVEC(4)) halfvec_cosine_ops)",
        ),
    ],
)
def test_index_operator_class_follows_distance_and_storage(options: dict, expected: str) -> None:
    Doc = make_model(unique_name("docs"), **options)
    assert expected in ddl(Doc.__table__)


def test_no_index_and_fulltext_index() -> None:
    Doc = make_model("docs_b", index=None, fulltext="english")
    text = ddl(Doc.__table__)
    assert "hnsw" not in text
    assert (
        "USING gin (to_tsvector(CAST('english' AS REGCONFIG), "
        "(coalesce(title, '') || ' ') || coalesce(body, '')))"
    ) in text


def test_core_table_declaration_works_the_same() -> None:
    metadata = sa.MetaData()
    docs = sa.Table(
        "core_docs",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text),
        embedding_column("body", model="tiny", dimension=3, name="vec").column,
    )
    assert {"vec", "vec_model", "vec_hash"} <= set(docs.c.keys())
    target = vector_column(docs.c.vec)
    assert target.sources == (docs.c.body,) and target.key == (docs.c.id,)
    assert "USING hnsw (vec vector_cosine_ops)" in ddl(docs)


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"sources": ()}, "at least one source"),
        ({"model": ""}, "names the model"),
        ({"storage": "float8"}, "storage"),
        ({"distance": "manhattan-ish"}, "unknown distance"),
        ({"sync": "sometimes"}, "sync mode"),
        ({"fulltext": "english'; DROP TABLE docs; --"}, "text search configuration"),
        ({"index": "hnsw"}, "index must be"),
        ({"dimension": 0}, "dimensions"),
        ({"dimension": 20000}, "dimensions"),
    ],
)
def test_bad_declarations_name_the_culprit(kwargs: dict, culprit: str) -> None:
    sources = kwargs.pop("sources", ("body",))
    options = {"model": "tiny", "dimension": 4, **kwargs}
    with pytest.raises(semdb.SemdbError, match=culprit):
        embedding_column(*sources, **options)  # type: ignore[arg-type]


def test_bad_index_options_are_refused() -> None:
    with pytest.raises(DeclarationError, match="ef_construction"):
        HNSW(m=32, ef_construction=40)
    with pytest.raises(DeclarationError, match="lists"):
        IVFFlat(lists=0)
    with pytest.raises(DeclarationError, match="L1"):
        make_model(unique_name("docs"), distance="l1", index=IVFFlat())


def test_distance_names_operators_and_classes() -> None:
    assert Distance.parse("<=>") is Distance.COSINE
    assert Distance.parse("ip") is Distance.INNER_PRODUCT
    assert Distance.L2.operator_class("halfvec") == "halfvec_l2_ops"
    assert Distance.from_operator_class("vector_ip_ops") == (Distance.INNER_PRODUCT, "vector")
    assert Distance.from_operator_class("text_ops") is None


def test_tables_are_created_with_their_indexes(engine: sa.Engine) -> None:
    Doc = make_model(unique_name("docs"), distance="l2", fulltext="simple")
    Doc.metadata.create_all(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t ORDER BY 1"),
            {"t": Doc.__tablename__},
        ).all()
    definitions = {name: definition for name, definition in rows}
    hnsw = definitions[f"ix_{Doc.__tablename__}_embedding_hnsw"]
    assert "USING hnsw (embedding vector_l2_ops) WITH (m='16', ef_construction='64')" in hnsw
    assert "to_tsvector('simple'::regconfig" in definitions[f"ix_{Doc.__tablename__}_embedding_fts"]


def test_hostile_table_and_column_names_are_quoted(engine: sa.Engine) -> None:
    """Names with quotes, spaces and semicolons reach the database intact (never pasted)."""
    table_name = 'we"ird; DROP TABLE x; --'
    metadata = sa.MetaData()
    docs = sa.Table(
        table_name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ti'tle\"", sa.Text),
        embedding_column(
            "ti'tle\"", model="tiny", dimension=3, name='emb"; --', fulltext="english"
        ).column,
    )
    metadata.create_all(engine)
    try:
        vector = np.array([0.1, 0.2, 0.3], np.float32)
        with engine.begin() as connection:
            connection.execute(docs.insert(), [{"id": 1, "ti'tle\"": "hello", 'emb"; --': vector}])
            found = semdb.search(connection, docs.c['emb"; --'], vector, k=1)
        assert found[0].row.id == 1
        assert found[0].distance == pytest.approx(0.0, abs=1e-6)
    finally:
        metadata.drop_all(engine)


def test_the_dimension_comes_from_the_bundle_manifest(tiny_bundle: Path) -> None:
    column = embedding_column("body", model=str(tiny_bundle)).column
    spec = semdb.orm.spec_of(column)
    assert spec is not None and spec.model == "tiny" and spec.dimension == 32
    assert column.type.dimension == 32
    assert (
        semdb.orm.spec_of(embedding_column("body", model="tiny@7", dimension=32).column).model
        == "tiny"
    )  # type: ignore[union-attr]
    with pytest.raises(DeclarationError, match="cannot read the manifest"):
        embedding_column("body", model="no-such-model-anywhere")
