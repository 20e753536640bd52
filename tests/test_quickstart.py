"""`semdb quickstart`: real text in, searches out, idempotent; the SQL it prints runs as printed.

The tiny model stands in for MiniLM (its vocabulary comes from the same standard library
docstrings); a few modules keep the corpus small.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from rich.console import Console
from sqlalchemy.engine import URL

from semdb.config import DATABASE_URL_VARIABLE
from semdb.db import create_engine, libpq_uri
from semdb.errors import SemdbError
from semdb.quickstart.job import QuickstartReport, run_quickstart
from semdb.quickstart.tables import table_name_for

from .conftest import fresh_database, run_semdb
from .tiny_retrieval import tiny_retrieval_set, write_beir_folder

MODULES = ("json", "csv", "email", "hashlib", "argparse", "getopt", "optparse", "asyncio")


def quickstart(console_file: io.StringIO | None = None, **options: object) -> QuickstartReport:
    console = Console(file=console_file or io.StringIO(), width=120)
    return run_quickstart(console=console, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def database_url(server_url: URL) -> Iterator[URL]:
    """A database of this module's own: the quickstart registers its columns, which other
    modules' tests (counting registered columns) must not see."""
    with fresh_database(server_url) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATABASE_URL_VARIABLE, libpq_uri(url))
        yield url


@pytest.fixture(scope="module")
def engine(database_url: URL) -> Iterator[sa.Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def first_run(engine: sa.Engine, tiny_bundle: Path) -> Iterator[tuple[QuickstartReport, str]]:
    output = io.StringIO()
    report = quickstart(output, model=str(tiny_bundle), modules=MODULES, reset=True)
    yield report, output.getvalue()


def test_the_first_run_loads_embeds_indexes_and_searches(
    first_run: tuple[QuickstartReport, str], engine: sa.Engine
) -> None:
    report, output = first_run
    assert [step.name for step in report.steps] == [
        "database",
        "model",
        "corpus",
        "embedding",
        "index",
        "examples",
    ]
    assert report.table == "quickstart.stdlib_docs"
    assert report.rows > 200
    assert report.embedded == report.rows
    with engine.connect() as connection:
        stored = connection.execute(
            sa.text(
                "SELECT count(*), count(embedding), count(DISTINCT module), "
                "min(embedding_model), max(embedding_model) FROM quickstart.stdlib_docs"
            )
        ).one()
        indexes = set(
            connection.execute(
                sa.text("SELECT indexname FROM pg_indexes WHERE schemaname = 'quickstart'")
            ).scalars()
        )
    assert stored[0] == stored[1] == report.rows
    assert stored[2] == len(MODULES)
    assert stored[3] == stored[4] == "tiny@1"
    assert "ix_stdlib_docs_embedding_hnsw" in indexes
    assert "ix_stdlib_docs_embedding_fts" in indexes
    # Every example found k rows, and the filtered ones only rows that pass their filter.
    assert len(report.examples) == 4
    assert all(len(labels) == 5 for labels in report.examples.values())
    module_example = next(v for k, v in report.examples.items() if k.startswith("Filtered: one"))
    assert all(label.startswith("email.") for label in module_example)
    for title in ("Semantic search", "Filtered: functions only", "Hybrid", "semdb sql", "BEGIN;"):
        assert title in output
    assert "semdb quickstart:" in output  # the timing table


def test_a_second_run_only_checks(
    first_run: tuple[QuickstartReport, str], tiny_bundle: Path
) -> None:
    output = io.StringIO()
    report = quickstart(output, model=str(tiny_bundle), modules=MODULES)
    text = " ".join(output.getvalue().split())
    assert report.embedded == 0
    assert f"0 new, 0 changed, 0 removed, {report.rows:,} unchanged" in text
    assert "every vector is up to date" in text
    assert "indexes in place already" in text
    assert report.examples == first_run[0].examples


def test_a_changed_row_is_restored_and_a_lost_vector_embedded_again(
    first_run: tuple[QuickstartReport, str], engine: sa.Engine, tiny_bundle: Path
) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE quickstart.stdlib_docs SET summary = 'changed by hand' "
                "WHERE qualname = 'json.dumps'"
            )
        )
        connection.execute(
            sa.text("UPDATE quickstart.stdlib_docs SET embedding = NULL WHERE qualname = 'csv'")
        )
    report = quickstart(model=str(tiny_bundle), modules=MODULES)
    # json.dumps has its text back, which its stored vector was made from: not embedded again
    assert report.embedded == 1
    assert "1 changed" in report.steps[2].detail
    with engine.connect() as connection:
        summary = connection.execute(
            sa.text("SELECT summary FROM quickstart.stdlib_docs WHERE qualname = 'json.dumps'")
        ).scalar_one()
    assert summary.startswith("Serialize")


