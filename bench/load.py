"""Bulk loading: semdb.copy_rows against raw psycopg binary COPY and ORM add_all.

    python -m bench.load                     # 100k rows of MiniLM vectors of real text
    python -m bench.load --rows 20000 --synthetic

Each method loads the same rows (id, package, body, 384-d vector) into an empty table of the
same shape, in one transaction, three times in turn; the median is reported.

- ``raw COPY``: plain psycopg, ``COPY ... FROM STDIN (FORMAT BINARY)``, pgvector's binary
  dumper for the numpy vectors (``register_vector``), ``write_row`` per row: the yardstick;
- ``semdb.copy_rows``: the ORM-mapped table, columnar input, vectors encoded as a block,
  the model and content-hash companions computed and loaded too;
- ``ORM add_all``: ``session.add_all`` + commit on a subset (it is two orders slower).

Results: a table, and bench/results/load.json.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench.common import engine as make_engine
from bench.common import machine, median, print_table, timed
from bench.data import write_result

DIM = 384


class Base(DeclarativeBase):
    pass


def _model() -> Any:
    from semdb import embedding_column

    class LoadDoc(Base):
        __tablename__ = "bench_load"
        id: Mapped[int] = mapped_column(primary_key=True)
        package: Mapped[str]
        body: Mapped[str]
        embedding = embedding_column(
            "body", model="all-MiniLM-L6-v2", dimension=DIM, index=None, sync="manual"
        )

    return LoadDoc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--orm-rows", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args()

    from pgvector.psycopg import register_vector

    from semdb import copy_rows
    from semdb.db.url import libpq_uri

    if args.synthetic:
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(args.rows, DIM)).astype(np.float32)
        packages = [f"p{i}" for i in range(args.rows)]
        bodies = [f"text number {i} " * 8 for i in range(args.rows)]
    else:
        from bench.data import table_rows

        items, matrix = table_rows()
        items, vectors = items[: args.rows], np.ascontiguousarray(matrix[: args.rows])
        packages = [item.package for item in items]
        bodies = [item.text for item in items]
    n = len(bodies)
    ids = list(range(n))
    engine = make_engine()
    doc = _model()
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    uri = libpq_uri(engine.url)

    def truncate() -> None:
        with engine.begin() as connection:
            connection.execute(sa.text("TRUNCATE bench_load"))

    def raw_copy() -> None:
        with psycopg.connect(uri) as connection:
            register_vector(connection)
            with (
                connection.cursor() as cursor,
                cursor.copy(
                    "COPY bench_load (id, package, body, embedding) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["int4", "text", "text", "vector"])
                for row in zip(ids, packages, bodies, vectors, strict=True):
                    copy.write_row(row)
            connection.commit()

    def semdb_copy() -> None:
        with Session(engine) as session:
            copy_rows(
                session,
                doc,
                {"id": ids, "package": packages, "body": bodies, "embedding": vectors},
                model="all-MiniLM-L6-v2@bench",
            )
            session.commit()

    subset = min(args.orm_rows, n)

    def orm_add_all() -> None:
        with Session(engine) as session:
            session.add_all(
                doc(id=ids[i], package=packages[i], body=bodies[i], embedding=vectors[i])
                for i in range(subset)
            )
            session.commit()

    methods = {
        "raw COPY": (raw_copy, n),
        "semdb.copy_rows": (semdb_copy, n),
        "ORM add_all": (orm_add_all, subset),
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeat):
        for name, (function, _count) in methods.items():
            truncate()
            elapsed, _ = timed(function)
            seconds[name].append(elapsed)
        with engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT count(*) FROM bench_load")).scalar()
        assert stored == subset  # the last method's rows, all of them
    rates = {name: methods[name][1] / median(times) for name, times in seconds.items()}
    raw = rates["raw COPY"]
    rows = [
        [name, methods[name][1], median(seconds[name]), rates[name], rates[name] / raw]
        for name in methods
    ]
    print_table(
        f"loading {n} rows of {DIM}-d vectors (median of {args.repeat})",
        ["method", "rows", "seconds", "rows/s", "vs raw COPY"],
        rows,
    )
    path = write_result(
        "load" if not args.synthetic else "load-synthetic",
        {
            "rows": n,
            "orm_rows": subset,
            "repeat": args.repeat,
            "seconds": seconds,
            "rows_per_second": rates,
            "semdb_vs_raw": rates["semdb.copy_rows"] / raw,
            "machine": machine(),
            "synthetic": args.synthetic,
        },
    )
    print(f"written {path}")
    Base.metadata.drop_all(engine)


if __name__ == "__main__":
    main()
