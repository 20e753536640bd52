"""Test fixtures: a real PostgreSQL with pgvector, and a fresh database for every run.

- ``SEMDB_DATABASE_URL`` set: the tests create a database on that server (the role needs
  CREATEDB) and drop it at the end.
- unset: an embedded server starts in a temporary SEMDB_HOME and stops at the end.

Either way the tests see ``SEMDB_DATABASE_URL`` pointing at their own fresh database, so the
library, the CLI in subprocesses and Alembic all resolve the same one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import URL

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Per-machine measurements (the CPU precision choice) go to a folder of this test session, shared
# with the workers and CLIs the tests start, never to the user's ~/.cache.
os.environ["SEMDB_CACHE_DIR"] = tempfile.mkdtemp(prefix="semdb-test-cache-")
# Vectors compared across processes and batches must come from one graph: the precision is pinned
# to fp32 here, and tests/test_cpu_precision.py unpins it to test the measured choice.
os.environ["SEMDB_CPU_PRECISION"] = "fp32"

from semdb.config import DATABASE_URL_VARIABLE
from semdb.db import EmbeddedServer, libpq_uri
from semdb.db.url import configured_url


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """An administrative URL on a PostgreSQL server with pgvector."""
    configured = configured_url()
    if configured is not None:
        yield configured
        return
    # Outside pytest's temporary root: any pytest session (one a test starts, or another
    # user's) makes /tmp/pytest-of-<user> 0700 again, which locks the server's system user
    # out of its data folder (PANIC: could not open pg_control).
    home = Path(tempfile.mkdtemp(prefix="semdb-test-home-"))
    server = EmbeddedServer(home / "semdb-home")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def fresh_database(server_url: URL) -> Iterator[URL]:
    """Create an empty database on the server; drop it when done."""
    name = f"semdb_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string()
            )
    except sa.exc.ProgrammingError as exc:
        pytest.exit(f"the test role cannot create a database on {server_url!r}: {exc.orig}", 2)
    try:
        yield server_url.set(database=name)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                .format(sql.Identifier(name))
                .as_string()
            )
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(server_url: URL) -> Iterator[URL]:
    """The database of this test run; SEMDB_DATABASE_URL points at it meanwhile."""
    with fresh_database(server_url) as url:
        previous = os.environ.get(DATABASE_URL_VARIABLE)
        os.environ[DATABASE_URL_VARIABLE] = libpq_uri(url)
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop(DATABASE_URL_VARIABLE, None)
            else:
                os.environ[DATABASE_URL_VARIABLE] = previous


@pytest.fixture()
def empty_database_url(server_url: URL) -> Iterator[URL]:
    """A database of its own for one test (for migrations that must start from nothing)."""
    with fresh_database(server_url) as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: URL) -> Iterator[sa.Engine]:
    """An engine on the test database, migrated to semdb's head revision."""
    import semdb
    from semdb.db.migrate import upgrade

    engine = semdb.create_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def run_semdb(*args: str, env: dict[str, str] | None = None, timeout: float = 120):  # type: ignore[no-untyped-def]
    """Run the ``semdb`` command line in a new process, as a user would."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "semdb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentence-transformers model folder (random weights, real tokenizer), built once."""
    from .tiny_model import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported as a semdb bundle (fp32, fp16 and int8 graphs), built once.

    Its folder is shared by the whole session: copy it before changing anything in it.
    ``SEMDB_TEST_TINY_BUNDLE`` names one exported ahead instead (bench/gpu/prepare.py carries
    it to the GPU machine, where the export stack's pinned versions are not installed).
    """
    import shutil

    target = tmp_path_factory.mktemp("tiny-bundle") / "tiny"
    prebuilt = os.environ.get("SEMDB_TEST_TINY_BUNDLE")
    if prebuilt:
        return Path(shutil.copytree(prebuilt, target))
    from training.export import export_bundle

    return export_bundle(
        tiny_model_dir, target, name="tiny", version="1", precisions=("fp32", "fp16", "int8")
    )


@pytest.fixture(scope="session")
def tiny_embedder(tiny_bundle: Path):  # type: ignore[no-untyped-def]
    """semdb's ONNX Runtime Embedder on the tiny bundle (name "tiny", version "1", 32
    dimensions), on the CPU: what the sync and search tests embed with."""
    from semdb.embed import Embedder

    return Embedder.load(tiny_bundle, provider="cpu")


@pytest.fixture(scope="session")
def other_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two more tiny bundles (fp32 only) for switching a column between models:
    ``tiny@2`` (32 dimensions like ``tiny@1``, other weights) and ``wide@1`` (48 dimensions)."""
    from training.export import export_bundle

    from .tiny_model import build_tiny_sentence_transformer

    root = tmp_path_factory.mktemp("other-bundles")
    bundles = {}
    for tag, hidden, seed in (("tiny@2", 32, 7), ("wide@1", 48, 11)):
        name, _, version = tag.partition("@")
        model = build_tiny_sentence_transformer(
            root / f"{name}-{version}-src", hidden_size=hidden, seed=seed
        )
        bundles[tag] = export_bundle(
            model, root / f"{name}-{version}", name=name, version=version, precisions=("fp32",)
        )
    return bundles