def test_the_printed_shell_commands_run_as_printed(
    first_run: tuple[QuickstartReport, str], database_url: URL, tiny_bundle: Path
) -> None:
    _, output = first_run
    commands = [line for line in output.splitlines() if line.startswith("semdb sql ")]
    assert len(commands) == 4
    for command in commands:
        words = shlex.split(command)
        # the same command, with the tiny bundle in place of the printed model name
        words[words.index("--model") + 1] = str(tiny_bundle)
        result = run_semdb(*words[1:])
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.count("\n") >= 5, result.stdout  # a table with rows


def test_the_printed_psql_script_runs_as_printed(
    first_run: tuple[QuickstartReport, str], database_url: URL
) -> None:
    report, _ = first_run
    with psycopg.connect(libpq_uri(database_url), autocommit=True) as connection:
        cursor = connection.cursor()
        cursor.execute(report.psql)  # several statements, as psql sends them
        results = []
        while True:
            if cursor.description is not None:
                results.append(cursor.fetchall())
            if not cursor.nextset():
                break
    neighbours, hybrid = [rows for rows in results if rows]
    assert len(neighbours) == 5 and "json.dumps" not in [row[0] for row in neighbours]
    assert len(hybrid) == 5


def test_data_folder_is_loaded_and_scored(
    engine: sa.Engine, tiny_bundle: Path, tmp_path: Path
) -> None:
    folder = write_beir_folder(tiny_retrieval_set(count=80), tmp_path / "My Data")
    output = io.StringIO()
    report = quickstart(output, data=folder, model=str(tiny_bundle))
    assert report.table == "quickstart.my_data"
    assert report.rows == report.embedded == 80
    assert report.evaluation is not None
    assert set(report.evaluation) == {"ndcg@10", "mrr@10", "recall@10", "recall@100"}
    # queries are four words cut from their document: even the tiny model finds many
    assert report.evaluation["recall@100"] > 0.5
    assert "qrels/test.tsv" in output.getvalue()


def test_data_folder_without_qrels_is_loaded_without_scores(
    engine: sa.Engine, tiny_bundle: Path, tmp_path: Path
) -> None:
    folder = write_beir_folder(tiny_retrieval_set(count=20), tmp_path / "plain")
    for path in (folder / "qrels").iterdir():
        path.unlink()
    report = quickstart(data=folder, model=str(tiny_bundle))
    assert report.evaluation is None
    assert report.steps[-1].detail.startswith("no qrels")


def test_table_names_from_folders() -> None:
    assert table_name_for("debdesc") == "debdesc"
    assert table_name_for("My Data!") == "my_data"
    assert table_name_for("2024") == "data_2024"
    assert table_name_for("stdlib_docs") == "data_stdlib_docs"
    assert table_name_for("'; DROP TABLE x; --") == "drop_table_x"


def test_bad_input_is_refused_with_the_fix(
    first_run: tuple[QuickstartReport, str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A model store of its own: a bad argument must be refused before the default model
    # is imported into it (which would take a while, and leave a bundle behind).
    home = {"SEMDB_HOME": str(tmp_path / "home")}
    result = run_semdb("quickstart", "--data", str(tmp_path), env=home)
    assert result.returncode != 0
    assert "no corpus.jsonl there" in result.stderr and "Traceback" not in result.stderr

    result = run_semdb("quickstart", "--modules", "json,not_a_module", env=home)
    assert result.returncode != 0
    assert "not standard library modules: not_a_module" in result.stderr

    result = run_semdb("quickstart", "--model", str(tmp_path / "missing"), env=home)
    assert result.returncode != 0 and "no model bundle" in result.stderr
    assert not (tmp_path / "home" / "models").exists()


def test_a_model_of_another_dimension_needs_reset(
    first_run: tuple[QuickstartReport, str], engine: sa.Engine, tiny_bundle: Path, tmp_path: Path
) -> None:
    from training.export import export_bundle

    from .tiny_model import build_tiny_sentence_transformer

    other = export_bundle(
        build_tiny_sentence_transformer(tmp_path / "wide", hidden_size=48),
        tmp_path / "wide-bundle",
        name="tiny-wide",
        version="1",
        precisions=("fp32",),
    )
    with pytest.raises(SemdbError, match="--reset"):
        quickstart(model=str(other), modules=MODULES)
    with engine.connect() as connection:  # nothing stored was lost
        assert (
            connection.execute(
                sa.text("SELECT count(embedding) FROM quickstart.stdlib_docs")
            ).scalar_one()
            == first_run[0].rows
        )
